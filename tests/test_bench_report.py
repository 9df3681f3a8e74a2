"""The GPU-side logic of the train bench, checked on CPU with made-up inputs: the device-time table
counts only device events, and a CUDA record computes MFU against the named peak and prints its
memory peaks. (Real CUDA runs: tests/test_bench_gpu.py.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from perfkit.bench.profile import top_operations
from perfkit.bench.train_measure import Measurement
from perfkit.bench.train_report import compare_table, make_record, summary
from perfkit.config import load_config
from perfkit.metrics import peak_flops
from perfkit.model import flops_per_token, parameter_count
from perfkit.train.plan import make_plan

GPT2 = str(Path(__file__).resolve().parents[1] / "configs" / "gpt2.toml")


def event(key, device_type, self_cpu=0.0, self_device=0.0, count=1, annotation=False):
    return SimpleNamespace(key=key, device_type=device_type, self_cpu_time_total=self_cpu,
                           self_device_time_total=self_device, count=count, is_user_annotation=annotation)


def test_device_table_counts_kernels_not_the_cpu_ops_that_launched_them():
    averages = [
        event("aten::mm", DeviceType.CPU, self_cpu=50.0, self_device=0.0, count=4),
        event("sm90_xmma_gemm_bf16", DeviceType.CUDA, self_device=600.0, count=4),
        event("triton_rms_norm_fwd", DeviceType.CUDA, self_device=200.0, count=8),
        event("ProfilerStep#3", DeviceType.CPU, self_cpu=5.0),
        event("nccl:all_gather", DeviceType.CUDA, self_device=200.0, count=2, annotation=True),
    ]
    top, total_ms = top_operations(averages, on_device=True, steps=2)
    assert [t["name"] for t in top] == ["sm90_xmma_gemm_bf16", "triton_rms_norm_fwd"]
    assert total_ms == pytest.approx(0.4)  # (600 + 200) us over 2 steps
    assert top[0]["share"] == pytest.approx(0.75) and top[0]["calls_per_step"] == 2
    cpu_top, _ = top_operations(averages, on_device=False, steps=1)
    assert [t["name"] for t in cpu_top] == ["aten::mm"]  # the step annotation is not an operator


def cuda_record(step_times, device_name="NVIDIA H100 80GB HBM3", variant=None):
    cfg = load_config(GPT2, ["--training.max_steps=10"])
    plan = make_plan(cfg, 1, train_samples=10_000, flops_per_token=flops_per_token(cfg.model),
                     parameters=parameter_count(cfg.model),
                     non_embedding_parameters=parameter_count(cfg.model, non_embedding=True))
    m = Measurement(warmup_s=42.0, step_times_s=step_times, wait_times_s=[0.0] * len(step_times),
                    loss_last=10.9, peak_allocated_gib=20.0, peak_reserved_gib=24.0, host_peak_rss_gib=3.0)
    env_info = dict(device="cuda", device_name=device_name, torch="2.11.0", triton="3.6.0", cuda="13.0",
                    python="3.12.3", host="h", git_commit="a" * 40, git_dirty=False, time="t")
    args_info = dict(config=GPT2, overrides=[], synthetic=True, steps=len(step_times), warmup=4,
                     compare="kernels" if variant else None, run_dir=None)
    return make_record(parts=SimpleNamespace(cfg=cfg, plan=plan), m=m, env_info=env_info,
                       peak=peak_flops(device_name), args_info=args_info, variant=variant,
                       per_rank_median_s=[0.26])


def test_cuda_record_gives_mfu_against_the_named_peak_and_memory_peaks():
    r = cuda_record([0.25, 0.26, 0.27])
    assert r["tokens_per_step_per_gpu"] == 128 * 1024  # gpt2.toml: global batch 128 on one GPU
    tok = 128 * 1024 / 0.26
    assert r["tokens_per_s_per_gpu"]["median"] == pytest.approx(tok)
    assert r["peak_flops"] == 989e12 and r["mfu"] == pytest.approx(tok * r["flops_per_token"] / 989e12)
    assert r["kernels_ran"] == "triton" and r["mixed_precision"] == "bf16"
    text = summary(r)
    assert "tokens/s per GPU: 504,123 median" in text  # 131072 / 0.26
    assert f"MFU {r['mfu']:.1%} (of 989 TFLOP/s, dense bf16 peak of NVIDIA H100 80GB HBM3)" in text
    assert "allocated 20.00 GiB, reserved 24.00 GiB" in text


def test_unknown_gpu_has_no_mfu_and_compare_ratios_use_the_first_variant():
    assert cuda_record([0.3], device_name="NVIDIA RTX 9999")["mfu"] is None
    a, b = cuda_record([0.2], variant="triton"), cuda_record([0.25], variant="torch")
    table = compare_table([a, b], "kernels")
    assert "vs triton" in table and "0.800x" in table and "1.000x" in table


def test_record_carries_the_dry_run_estimate_and_the_summary_compares_it_with_the_peak():
    from perfkit.bench import device_summary
    from perfkit.train.memory_estimate import GIB, estimate_memory

    r = cuda_record([0.25, 0.26, 0.27])
    cfg = load_config(GPT2, ["--training.max_steps=10"])
    expected = estimate_memory(cfg.model, cfg.parallel, cfg.optimizer, micro_batch_size=16, world_size=1,
                               grad_accum_steps=8, device_type="cuda")
    est = r["memory_estimate_gib"]
    assert est["total"] == pytest.approx(expected.total / GIB)
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"))
    lines = device_summary.estimate_lines([r])
    err = est["total"] / 20.0 - 1  # the record's measured peak allocated: 20 GiB
    verdict = "met" if abs(err) <= 0.10 else "missed"
    assert lines == [f"- memory estimate gpt2.toml [-]: {est['total']:.2f} GiB vs 20.00 GiB peak allocated "
                     f"({err:+.1%}; target within 10%: {verdict})"]
    assert device_summary.llama_mfu_lines([r]) == []  # the MFU target is for llama3_1b.toml only


def test_llama_mfu_target_takes_the_best_bf16_gpu_record_only():
    from perfkit.bench import device_summary

    base = dict(config="configs/llama3_1b.toml", device="cuda", device_name="NVIDIA H200")
    records = [dict(base, variant="bf16", float8=None, mfu=0.43),
               dict(base, variant="rowwise", float8="rowwise", mfu=0.60),   # float8: not the bf16 target
               dict(base, variant="fused", float8=None, mfu=0.46),
               dict(base, device="cpu", variant="cpu", float8=None, mfu=None)]
    assert device_summary.llama_mfu_lines(records) == [
        "- target llama3_1b.toml >= 45% MFU in bf16: met (best 46.0%, variant fused, on NVIDIA H200)"]
