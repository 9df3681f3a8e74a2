"""`perfkit export RUN_OR_CHECKPOINT -o model.pt [--dtype bf16|fp32]`, or
`perfkit export RUN_OR_CHECKPOINT --format hf -o DIR [--tokenizer TOK]` (a Hugging Face folder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perfkit.errors import UserError
from perfkit.checkpoint.export import export_checkpoint, refuse_output_inside
from perfkit.checkpoint.hf_export import check_output_folder, export_hf
from perfkit.checkpoint.layout import CheckpointError, resolve_checkpoint


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="perfkit export",
        description="Consolidate a sharded checkpoint into one file (state dict + model config), "
                    "loadable with torch.load(path, weights_only=True) on any device; or, with "
                    "--format hf, into a Hugging Face transformers folder (safetensors, config.json, "
                    "tokenizer files) for lm-evaluation-harness, vLLM and the hub.")
    parser.add_argument("source", help="a checkpoint folder (.../checkpoints/step_N) or a run folder "
                                       "(its newest complete checkpoint); --format hf also takes a model.pt export")
    parser.add_argument("-o", "--output", required=True,
                        help="the file to write, e.g. model.pt (--format hf: the folder to write)")
    parser.add_argument("--format", choices=("pt", "hf"), default="pt",
                        help="pt: one torch file (default); hf: a transformers folder (Llama or GPT-2)")
    parser.add_argument("--tokenizer", default=None,
                        help="--format hf: the tokenizer to write (gpt2, a tiktoken name, a .tiktoken file "
                             "or a tokenizer.json); default: the one in the .pbin.json manifest of the "
                             "run's first data.train file")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                        help="floating-point tensors are stored in this dtype (default bf16)")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)
    if args.format == "hf":
        return _main_hf(args)
    if args.tokenizer is not None:
        parser.error("--tokenizer applies to --format hf only (a model.pt holds no tokenizer)")

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


def _main_hf(args: argparse.Namespace) -> int:
    out = Path(args.output)
    try:
        check_output_folder(out, args.force)  # before anything is read
        summary = export_hf(args.source, out, tokenizer=args.tokenizer, dtype=args.dtype, force=args.force)
    except (UserError, OSError) as e:  # CheckpointError, TokenizerError, ManifestError are UserErrors
        print(f"perfkit export: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"perfkit export: wrote {out}/ ({summary['architecture']}, {size / 2**20:.1f} MiB, {args.dtype}; "
          f"tokenizer: {summary['tokenizer']})")
    return 0
