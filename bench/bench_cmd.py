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

import sys


def _train(argv):
    from perfkit.bench import train
    return train.main(argv)


def _kernels(argv):
    from perfkit.bench import kernels
    return kernels.main(argv)


def _loader(argv):
    from perfkit.bench import loader
    return loader.main(argv)


def _pack(argv):
    from perfkit.bench import pack
    return pack.main(argv)


SUITES = {"train": _train, "kernels": _kernels, "loader": _loader, "pack": _pack}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help") and len(argv) == 1:
        print(__doc__)
        return 0
    if argv and argv[0] in SUITES:
        return int(SUITES[argv[0]](argv[1:]) or 0)
    return int(_train(argv) or 0)  # `perfkit bench CONFIG ...` runs the train suite


if __name__ == "__main__":
    sys.exit(main())
