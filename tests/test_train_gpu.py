"""The trainer on one CUDA GPU: NCCL, bf16 parameters / fp32 reduction, per-block compile,
Triton kernels, fused AdamW, meta-device init. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from test_train import TRAIN_FIELDS, records, run_main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_compiled_run_on_cuda(tmp_path):
    from perfkit.metrics import peak_flops

    rc, run_dir = run_main(tmp_path, "gpu", **{
        "run.device": "cuda", "parallel.mixed_precision": "bf16", "parallel.compile": "true",
        "parallel.init_device": "meta", "model.kernels": "triton", "training.max_steps": 60,
        "training.micro_batch_size": 16, "metrics.log_every": 20, "training.eval_every": 30,
    })
    assert rc == 0
    train = records(run_dir)
    assert all(TRAIN_FIELDS <= r.keys() for r in train)
    assert train[0]["loss"] > train[-1]["loss"] + 1.0, [r["loss"] for r in train]
    assert train[-1]["peak_mem_gib"] > 0 and train[-1]["tokens_per_s_per_gpu"] > 0
    if peak_flops(torch.cuda.get_device_name()) is not None:
        assert 0 < train[-1]["mfu"] < 1
    else:
        assert train[-1]["mfu"] is None
    assert [r["step"] for r in records(run_dir, "val")] == [30, 60]
