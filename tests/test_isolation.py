"""tests/isolation.py: a module marked `isolated` runs in a child pytest whose reports the parent
replays: passes, failures with their traceback, skips, and a child that dies fails what it left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

CONFTEST = '''
import isolation

def pytest_runtest_protocol(item, nextitem):
    return isolation.run_isolated(item)

def pytest_runtest_logreport(report):
    if isolation.in_child():
        isolation.record_child_report(report)
'''

MODULE = '''
import os
import pytest
from isolation import child_import

pytestmark = pytest.mark.isolated
child_only = child_import("child_only")

def test_runs_in_the_child():
    assert child_only is not None and os.getpid() != int(os.environ["PARENT_PID"])

def test_fails():
    assert 1 + 1 == 3, "arithmetic"

def test_skips():
    pytest.skip("not here")

def test_dies():
    if os.environ.get("DIE"):
        os.abort()

def test_after_the_death():
    pass
'''


def _run(tmp_path: Path, *extra: str, die: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_mod.py").write_text(MODULE)
    # importing child_only writes the importing process's pid: the parent must never import it
    (tmp_path / "child_only.py").write_text(
        "import os\nopen(os.environ['IMPORTS'], 'a').write(f'{os.getpid()}\\n')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(tmp_path)]),
           "IMPORTS": str(tmp_path / "imports.txt"), "DIE": "1" if die else ""}
    env.pop("PERFKIT_ISOLATED_REPORT", None)
    code = ("import os, sys, pytest; os.environ['PARENT_PID'] = str(os.getpid()); "
            "sys.exit(pytest.main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "-q", "-p", "no:cacheprovider", "-rfEs", "-o",
                           "markers=isolated: own process", *extra, str(tmp_path / "test_mod.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_reports_pass_fail_and_skip_from_the_child(tmp_path):
    proc = _run(tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "1 failed, 3 passed, 1 skipped" in out, out
    assert "AssertionError: arithmetic" in out and "not here" in out, out
    pids = (tmp_path / "imports.txt").read_text().split()
    assert len(pids) == 1, pids  # imported once, by the child only (test_runs_in_the_child checks the pid)


def test_a_child_that_dies_fails_the_rest_of_its_module(tmp_path):
    proc = _run(tmp_path, die=True)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "FAILED" in out and "test_mod.py::test_dies - the isolated child did not finish" in out, out
    assert "test_mod.py::test_after_the_death - the isolated child did not finish" in out, out
    assert "3 failed, 1 passed, 1 skipped" in out, out


def test_stop_at_the_first_failure_still_works(tmp_path):
    proc = _run(tmp_path, "-x")
    assert proc.returncode == 1 and "1 failed, 1 passed" in proc.stdout, proc.stdout
