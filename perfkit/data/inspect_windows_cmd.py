"""`perfkit inspect FILE.pbin --windows S ...`: which samples a rank receives, for debugging order and resume.

    perfkit inspect data.pbin --windows 1024 --seed 42 --rank 0 --world-size 8 --skip 0 --show 10 [--json]

Prints the rank's next M global sample indices in the order the train loader hands them out (the
Modalities ResumableDistributedSampler order after skipping K global samples), each with its token
offset and first tokens. `perfkit inspect` (inspect_cmd.py) delegates here when `--windows` is given.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from perfkit.errors import UserError
from perfkit.data.sampler import rank_indices
from perfkit.data.windows import WindowDataset, window_stride


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfkit inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help=".pbin file")
    p.add_argument("--windows", type=int, required=True, metavar="S", help="sequence length S")
    p.add_argument("--seed", type=int, default=42, help="sampler seed (the epoch's order uses seed + epoch)")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--skip", type=int, default=0, metavar="K", help="global samples already consumed")
    p.add_argument("--show", type=int, default=10, metavar="M", help="how many samples to list")
    p.add_argument("--first-tokens", type=int, default=8, metavar="F", help="tokens shown per sample")
    p.add_argument("--no-shuffle", action="store_true", help="sequential order (shuffle off)")
    p.add_argument("--non-overlapping", action="store_true",
                   help="windows of S+1 tokens without the shared token (reuse_last_target=false)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def describe(args: argparse.Namespace) -> dict:
    """The report as plain data (what --json prints)."""
    for name in ("show", "skip", "epoch", "first_tokens"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.world_size < 1 or not 0 <= args.rank < args.world_size:
        raise UserError(f"--rank {args.rank} is not in [0, --world-size {args.world_size})")
    reuse = not args.non_overlapping
    ds = WindowDataset([args.file], args.windows, reuse_last_target=reuse, config_key=args.file)
    if args.skip > ds.num_samples:
        raise UserError(f"{args.file}: --skip {args.skip} is beyond the {ds.num_samples} samples of an epoch")
    mine = rank_indices(ds.num_samples, seed=args.seed, epoch=args.epoch, skip=args.skip, rank=args.rank,
                        world_size=args.world_size, shuffle=not args.no_shuffle)
    shown = mine[:args.show]
    rows = ds.gather(shown, args.epoch) if len(shown) else np.empty((0, args.windows + 1), ds.dtype)
    f = ds.files[0]
    stride = window_stride(args.windows, reuse)
    return {
        "file": f.path, "num_tokens": f.num_tokens, "token_width": f.token_width,
        "seq_len": args.windows, "reuse_last_target": reuse, "num_samples": ds.num_samples,
        "seed": args.seed, "epoch": args.epoch, "shuffle": not args.no_shuffle, "skip": args.skip,
        "rank": args.rank, "world_size": args.world_size, "rank_samples_left": int(len(mine)),
        "samples": [{"position": k, "index": int(i), "token_offset": int(i) * stride,
                     "first_tokens": [int(t) for t in row[:args.first_tokens]]}
                    for k, (i, row) in enumerate(zip(shown, rows))],
    }


def _print_text(r: dict) -> None:
    kind = "continuous" if r["reuse_last_target"] else "non-overlapping"
    print(f"{r['file']}: {r['num_tokens']} tokens of {r['token_width']} byte(s); {kind} windows of "
          f"S={r['seq_len']}: {r['num_samples']} samples")
    order = f"seed {r['seed']} + epoch {r['epoch']}" if r["shuffle"] else "sequential"
    print(f"order: {order}; skip {r['skip']} global samples; rank {r['rank']} of {r['world_size']} "
          f"has {r['rank_samples_left']} samples left in this epoch")
    print(f"{'pos':>6} {'sample':>10} {'token_offset':>13}  first tokens")
    for s in r["samples"]:
        print(f"{s['position']:>6} {s['index']:>10} {s['token_offset']:>13}  {s['first_tokens']}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        report = describe(args)
    except (UserError, OSError) as e:  # PbinError, WindowError: UserErrors naming the file
        print(f"perfkit inspect: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        _print_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
