"""Multi-rank faults of the real trainer under torchrun that the other tests do not cover:
bad input that only one node sees, a node with another config, SIGKILL of one worker (during a
periodic save or between saves) followed by resume=auto, and a resume that changes the global
batch. Every launch runs with a timeout: a hang fails the test instead of blocking it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train import CPU_DEBUG, records
from test_train_data import make_dataset, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path: Path, base: list[str], node_b_extra: list[str]) -> list[tuple[int, float, str]]:
    """Two torchrun "nodes" of one worker each (c10d rendezvous on localhost), as on a cluster
    where node B sees other files or overrides. Returns (exit code, seconds, stderr) per node."""
    port = _free_port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", tmp_path.name,
              "-m", "perfkit.train", CPU_DEBUG, *base]
    t0 = time.monotonic()
    procs = []
    for extra in ([], node_b_extra):  # A first, so that A's launcher hosts the store (the case that hung)
        procs.append(subprocess.Popen(launch + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=ENV, cwd=REPO))
        time.sleep(1)
    out = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=90)  # before the fix, node A waited 30 min in init_process_group
            out.append((p.returncode, time.monotonic() - t0, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


@pytest.mark.parametrize("case", ["file_missing_on_one_node", "other_override_on_one_node"])
def test_problem_seen_by_one_node_stops_every_rank_with_its_message(tmp_path, case):
    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4)
    base = tiny_overrides(tmp_path, train, val, **{"training.max_steps": 3})
    if case == "file_missing_on_one_node":
        extra = [f'--data.train=["{tmp_path / "data" / "not_copied_here.pbin"}"]']
        want, code = "rank 1: $.data.train: no such file", 2
    else:
        extra = ["--optimizer.lr=0.001"]
        want, code = "ranks disagree on the resolved config (optimizer.lr = 0.003 on rank 0, 0.001 on rank 1)", 2
    results = _two_nodes(tmp_path, base, extra)
    for rc, seconds, err in results:
        assert rc != 0 and seconds < 60, (rc, seconds, err[-2000:])
        assert want in err, err[-2000:]  # the same message on the node that did not see the problem
        assert f"exitcode  : {code}" in err
    assert not (tmp_path / "runs").exists()  # stopped before the run folder


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "perfkit.train", CPU_DEBUG, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO, **kw)


def test_sigkill_of_one_worker_then_resume_auto_matches_an_uninterrupted_run(tmp_path):
    from perfkit.checkpoint import latest_checkpoint, layout

    train, val = make_dataset(tmp_path / "data", train_docs=32, val_docs=4)
    steps = {"training.max_steps": 10, "metrics.log_every": 1, "training.eval_every": 0,
             "checkpoint.every_steps": 3}

    straight = _torchrun(tiny_overrides(tmp_path, train, val, **steps) + ["--run.experiment_id=straight"])
    assert straight.wait(timeout=120) == 0, straight.stderr.read()[-2000:]

    args = tiny_overrides(tmp_path, train, val, **steps) + ["--run.experiment_id=k"]
    proc = _torchrun(args)
    for line in proc.stderr:  # the run log (stderr); the save of step 6 starts right after this line
        if line.startswith("step 6/"):
            break
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(max(workers, key=int)), signal.SIGKILL)  # local rank 1 (started second)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.monotonic() - t0 < 45, err[-2000:]  # the survivor does not hang
    assert "exitcode  : -9" in err
    run = tmp_path / "runs" / "k"
    newest = latest_checkpoint(run)
    assert newest is not None and layout.step_of(newest) in (3, 6)  # 6 only if its commit was done
    assert layout.verify(newest) == []
    for p in (run / "checkpoints").iterdir():  # whatever the kill left is not taken for complete
        assert p == newest or layout.step_of(p) != 6 or layout.is_complete(p)

    resumed = _torchrun(args + ["--checkpoint.resume=auto"])
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed from {newest} (step {layout.step_of(newest)})" in err
    a, b = records(tmp_path / "runs" / "straight"), records(run)
    assert [r["step"] for r in b] == list(range(1, 11))  # every step once, the redone ones replaced
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert [r["tokens_seen"] for r in b] == [r["tokens_seen"] for r in a]
    assert layout.step_of(latest_checkpoint(run)) == 9


def test_resume_with_another_global_batch_says_so(tmp_path):
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4)
    base = tiny_overrides(tmp_path, train, val, **{"training.max_steps": 4, "training.micro_batch_size": 4,
                                                   "checkpoint.every_steps": 2, "training.eval_every": 0})
    assert main([CPU_DEBUG, *base, "--training.max_steps=2"]) == 0  # saves step 2, global batch 4
    cmd = [sys.executable, "-m", "perfkit.train", CPU_DEBUG, *base, "--checkpoint.resume=auto"]
    # micro_batch_size 2 on 1 rank: what an elastic restart on half the ranks does with the same config
    r = subprocess.run(cmd + ["--training.micro_batch_size=2"], capture_output=True, text=True, env=ENV,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(step 2)" in r.stderr
    assert "global batch of 4 samples per step, this run uses 2" in r.stderr
    assert "$.training.global_batch_size=4" in r.stderr
    ckpt = json.loads((tmp_path / "runs" / "test" / "checkpoints" / "step_00000004" / "config.json").read_text())
    assert ckpt["derived"]["global_batch_size"] == 2
    # with the global batch kept (here by global_batch_size, derived accumulation), the resume is quiet
    r = subprocess.run(cmd + ["--training.micro_batch_size=1", "--training.global_batch_size=2",
                              "--training.max_steps=6"], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(step 4)" in r.stderr and "WARNING" not in r.stderr
