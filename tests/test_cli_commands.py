"""Every `perfkit` subcommand runs `main(argv)` of a module named `<something>_cmd`, imported only
when that command is asked for (so the torch-free ones stay torch-free)."""

from __future__ import annotations

import importlib
import subprocess
import sys

from perfkit import cli
from perfkit.bench import bench_cmd


def test_every_command_module_follows_the_naming_convention_and_has_main():
    modules = [module for _, _, module in cli.COMMANDS] + list(bench_cmd.SUITES.values())
    for module in [module for _, _, module in cli.COMMANDS]:
        assert module.rsplit(".", 1)[1].endswith("_cmd"), module
    for module in modules:
        assert callable(importlib.import_module(module).main), module


def test_dispatch_imports_only_the_command_asked_for():
    code = ("import sys\nfrom perfkit import cli\nbefore = sorted(m for m in sys.modules if m.endswith('_cmd'))\n"
            "try:\n    cli.main(['pack', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(before, sorted(m for m in sys.modules if m.endswith('_cmd')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] ['perfkit.prep.pack_cmd'] False", out
