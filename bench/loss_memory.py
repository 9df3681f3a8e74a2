"""`python -m perfkit.bench.loss_memory`: peak memory of the fused vs the unfused loss, side by side.

    python -m perfkit.bench.loss_memory [--vocab 128256] [--micro-batch 4] [--seq 1024]
                                        [--json FILE] [--md FILE] [--steps 2] [--warmup 1]

Runs `perfkit bench train` (the trainer's own step: forward, backward, AdamW) on synthetic batches
once per variant (model.fused_linear_cross_entropy = false, then true), each in a fresh process:
host_peak_rss_gib is the process's lifetime peak (ru_maxrss), so two variants in one process would
report the larger peak twice. Model: 2 layers, 128 wide (the issue's measurement), so the loss
dominates. Prints both records' peak RSS and step time and the fused/unfused ratio; --json appends
both records, --md writes a short table. The CPU target (issue 15): fused <= 0.2x unfused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = [("unfused", "false"), ("fused", "true")]


def _overrides(args) -> list[str]:
    return [f"--model.vocab_size={args.vocab}", f"--model.sequence_length={args.seq}", "--model.n_layer=2",
            "--model.n_embd=128", "--model.n_head_q=4", "--model.n_head_kv=4", "--model.ffn_hidden=384",
            f"--training.micro_batch_size={args.micro_batch}", "--training.grad_accum_steps=1"]


def run_variant(args, name: str, fused: str, json_path: Path) -> dict:
    cmd = [sys.executable, "-m", "perfkit.bench.train", args.config, "--synthetic", "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--json", str(json_path), *_overrides(args),
           f"--model.fused_linear_cross_entropy={fused}"]
    print(f"loss_memory: {name}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    record = json.loads(json_path.read_text().splitlines()[-1])
    record["variant"] = name
    return record


def table(records: list[dict], args) -> str:
    base = records[0]["host_peak_rss_gib"]
    lines = [f"vocab {args.vocab}, {args.micro_batch * args.seq} tokens per micro-batch "
             f"({args.micro_batch} x {args.seq}), 2 layers x 128 wide, fp32, AdamW",
             "", "| variant | host_peak_rss_gib | ratio | step time median (s) |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['variant']} | {r['host_peak_rss_gib']:.3f} | {r['host_peak_rss_gib'] / base:.3f} "
                     f"| {r['step_time_s']['median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfkit.bench.loss_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu_debug.toml")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="append both records to this JSON-lines file")
    p.add_argument("--md", help="write the side-by-side table to this markdown file")
    args = p.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, fused in VARIANTS:
            records.append(run_variant(args, name, fused, Path(tmp) / f"{name}.jsonl"))
    text = table(records, args)
    print(text)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    if args.md:
        from perfkit.atomic import write_atomic
        write_atomic(args.md, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
