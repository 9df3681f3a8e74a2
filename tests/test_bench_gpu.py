"""`perfkit bench` on a CUDA GPU (marked gpu; skipped without one): a tiny compiled bf16 model with the
Triton kernels, profiled with a memory snapshot. Checks what the CPU tests cannot: the CUDA memory
peaks, MFU against the named peak, the device-time table and the snapshot file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perfkit.metrics import peak_flops
from test_bench_train import bench, check_consistent

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_compiled_triton_step_on_cuda_profile_and_memory_snapshot(tmp_path, capsys):
    rc, records = bench(tmp_path, "--synthetic", "--run.device=cuda", "--parallel.mixed_precision=bf16",
                        "--parallel.compile=true", "--model.kernels=triton", "--profile", "--profile-steps", "2",
                        "--memory-snapshot")
    assert rc == 0
    r = records[0]
    check_consistent(r)
    assert r["device"] == "cuda" and r["device_name"] == torch.cuda.get_device_name()
    assert r["kernels_ran"] == "triton" and r["mixed_precision"] == "bf16" and r["compile"]
    assert 0 < r["peak_mem_allocated_gib"] <= r["peak_mem_reserved_gib"]
    peak = peak_flops(r["device_name"])
    assert r["peak_flops"] == peak
    if peak is None:
        assert r["mfu"] is None and "MFU n/a" in capsys.readouterr().out
    else:
        assert r["mfu"] == pytest.approx(r["tflops_per_gpu"] * 1e12 / peak, rel=1e-12)
        assert "MFU" in capsys.readouterr().out
    prof = r["profile"]
    assert prof["by"] == "self_device_time" and prof["top_ops"]
    assert Path(prof["trace"]).is_file() and Path(prof["memory_snapshot"]).is_file()
