"""The train benchmark's JSON record and its console text.

Numbers (docs/architecture.md): tokens/s per GPU = tokens per optimizer step / world size / step time;
TFLOP/s per GPU = tokens/s per GPU * FLOPs per token (6 N_non_embedding + 12 L H d S);
MFU = TFLOP/s / dense bf16 peak of the GPU from perfkit.metrics' table - None ("n/a") when the
device is not in it (every CPU), never a guess. Percentiles come from the per-step times:
tokens/s p20 = tokens / step-time p80 (a monotone map, so the order of steps is kept).
"""

from __future__ import annotations

import math
from typing import Any

from perfkit.bench.records import percentiles
from perfkit.bench.train_measure import Measurement
from perfkit.train.memory_estimate import GIB, estimate_for_plan

FLOPS_FORMULA = "6*N_non_embedding + 12*n_layer*n_head*head_dim*seq_len"


def _throughput_at(step_time_s: float, tokens_per_gpu: int, flops_per_token: float, peak: float | None):
    tok_s = tokens_per_gpu / step_time_s
    tflops = tok_s * flops_per_token / 1e12
    return tok_s, tflops, (tok_s * flops_per_token / peak if peak else None)


def make_record(*, parts, m: Measurement, env_info: dict, peak: float | None, args_info: dict,
                variant: str | None, per_rank_median_s: list[float]) -> dict[str, Any]:
    """One JSON line: where and what ran, how it was measured, and the numbers."""
    cfg, plan = parts.cfg, parts.plan
    tokens_per_gpu = plan.tokens_per_step // plan.world_size
    times = percentiles(m.step_times_s)
    tok_median, tflops, mfu = _throughput_at(times["median"], tokens_per_gpu, plan.flops_per_token, peak)
    device = env_info["device"]
    # what `perfkit train --dry-run` estimates for this run, beside the measured peaks (issue 15:
    # within 10% of max_memory_allocated on a GPU)
    estimate = estimate_for_plan(cfg, plan, device)
    return {
        "bench": "train", **args_info, "variant": variant, **env_info,
        "world_size": plan.world_size,
        "kernels": cfg.model.kernels,
        # on CPU the perfkit ops dispatch to their PyTorch reference (kernels/dispatch.py)
        "kernels_ran": cfg.model.kernels if device == "cuda" or cfg.model.kernels == "torch" else "torch-reference",
        "compile": cfg.parallel.compile, "reshard_after_forward": cfg.parallel.reshard_after_forward,
        "mixed_precision": cfg.parallel.mixed_precision if device == "cuda" else "fp32",
        # the float8 recipe of the block linears, None without float8 (MFU stays against the bf16 peak)
        "float8": cfg.parallel.float8_recipe if cfg.parallel.float8 else None,
        "parameters": plan.parameters, "non_embedding_parameters": plan.non_embedding_parameters,
        "flops_per_token": plan.flops_per_token, "flops_formula": FLOPS_FORMULA,
        "micro_batch_size": plan.micro_batch_size, "grad_accum_steps": plan.grad_accum_steps,
        "sequence_length": plan.sequence_length, "tokens_per_step": plan.tokens_per_step,
        "tokens_per_step_per_gpu": tokens_per_gpu,
        "warmup_s": m.warmup_s,
        "step_time_s": times, "step_times_s": m.step_times_s,
        "per_rank_step_time_median_s": per_rank_median_s,
        "tokens_per_s_per_gpu": {"median": tok_median, "p20": tokens_per_gpu / times["p80"],
                                 "p80": tokens_per_gpu / times["p20"]},
        "tflops_per_gpu": tflops, "mfu": mfu, "peak_flops": peak,
        "peak_name": f"dense bf16 peak of {env_info['device_name']}" if peak else None,
        "peak_mem_allocated_gib": m.peak_allocated_gib, "peak_mem_reserved_gib": m.peak_reserved_gib,
        "host_peak_rss_gib": m.host_peak_rss_gib,
        "memory_estimate_gib": {"total": estimate.total / GIB,
                                **{k: v / GIB for k, v in estimate.breakdown.items()}},
        # non-finite only in on_nonfinite = "skip" mode (stop mode raised); JSON has no NaN
        "data_wait_frac": m.data_wait_frac, "loss_last": m.loss_last if math.isfinite(m.loss_last) else None,
        "profile": None,
    }


def header(record: dict, config_path: str) -> str:
    commit = (record["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if record["git_dirty"] else "")
    per = "GPU" if record["device"] == "cuda" else "process"
    data = "synthetic tokens" if record["synthetic"] else "the config's .pbin data"
    return "\n".join([
        f"perfkit bench train: {config_path} on {data}; git {commit}; {record['time']}",
        f"device: {record['device_name']} x{record['world_size']} ({record['device']}) | torch {record['torch']} | "
        f"triton {record['triton'] or 'not installed'} | python {record['python']}",
        f"model: {record['parameters'] / 1e6:.1f}M parameters ({record['non_embedding_parameters'] / 1e6:.1f}M "
        f"non-embedding); {record['flops_per_token']:.3e} FLOPs/token = {FLOPS_FORMULA}",
        f"step: {record['micro_batch_size']} x {record['sequence_length']} tokens x {record['grad_accum_steps']} "
        f"accumulation x {record['world_size']} rank(s) = {record['tokens_per_step']:,} tokens "
        f"({record['tokens_per_step_per_gpu']:,} per {per}); warm-up {record['warmup']} steps, "
        f"timed {record['steps']} steps",
    ])


def summary(record: dict) -> str:
    per = "GPU" if record["device"] == "cuda" else "process"
    tok, st = record["tokens_per_s_per_gpu"], record["step_time_s"]
    if record["mfu"] is not None:
        mfu = (f"MFU {record['mfu']:.1%} (of {record['peak_flops'] / 1e12:.0f} TFLOP/s, "
               f"{record['peak_name']})")
    else:
        mfu = f"MFU n/a (no known peak for {record['device_name']})"
    if record["peak_mem_allocated_gib"] is not None:
        mem = (f"peak memory: allocated {record['peak_mem_allocated_gib']:.2f} GiB, reserved "
               f"{record['peak_mem_reserved_gib']:.2f} GiB (CUDA caching allocator); host RSS "
               f"{record['host_peak_rss_gib']:.2f} GiB")
    else:
        mem = f"peak memory: host RSS {record['host_peak_rss_gib']:.2f} GiB (no CUDA allocator on CPU)"
    settings = (f"kernels {record['kernels']}" + (f" (ran {record['kernels_ran']})"
                                                 if record["kernels_ran"] != record["kernels"] else "")
                + f", compile {'on' if record['compile'] else 'off'}, reshard_after_forward "
                f"{'on' if record['reshard_after_forward'] else 'off'}, {record['mixed_precision']}")
    ranks = record["per_rank_step_time_median_s"]
    spread = ([f"  per-rank median step time: {min(ranks) * 1e3:.2f} .. {max(ranks) * 1e3:.2f} ms "
               f"(slowest rank {ranks.index(max(ranks))}; the numbers above are rank 0's)"] if len(ranks) > 1 else [])
    return "\n".join([
        f"[{record['variant'] or 'config'}] {settings}; warm-up took {record['warmup_s']:.1f} s (not timed)",
        f"  tokens/s per {per}: {tok['median']:,.0f} median (p20 {tok['p20']:,.0f}, p80 {tok['p80']:,.0f})",
        f"  step time: {st['median'] * 1e3:.2f} ms median (p20 {st['p20'] * 1e3:.2f}, p80 {st['p80'] * 1e3:.2f})",
        f"  {record['tflops_per_gpu']:.3g} TFLOP/s per {per}; {mfu}",
        f"  {mem}",
        f"  data wait: {record['data_wait_frac']:.2%} of step time; last loss "
        f"{'non-finite' if record['loss_last'] is None else format(record['loss_last'], '.4f')}",
    ] + spread)


def compare_table(records: list[dict], axis: str) -> str:
    """Side by side, each variant's ratio to the first (ratio > 1: more tokens/s than the first)."""
    base = records[0]["tokens_per_s_per_gpu"]["median"]
    per = "GPU" if records[0]["device"] == "cuda" else "process"
    head = (f"{'variant':<12} {'tok/s/' + per + ' median':>22} {'p20':>11} {'p80':>11} {'step ms':>9} "
            f"{'TFLOP/s':>8} {'MFU':>6} {'alloc GiB':>9} {'wait':>6} {'vs ' + records[0]['variant']:>11}")
    lines = [f"--compare {axis}:", head]
    for r in records:
        tok = r["tokens_per_s_per_gpu"]
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        alloc = "n/a" if r["peak_mem_allocated_gib"] is None else f"{r['peak_mem_allocated_gib']:.2f}"
        lines.append(f"{r['variant']:<12} {tok['median']:>22,.0f} {tok['p20']:>11,.0f} {tok['p80']:>11,.0f} "
                     f"{r['step_time_s']['median'] * 1e3:>9.2f} {r['tflops_per_gpu']:>8.3g} {mfu:>6} "
                     f"{alloc:>9} {r['data_wait_frac']:>6.1%} {tok['median'] / base:>10.3f}x")
    return "\n".join(lines)
