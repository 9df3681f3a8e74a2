"""The trainer on one CUDA GPU: NCCL, bf16 parameters / fp32 reduction, per-block compile,
Triton kernels, fused AdamW, meta-device init. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from test_train import TRAIN_FIELDS, records, run_main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _watch_syncs(monkeypatch, after_step: int) -> list[str]:
    """Run every optimizer step after `after_step` (warm-up: lazy init, compile, the loader's dtype
    probe) under CUDA's sync debug mode; returns the list that collects each host sync made in the
    training thread, with its stack. The prefetch thread may wait on its own copy events (that is
    its job and never stalls training), so other threads' syncs are not collected. The loop reads
    the loss on logging steps outside train_step, so every train_step call can be watched."""
    import threading
    import traceback
    import warnings

    import perfkit.train.loop as loop

    real_step, n = loop.train_step, {"step": 0}
    syncs: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message) and threading.current_thread() is threading.main_thread():
            syncs.append(f"step {n['step']}: {message}\n" + "".join(traceback.format_stack(limit=12)))

    def watched_step(*args, **kwargs):
        n["step"] += 1
        if n["step"] <= after_step:
            return real_step(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record  # restored when the block exits
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return real_step(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(loop, "train_step", watched_step)
    return syncs


def test_bf16_compiled_run_on_cuda(tmp_path, monkeypatch):
    """Loss falls, metrics are complete, and no step after warm-up synchronizes the host with the
    device (tests/test_host_sync.py is the CPU stand-in for the last part)."""
    from perfkit.metrics import peak_flops

    syncs = _watch_syncs(monkeypatch, after_step=3)
    rc, run_dir = run_main(tmp_path, "gpu", **{
        "run.device": "cuda", "parallel.mixed_precision": "bf16", "parallel.compile": "true",
        "parallel.init_device": "meta", "model.kernels": "triton", "training.max_steps": 60,
        "training.micro_batch_size": 8, "training.grad_accum_steps": 2, "optimizer.fused": "true",
        "metrics.log_every": 20, "training.eval_every": 30,
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
    assert syncs == [], "host syncs inside training steps:\n" + "\n".join(syncs[:3])
