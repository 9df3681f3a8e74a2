"""Loader throughput: tokens/s one process serves for GPT-2-sized batches (issue 3: >= 100 M tokens/s/core).

    python -m perfkit.bench.loader [--pbin FILE] [--batch 16 32 64] [--seq-len 1024] [--seconds 2] [--json OUT]
    perfkit bench loader ...

Three measurements per micro-batch size B (S = 1024 by default, world size 1, shuffled order):
  host   what the prefetch thread does per batch: sampler indices + one gather of (B, S+1) narrow
         tokens into a reused (pinned on CUDA) buffer. Pinned to one CPU core: this is the per-core number.
  loader TrainLoader.next_batch end to end on the device (CPU here: widening to int64 on the CPU is
         included; on a GPU it is the H2D copy + device widening, overlapped by the prefetch thread).
  wait   CUDA only: share of wall time next_batch blocks while the GPU runs a stand-in step of about
         GPT-2 small's duration (target < 1%).
The file is read through the page cache (warmed first); cold-disk reads are bounded by the disk instead.
Uses the demo corpus data/preprocessed/shakespeare_train.pbin if present, else a synthetic uint16 file.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from perfkit.bench.records import append_jsonl, json_path_problem
from perfkit.config import DataConfig
from perfkit.data.loader import build_train_loader
from perfkit.data.sampler import ResumableDistributedSampler
from perfkit.data.windows import WindowDataset

DEMO_PBIN = Path("data/preprocessed/shakespeare_train.pbin")


def synthetic_pbin(directory: str, num_tokens: int, seed: int = 0) -> str:
    """A GPT-2-like uint16 .pbin (random ids < 50257, one document) written without perfkit's writer."""
    path = os.path.join(directory, "synthetic.pbin")
    tokens = np.random.default_rng(seed).integers(0, 50257, size=num_tokens, dtype=np.uint16)
    data = tokens.astype("<u2").tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<QI", len(data), 2) + data + pickle.dumps([(0, len(data))], protocol=4))
    return path


def _pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        torch.set_num_threads(1)
        return f"pinned to core {core}"
    return "not pinned"


def _rate(fn, tokens_per_call: int, seconds: float) -> float:
    """Tokens/s of fn() over about `seconds` after a short warm-up."""
    for _ in range(3):
        fn()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and calls >= 5:
            return calls * tokens_per_call / dt


def bench_host(path: str, B: int, S: int, seconds: float) -> float:
    """Sampler + gather into a reused buffer: the per-batch host work of the prefetch thread."""
    ds = WindowDataset([path], S)
    sampler = ResumableDistributedSampler(ds.num_samples, rank=0, world_size=1, micro_batch_size=B, seed=0)
    out = np.empty((B, S + 1), dtype=ds.dtype)
    pos = [0, 0]

    def step():
        ds.gather(sampler.batch(*pos), pos[0], out=out)
        pos[:] = sampler.advance(*pos)
    return _rate(step, B * S, seconds)


def bench_loader(path: str, B: int, S: int, seconds: float, device: torch.device) -> float:
    ld = build_train_loader(DataConfig(train=[path]), seq_len=S, micro_batch_size=B, rank=0,
                            world_size=1, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        ld.next_batch()
    try:
        rate = _rate(step, B * S, seconds)
        sync()
        return rate
    finally:
        ld.close()


def bench_wait_share(path: str, B: int, S: int, steps: int, device: torch.device) -> dict:
    """Share of time next_batch blocks while the GPU is busy with a stand-in training step."""
    ld = build_train_loader(DataConfig(train=[path]), seq_len=S, micro_batch_size=B, rank=0,
                            world_size=1, device=device)
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    try:
        for _ in range(5):  # warm-up: thread start, first epoch order, allocator
            x, y = ld.next_batch()
            (a @ a).sum()
        torch.cuda.synchronize()
        ld.time_waiting_s = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            x, y = ld.next_batch()
            for _ in range(40):  # ~ 40 * 0.14 ms of bf16 matmuls: a short GPT-2-like step
                a @ a
            (x.sum() + y.sum())  # consume the batch on the compute stream
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        return {"step_ms": 1e3 * wall / steps, "wait_share": ld.time_waiting_s / wall}
    finally:
        ld.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perfkit bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--pbin", help="a .pbin to read (default: the demo corpus, else synthetic)")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=2.0, help="measuring time per case")
    p.add_argument("--synthetic-tokens", type=int, default=64 * 2 ** 20)
    p.add_argument("--wait-steps", type=int, default=200)
    p.add_argument("--json", help="append one JSON line per case to this file")
    args = p.parse_args(argv)
    if json_path_problem(args.json):
        p.error(json_path_problem(args.json))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        if args.pbin:
            path = args.pbin
        elif DEMO_PBIN.is_file():
            path = str(DEMO_PBIN)
        else:
            path = synthetic_pbin(tmp, args.synthetic_tokens)
        np.fromfile(path, dtype=np.uint8).sum()  # warm the page cache
        pinning = _pin_to_one_core()
        gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
        print(f"loader bench: {path} ({os.path.getsize(path) / 2**20:.0f} MiB), S={args.seq_len}, "
              f"device {device} ({gpu}), {pinning}, torch {torch.__version__}, {platform.processor() or platform.machine()}")
        print(f"{'B':>4} {'host Mtok/s':>12} {'loader Mtok/s':>14} {'wait share':>11}  target >= 100 Mtok/s/core")
        rows = []
        for B in args.batch:
            host = bench_host(path, B, args.seq_len, args.seconds)
            loader = bench_loader(path, B, args.seq_len, args.seconds, device)
            wait = bench_wait_share(path, B, args.seq_len, args.wait_steps, device) if device.type == "cuda" else None
            row = {"bench": "loader", "B": B, "S": args.seq_len, "host_tokens_per_s": host,
                   "loader_tokens_per_s": loader, "device": str(device), "gpu": gpu, "file": path,
                   "torch": torch.__version__, **({"wait": wait} if wait else {})}
            rows.append(row)
            share = f"{100 * wait['wait_share']:.2f}%" if wait else "n/a (CPU)"
            verdict = "ok" if host >= 100e6 else "BELOW TARGET"
            print(f"{B:>4} {host / 1e6:>12.0f} {loader / 1e6:>14.0f} {share:>11}  {verdict}")
    if args.json:
        append_jsonl(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
