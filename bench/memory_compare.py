"""`python -m perfkit.bench.memory_compare AXIS`: peak memory of the variants of one axis, side by side.

    python -m perfkit.bench.memory_compare loss [--json FILE] [--md FILE] [--steps 2] [--warmup 1]
    python -m perfkit.bench.memory_compare checkpointing [...]

Runs `perfkit bench train` (the trainer's own step: forward, backward, AdamW) on synthetic batches
once per variant, each in a fresh process: host_peak_rss_gib is the process's lifetime peak
(ru_maxrss), so two variants in one process would report the larger peak twice. Prints each
record's peak RSS, the ratio to the first variant and the step time; --json appends the records,
--md writes a short table. CPU targets (issue 15):
- loss: model.fused_linear_cross_entropy false vs true; 2 layers, 128 wide, vocab 128,256, 4 x 1,024
  tokens (the issue's measurement, where the logits dominate): fused <= 0.2x unfused.
- checkpointing: parallel.activation_checkpointing none / full / op; 8 layers, 256 wide, 16 x 1,024
  tokens, vocab 50,304 with the fused loss (so the blocks' activations dominate): full <= 0.5x none,
  op between them.

glibc's allocator keeps freed memory of mid-sized allocations (its mmap threshold rises to the
largest block freed, up to 32 MiB, so a 16 MiB activation freed once makes later ones heap memory
that RSS keeps), so ru_maxrss also counts what the allocator holds after tensors are gone: for the
checkpointing axis ~0.9 GiB of full's 2.4 GiB. `--mmap-threshold BYTES` (default 65536) runs each
variant with MALLOC_MMAP_THRESHOLD_ set, which fixes the threshold: tensors above it are mapped
and unmapped, and the peak is close to the live tensors' peak. `--mmap-threshold 0` keeps glibc's
default. The records say which (`malloc_mmap_threshold`, null for the default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from perfkit.atomic import write_atomic

# axis -> (shape overrides, description, [(variant, overrides)]); the first variant is the ratios' base
AXES = {
    "loss": (["--model.vocab_size=128256", "--model.sequence_length=1024", "--model.n_layer=2",
              "--model.n_embd=128", "--model.n_head_q=4", "--model.n_head_kv=4", "--model.ffn_hidden=384",
              "--training.micro_batch_size=4"],
             "vocab 128256, 4096 tokens per micro-batch (4 x 1024), 2 layers x 128 wide, fp32, AdamW",
             [("unfused", ["--model.fused_linear_cross_entropy=false"]),
              ("fused", ["--model.fused_linear_cross_entropy=true"])]),
    "checkpointing": (["--model.vocab_size=50304", "--model.sequence_length=1024", "--model.n_layer=8",
                       "--model.n_embd=256", "--model.n_head_q=4", "--model.n_head_kv=4",
                       "--model.ffn_hidden=768", "--model.fused_linear_cross_entropy=true",
                       "--training.micro_batch_size=16"],
                      "8 layers x 256 wide, 16384 tokens per micro-batch (16 x 1024), vocab 50304, fused loss, "
                      "fp32, AdamW",
                      [("none", ['--parallel.activation_checkpointing="none"']),
                       ("full", ['--parallel.activation_checkpointing="full"']),
                       ("op", ['--parallel.activation_checkpointing="op"'])]),
}


def run_variant(args, name: str, overrides: list[str], json_path: Path) -> dict:
    shape = AXES[args.axis][0]
    cmd = [sys.executable, "-m", "perfkit.bench.train", args.config, "--synthetic", "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--json", str(json_path), *shape, "--training.grad_accum_steps=1",
           *overrides]
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    shown = f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold} " if args.mmap_threshold else ""
    print(f"memory_compare: {name}: {shown}{' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=env)
    record = json.loads(json_path.read_text().splitlines()[-1])
    record["variant"] = name
    record["malloc_mmap_threshold"] = args.mmap_threshold or None
    return record


def table(records: list[dict], args) -> str:
    base = records[0]["host_peak_rss_gib"]
    malloc = (f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold} (peak ~ live tensors)" if args.mmap_threshold
              else "glibc's default allocator settings (peak includes memory it keeps after frees)")
    lines = [AXES[args.axis][1] + "; " + malloc, "", "| variant | host_peak_rss_gib | ratio | step time median (s) |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['variant']} | {r['host_peak_rss_gib']:.3f} | {r['host_peak_rss_gib'] / base:.3f} "
                     f"| {r['step_time_s']['median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfkit.bench.memory_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("axis", choices=sorted(AXES))
    p.add_argument("--config", default="configs/cpu_debug.toml")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="append both records to this JSON-lines file")
    p.add_argument("--md", help="write the side-by-side table to this markdown file")
    p.add_argument("--mmap-threshold", type=int, default=65536, metavar="BYTES",
                   help="MALLOC_MMAP_THRESHOLD_ for the variants (0: glibc's default; see above)")
    args = p.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in AXES[args.axis][2]:
            records.append(run_variant(args, name, overrides, Path(tmp) / f"{name}.jsonl"))
    text = table(records, args)
    print(text)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if args.md:
        write_atomic(args.md, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
