"""Two-process (gloo) FSDP2 runs under torchrun, launched from the test with a timeout."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import CPU_DEBUG, records, run_main
from test_train_data import make_dataset, tiny_overrides

pytestmark = pytest.mark.slow


def torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "-m", "perfkit.train", CPU_DEBUG, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_match_one_rank_on_the_same_global_batch(tmp_path):
    """FSDP over 2 ranks x 8 samples gives the losses of 1 rank x 16 samples: the sampler hands the
    two ranks the interleaved halves of the same 16 samples, and init_device = "cpu" makes the
    initial weights independent of the world size."""
    # bpb_tokenizer: GPT-2 gives the tiny data's ids (< 256) one byte each, so val_bpb = val_loss / ln 2
    # exactly when the byte count is summed over the ranks like the loss
    steps = {"training.max_steps": 30, "metrics.log_every": 5, "training.eval_every": 15,
             "metrics.bpb_tokenizer": "gpt2"}
    train, val = make_dataset(tmp_path / "data")
    proc = torchrun(tiny_overrides(tmp_path, train, val, **steps) + ["--run.experiment_id=two"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s) on cpu" in proc.stderr  # the run log
    two = records(tmp_path / "runs" / "two")
    losses = [r["loss"] for r in two]
    assert losses[0] > losses[-1] + 1.0, losses  # the loss falls

    rc, one_dir = run_main(tmp_path, "one", **steps, **{"training.micro_batch_size": 16})
    assert rc == 0
    one = records(one_dir)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    assert losses == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-3)
    assert [r["tokens_seen"] for r in two] == [r["tokens_seen"] for r in one]
    v2, v1 = records(tmp_path / "runs" / "two", "val"), records(one_dir, "val")
    assert [r["val_loss"] for r in v2] == pytest.approx([r["val_loss"] for r in v1], rel=1e-4)
    assert [r["val_bpb"] for r in v2] == pytest.approx([r["val_loss"] / math.log(2) for r in v2], rel=1e-9)


def test_bad_input_stops_every_rank_without_hanging(tmp_path):
    train, val = make_dataset(tmp_path / "data", train_docs=8, val_docs=2)
    base = tiny_overrides(tmp_path, train, val)
    # Every rank checks on its own before any collective; torchrun stops the other workers as soon
    # as one exits non-zero, so one or both messages appear, and the launch ends (no hang).
    proc = torchrun(base + ["--training.max_step=3"], timeout=120)
    assert proc.returncode != 0
    assert "did you mean `max_steps`" in proc.stderr
    proc = torchrun(base + ["--training.global_batch_size=9", "--training.micro_batch_size=2"], timeout=120)
    assert proc.returncode != 0
    assert "global_batch_size (9) is not divisible by" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_reduce_scatter_after_every_micro_batch_trains_like_once_per_step(tmp_path):
    """$.parallel.reduce_gradients: two ranks x 2 micro-batches of 4, gradients reduce-scattered after
    each micro-batch (and summed into the sharded gradient) or accumulated unsharded until the last:
    the same losses and gradient norms, to fp32 rounding."""
    steps = {"training.max_steps": 12, "metrics.log_every": 3, "training.micro_batch_size": 4,
             "training.global_batch_size": 16}
    train, val = make_dataset(tmp_path / "data")
    runs = {}
    for policy in ("last_micro_batch", "every_micro_batch"):
        proc = torchrun(tiny_overrides(tmp_path, train, val, **steps, **{"parallel.reduce_gradients": policy})
                        + [f"--run.experiment_id={policy}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"grad accumulation 2 ({policy.replace('_', ' ')} reduce)" in proc.stderr, proc.stderr[-2000:]
        runs[policy] = records(tmp_path / "runs" / policy)
    last, every = runs["last_micro_batch"], runs["every_micro_batch"]
    assert [r["step"] for r in last] == [r["step"] for r in every] == [3, 6, 9, 12]
    assert [r["loss"] for r in every] == pytest.approx([r["loss"] for r in last], rel=1e-4)
    assert [r["grad_norm"] for r in every] == pytest.approx([r["grad_norm"] for r in last], rel=1e-3)
    assert last[0]["loss"] > last[-1]["loss"]
