"""`perfkit bench [SUITE] ...`: one entry point for the benchmark suites.

    perfkit bench [CONFIG.toml] [--steps N] [--warmup W] [--profile] [--compare AXIS] [--json FILE]
    perfkit bench train   CONFIG.toml ...      (the default suite: the real training step)
    perfkit bench kernels [--json FILE]        (Triton RMSNorm/SwiGLU vs eager and compiled PyTorch)
    perfkit bench loader  [...]                (tokens/s served by the .pbin loader)
    perfkit bench pack    [...]                (perfkit pack vs tiktoken's own batch encoder)

Each suite lives in its own module with `main(argv) -> int`; this file only picks one and imports
it then, so `perfkit bench pack` stays torch-free.
"""

from __future__ import annotations

import importlib
import sys


# suite -> the module whose main(argv) runs it (imported only when asked for)
SUITES = {"train": "perfkit.bench.train", "kernels": "perfkit.bench.kernels", "loader": "perfkit.bench.loader",
          "pack": "perfkit.bench.pack"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(__doc__)
        return 0
    if argv and argv[0] in SUITES:
        return int(importlib.import_module(SUITES[argv[0]]).main(argv[1:]) or 0)
    return int(importlib.import_module(SUITES["train"]).main(argv) or 0)  # `perfkit bench CONFIG ...`


if __name__ == "__main__":
    from perfkit.process_exit import exit_process
    exit_process(main())  # a process group's threads must not race finalization (perfkit/process_exit.py)
