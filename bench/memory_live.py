"""`python -m perfkit.bench.memory_live CONFIG [OVERRIDES]`: the peak of live CPU tensor bytes over
training steps beside the memory estimate - on CPU, the quantity CUDA's max_memory_allocated is.

    python -m perfkit.bench.memory_live configs/cpu_debug.toml --data.train=x.pbin --data.val=[] \
        [--steps 2] [--cuda-policy] [--json FILE]        (torchrun ... for several ranks)

RSS (perfkit bench's host_peak_rss_gib, tests/test_memory_estimate.py) also counts what glibc keeps
after frees, the libraries and the loader's buffers; this counts tensors only: every allocation and
free of c10's CPU allocator, as the profiler records them with profile_memory (their byte counts in
time order; the peak of the running sum, from the start of building the model). It covers what the
estimate models and nothing else, so the ratio estimate / peak says how far the estimate's sum of
parts is from the real peak.

--cuda-policy: the CUDA run's FSDP2 policy on the CPU (bf16 parameters and compute, fp32 gradient
reduction; perfkit.train.parallelize.mp_policy is replaced) and the estimate for device "cuda" (with
$.parallel.mixed_precision = "bf16"). The CPU kernels are not CUDA's (attention, the fused loss's
chunk size, no Triton), so this approximates the GPU's dtypes, not its kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.profiler import ProfilerActivity, profile

from perfkit.config import load_config
from perfkit.process_exit import exit_process
from perfkit.train import distributed, parallelize, setup
from perfkit.train.memory_estimate import GIB, estimate_for_plan
from perfkit.train.step import train_step


def peak_live_cpu_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn(), the peak of live CPU tensor bytes allocated while it ran, above the level at its start)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()          # > 0 an allocation, < 0 a free
        peak = max(peak, live)
    return result, peak


def _use_cuda_policy() -> None:
    def policy(par, device, cast_inputs=True):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    cast_forward_inputs=cast_inputs)
    parallelize.mp_policy = policy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfkit.bench.memory_live", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps (the second has the optimizer state)")
    p.add_argument("--cuda-policy", action="store_true", help="bf16/fp32 FSDP2 policy, estimate for cuda")
    p.add_argument("--json", help="append the record to this file")
    args, overrides = p.parse_known_args(argv)
    if args.cuda_policy:
        overrides = [*overrides, "--parallel.mixed_precision=bf16"]
        _use_cuda_policy()
    cfg = load_config(args.config, overrides)
    env = distributed.read_env(cfg.run)
    plan = setup.make_run_plan(cfg, env, setup.open_datasets(cfg, env.world_size))
    est = estimate_for_plan(cfg, plan, "cuda" if args.cuda_policy else env.device.type)
    distributed.init(env, cfg.parallel)

    def run():
        parts = setup.build_train_parts(cfg, env, plan)
        for i in range(args.steps):
            train_step(parts.model, parts.optimizer, parts.scheduler, parts.loader.next_batch,
                       grad_accum=plan.grad_accum_steps, grad_clip=cfg.training.grad_clip, guard=parts.guard,
                       step_number=i + 1, reduce_every_micro_batch=parts.reduce_every_micro_batch)
        return parts

    parts, peak = peak_live_cpu_bytes(run)
    parts.loader.close()
    record = {"config": args.config, "overrides": overrides, "cuda_policy": args.cuda_policy,
              "world_size": env.world_size, "rank": env.rank, "grad_accum_steps": plan.grad_accum_steps,
              "steps": args.steps, "torch": torch.__version__,
              "estimate_gib": round(est.total / GIB, 4), "peak_live_gib": round(peak / GIB, 4),
              "estimate_over_peak": round(est.total / peak, 3) if peak else None,
              "estimate_breakdown_gib": {k: round(v / GIB, 4) for k, v in est.breakdown.items()}}
    if env.rank == 0:
        print(json.dumps(record), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    exit_process(0)   # a process group was made: see perfkit/process_exit.py
    return 0


if __name__ == "__main__":
    sys.exit(main())
