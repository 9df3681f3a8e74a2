"""`perfkit export RUN_OR_CHECKPOINT -o model.pt [--dtype bf16|fp32]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perfkit.errors import UserError
from perfkit.checkpoint.export import export_checkpoint, refuse_output_inside
from perfkit.checkpoint.layout import CheckpointError, resolve_checkpoint


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="perfkit export",
        description="Consolidate a sharded checkpoint into one file (state dict + model config), "
                    "loadable with torch.load(path, weights_only=True) on any device.")
    parser.add_argument("source", help="a checkpoint folder (.../checkpoints/step_N) or a run folder "
                                       "(its newest complete checkpoint)")
    parser.add_argument("-o", "--output", required=True, help="the file to write, e.g. model.pt")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="floating-point tensors are stored in this dtype (default bf16)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)

    # checked before the checkpoint is read (minutes for a large model), named in plain words
    out = Path(args.output)
    parent = next((p for p in out.parents if p.exists()), None)
    if out.is_dir():
        parser.error(f"-o {out} is a folder; name the file to write, e.g. {out / 'model.pt'}")
    if parent is not None and not parent.is_dir():
        parser.error(f"-o {out}: {parent} is a file, not a folder")
    try:  # before --force, as pack refuses an output that is one of its inputs
        refuse_output_inside(resolve_checkpoint(args.source), out)
    except CheckpointError as e:
        print(f"perfkit export: {e}", file=sys.stderr)
        return 1
    if out.exists() and not args.force:  # as pack and index: an existing file is replaced only on request
        parser.error(f"-o {out} exists; pass --force to replace it")
    try:
        out = export_checkpoint(args.source, args.output, args.dtype)
    except (UserError, OSError) as e:  # CheckpointError is a UserError
        print(f"perfkit export: {e}", file=sys.stderr)
        return 1
    print(f"perfkit export: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.dtype})")
    return 0
