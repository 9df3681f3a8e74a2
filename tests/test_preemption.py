"""Faults: SIGTERM/SIGINT save and exit with 143/130, a second signal exits at once, SIGKILL during a
save leaves the previous checkpoint resumable, a non-finite loss stops or skips as configured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from perfkit.checkpoint import latest_checkpoint, layout
from perfkit.checkpoint.export import read_model_tensors
from perfkit.train.faults import NonFiniteError, NonFiniteGuard
from perfkit.train.preemption import PreemptionGuard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_resume import HERE as DRIVER, REPO, STEPS, logged, pbin, run_trainer, trainer_args  # noqa: E402,F401

# ---------------------------------------------------------------- unit: NonFiniteGuard


def _param_and_opt(fused: bool):
    p = torch.nn.Parameter(torch.ones(4))
    return p, torch.optim.AdamW([p], lr=0.1, fused=fused or None, foreach=None if fused else True)


@pytest.mark.parametrize("fused", [True, False])
def test_skip_drops_the_update_and_counts(fused):
    p, opt = _param_and_opt(fused)
    guard, progress = NonFiniteGuard("skip"), SimpleNamespace(nonfinite_skips=5)
    for step, g in enumerate([1.0, float("nan"), 1.0, float("inf")], start=1):
        p.grad = torch.full((4,), g)
        before = p.detach().clone()
        if guard.observe(step, torch.tensor(2.0), p.grad.norm(), opt):
            opt.step()
        assert torch.equal(p, before) != bool(torch.isfinite(torch.tensor(g))), step
    assert int(opt.state[p]["step"]) == 2  # the moments and step count were not touched either
    assert guard.poll(progress) == 2 and progress.nonfinite_skips == 7
    assert guard.poll(progress) == 2 and progress.nonfinite_skips == 7  # counted once


def test_stop_reports_the_first_bad_step_at_poll():
    p, opt = _param_and_opt(True)
    guard = NonFiniteGuard("stop")
    for step, loss in [(1, 1.0), (2, float("nan")), (3, float("nan"))]:
        p.grad = torch.ones(4)
        assert guard.observe(step, torch.tensor(loss), p.grad.norm(), opt)  # no sync, no raise yet
        opt.step()
    with pytest.raises(NonFiniteError, match="at step 2") as e:
        guard.poll(SimpleNamespace(nonfinite_skips=0))
    assert e.value.step == 2
    assert torch.isfinite(p).all()  # with a fused optimizer even the bad updates were dropped


def test_guard_rejects_unknown_policy():
    with pytest.raises(ValueError, match="stop' or 'skip"):
        NonFiniteGuard("ignore")


# ---------------------------------------------------------------- unit: PreemptionGuard


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_sets_flag_and_code(sig, code):
    previous = signal.getsignal(sig)
    with PreemptionGuard() as guard:
        assert not guard.should_stop() and guard.exit_code == 0
        os.kill(os.getpid(), sig)
        assert guard.should_stop() and guard.exit_code == code
    assert signal.getsignal(sig) == previous  # handlers restored


def test_second_signal_exits_at_once():
    script = textwrap.dedent("""
        import os, signal, time
        from perfkit.train.preemption import PreemptionGuard
        guard = PreemptionGuard(duplicate_window_s=0.5)
        os.kill(os.getpid(), signal.SIGINT)
        print("first handled", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # within the window: the same request delivered twice
        print("duplicate ignored", guard.should_stop(), flush=True)
        time.sleep(0.6)
        os.kill(os.getpid(), signal.SIGINT)  # after it: the user insists
        time.sleep(5)
        print("not reached", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and "first handled" in r.stdout and "not reached" not in r.stdout
    assert "duplicate ignored True" in r.stdout


# ---------------------------------------------------------------- the real trainer


@pytest.fixture(scope="module")
def straight(tmp_path_factory, pbin):
    root = tmp_path_factory.mktemp("straight")
    run_trainer(trainer_args(root, "s", pbin))
    return logged(root / "s")


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resumes_exactly(tmp_path, pbin):
    steps = ["--training.max_steps=20"]  # the schedule depends on it: same value in every run here
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(DRIVER), "::", *trainer_args(tmp_path, "p", pbin, *steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    for line in proc.stderr:  # the run log: signal once training is under way
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    stopped_at = max(logged(tmp_path / "p"))
    assert 3 <= stopped_at < 20
    assert layout.step_of(latest_checkpoint(tmp_path / "p")) == stopped_at  # saved at the boundary
    run_trainer(trainer_args(tmp_path, "p", pbin, *steps, "--checkpoint.resume=auto"))
    run_trainer(trainer_args(tmp_path, "straight", pbin, *steps))
    # every step, before and after the preemption, equals the uninterrupted run bit for bit
    assert logged(tmp_path / "p") == logged(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["shards", "manifest", "marker"])
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path, pbin, straight, where):
    args = trainer_args(tmp_path, "k", pbin, "--checkpoint.every_steps=2")
    r = run_trainer(args, inject=("--kill-at", f"4:{where}"), expect=None)
    assert r.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "k").name == "step_00000002"
    partial = tmp_path / "k" / "checkpoints" / "step_00000004.partial"
    names = {p.name for p in partial.iterdir()}
    assert {"shards": "__0_0.distcp" in names and ".metadata" not in names,
            "manifest": "manifest.json" in names and "COMPLETE" not in names,
            "marker": "COMPLETE" in names}[where], names  # the kill hit the moment it names
    run_trainer(trainer_args(tmp_path, "k", pbin, "--checkpoint.every_steps=2", "--checkpoint.resume=auto"))
    resumed = logged(tmp_path / "k")  # steps 3.. were logged again by the resumed run
    assert resumed == straight
    assert latest_checkpoint(tmp_path / "k").name == f"step_{STEPS:08d}"
    assert not (tmp_path / "k" / "checkpoints" / "step_00000004.partial").exists()


@pytest.mark.slow
def test_nan_stops_with_the_step_and_saves_nothing_after_it(tmp_path, pbin):
    args = trainer_args(tmp_path, "n", pbin, "--checkpoint.every_steps=2", "--metrics.log_every=5")
    r = run_trainer(args, inject=("--nan-at", "3"), expect=None)
    assert r.returncode == 1
    assert "non-finite loss or gradient norm at step 3" in r.stderr
    # step 4's save polled the flag first: the poisoned weights were never checkpointed
    assert latest_checkpoint(tmp_path / "n").name == "step_00000002"


@pytest.mark.slow
@pytest.mark.parametrize("fused", ["true", "false"])
def test_nan_skip_counts_and_finishes(tmp_path, pbin, fused):
    args = trainer_args(tmp_path, "k", pbin, "--training.on_nonfinite=skip", f"--optimizer.fused={fused}",
                        "--checkpoint.save_at_end=true")
    run_trainer(args, inject=("--nan-at", "3"))
    losses, skips = logged(tmp_path / "k"), logged(tmp_path / "k", "nonfinite_skips")
    assert losses[3] != losses[3]  # NaN was logged for the bad step
    assert all(v == v for s, v in losses.items() if s != 3)
    assert skips[2] == 0 and skips[STEPS] == 1
    final = torch.load(latest_checkpoint(tmp_path / "k") / "train_state.pt", weights_only=True)
    assert final["progress"]["nonfinite_skips"] == 1 and final["progress"]["step"] == STEPS
    weights = read_model_tensors(latest_checkpoint(tmp_path / "k"))
    assert all(torch.isfinite(t).all() for t in weights.values())  # the NaN update never landed
