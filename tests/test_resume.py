"""Exact resume through the real trainer (configs/cpu_debug.toml, shrunk): N steps straight versus
N/2 steps, a fresh process that resumes, and N/2 more give bit-identical per-step losses, on one
and on two ranks.

The lower half of this file is a driver that runs `perfkit.train` in-process, optionally with a
fault injected (a NaN loss at step K, or a SIGKILL at a chosen moment of the save of step K);
test_preemption.py uses it too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
STEPS = 8


@pytest.fixture(scope="module")
def pbin(tmp_path_factory) -> Path:
    import numpy as np

    from perfkit.formats.pbin import write_pbin
    path = tmp_path_factory.mktemp("data") / "train.pbin"
    tokens = np.random.default_rng(0).integers(0, 500, 40_000)
    write_pbin(path, tokens, np.array([20_000, 20_000]), 2)
    return path


def trainer_args(root: Path, exp: str, pbin: Path, *extra: str) -> list[str]:
    return [str(REPO / "configs" / "cpu_debug.toml"), f"--run.root={root}", f"--run.experiment_id={exp}",
            f'--data.train=["{pbin}"]', "--data.val=[]", "--model.vocab_size=512",
            f"--training.max_steps={STEPS}", "--training.eval_every=0", "--metrics.log_every=1",
            "--checkpoint.keep_last=10", *extra]


def run_trainer(args: list[str], nproc: int = 1, inject: tuple[str, ...] = (),
                expect: int | None = 0) -> subprocess.CompletedProcess:
    """Run the driver below on `nproc` ranks; returns the completed process (checks its code)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*launcher, str(HERE), *inject, "::", *args]  # torchrun eats a "--"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    if expect is not None and r.returncode != expect:
        raise AssertionError(f"exit {r.returncode} (expected {expect}) from {cmd}\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def logged(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """step -> value from metrics.jsonl; a step logged twice (re-run after a resume) keeps the last."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            out[rec["step"]] = rec[key]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_half_resume_half_is_bit_identical(tmp_path, pbin, nproc):
    half = STEPS // 2
    run_trainer(trainer_args(tmp_path, "straight", pbin, f"--checkpoint.every_steps={half}"), nproc)
    straight = logged(tmp_path / "straight")
    assert sorted(straight) == list(range(1, STEPS + 1))
    # a fresh process resumes from the half-way checkpoint of that run, in its own folder
    ckpt = tmp_path / "straight" / "checkpoints" / f"step_{half:08d}"
    run_trainer(trainer_args(tmp_path, "resumed", pbin, f"--checkpoint.resume={ckpt}"), nproc)
    resumed = logged(tmp_path / "resumed")
    assert sorted(resumed) == list(range(half + 1, STEPS + 1))
    for key in ("loss", "grad_norm", "lr", "tokens_seen"):
        want = {s: v for s, v in logged(tmp_path / "straight", key).items() if s > half}
        assert logged(tmp_path / "resumed", key) == want, key  # exact equality, not approx


@pytest.mark.slow
def test_resume_on_other_rank_count_continues_data_order(tmp_path, pbin):
    """2 ranks -> 1 rank with the same global batch: weights reshard, the sample order continues."""
    run_trainer(trainer_args(tmp_path, "two", pbin, "--checkpoint.every_steps=4",
                             "--training.micro_batch_size=4"), nproc=2)
    ckpt = tmp_path / "two" / "checkpoints" / "step_00000004"
    run_trainer(trainer_args(tmp_path, "one", pbin, f"--checkpoint.resume={ckpt}",
                             "--training.micro_batch_size=4", "--training.grad_accum_steps=2"), nproc=1)
    two, one = logged(tmp_path / "two"), logged(tmp_path / "one")
    assert sorted(one) == [5, 6, 7, 8]
    # same samples and weights, different reduction order: equal to float tolerance, not bitwise
    for s in one:
        assert one[s] == pytest.approx(two[s], rel=1e-4), s
    assert logged(tmp_path / "one", "tokens_seen") == {s: v for s, v in logged(tmp_path / "two", "tokens_seen").items() if s > 4}


@pytest.mark.slow
def test_warm_start_from_export_equals_warm_start_from_checkpoint(tmp_path, pbin):
    run_trainer(trainer_args(tmp_path, "src", pbin, "--training.max_steps=3", "--checkpoint.save_at_end=true"))
    from perfkit.checkpoint.export import export_checkpoint
    export_checkpoint(tmp_path / "src", tmp_path / "model.pt", dtype="fp32")
    run_trainer(trainer_args(tmp_path, "from_ckpt", pbin, f"--checkpoint.warm_start={tmp_path / 'src'}"))
    run_trainer(trainer_args(tmp_path, "from_export", pbin, f"--checkpoint.warm_start={tmp_path / 'model.pt'}"))
    from_ckpt, from_export = logged(tmp_path / "from_ckpt"), logged(tmp_path / "from_export")
    assert sorted(from_export) == list(range(1, STEPS + 1))  # a fresh schedule and data order
    assert from_export == from_ckpt  # same weights through both paths, fresh optimizer in both
    src = logged(tmp_path / "src")
    assert from_export[1] != src[1]  # same first batch, other weights: not the init's loss


@pytest.mark.slow
def test_full_disk_at_a_save_stops_cleanly_and_the_run_resumes(tmp_path, pbin):
    """The step-8 save hits a full disk: one line naming the step and the intact step-4
    checkpoint, exit 1, no half-written folder; resume=auto then redoes steps 5-8 exactly."""
    args = trainer_args(tmp_path, "full", pbin, "--checkpoint.every_steps=4")
    r = run_trainer(args, inject=("--full-disk-at", "8"), expect=1)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("perfkit train: rank 0:")]  # not the log lines
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "saving checkpoint step 8" in errors[0] and "No space left on device" in errors[0]
    assert "step_00000004, is intact" in errors[0]
    ckpts = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000004"]
    first = logged(tmp_path / "full")
    run_trainer(trainer_args(tmp_path, "full", pbin, "--checkpoint.every_steps=4", "--checkpoint.resume=auto"))
    again = logged(tmp_path / "full")
    assert [again[s] for s in range(5, 9)] == [first[s] for s in range(5, 9)]
    assert (ckpts / "step_00000008").is_dir()


# ---------------------------------------------------------------- driver (run as a script)

def _driver(argv: list[str]) -> int:
    """`test_resume.py [--nan-at K] [--kill-at K:WHERE] :: TRAINER ARGS`.

    --nan-at K: the loss of optimizer step K (every rank) becomes NaN.
    --full-disk-at K: writing the shards of step K fails with ENOSPC (a full disk).
    --kill-at K:WHERE: SIGKILL this process while saving step K, WHERE in
        shards (DCP wrote the shard data, not its .metadata), manifest (manifest written, no
        marker), marker (marker written, folder not yet renamed).
    """
    import signal

    split = argv.index("::")
    opts, train_argv = argv[:split], argv[split + 1:]
    nan_at = kill_at = None
    for i, o in enumerate(opts):
        if o == "--nan-at":
            nan_at = int(opts[i + 1])
        if o == "--full-disk-at":
            import errno

            import torch.distributed.checkpoint as dcp
            full_tag, real_write_data = f"step_{int(opts[i + 1]):08d}", dcp.FileSystemWriter.write_data

            def full_disk(self, *a, **k):
                if full_tag in str(self.path):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_write_data(self, *a, **k)
            dcp.FileSystemWriter.write_data = full_disk
        if o == "--kill-at":
            step, where = opts[i + 1].split(":")
            kill_at = (int(step), where)

    if nan_at is not None:
        from perfkit.model.loss import LMLoss
        real_loss, calls = LMLoss.forward, [0]

        def loss_fn(self, *args):  # one call per micro-batch; eval is off in these tests
            calls[0] += 1
            loss = real_loss(self, *args)
            return loss * float("nan") if calls[0] == nan_at else loss
        LMLoss.forward = loss_fn

    if kill_at is not None:
        from perfkit.checkpoint import checkpointer, layout
        step, where = kill_at

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        def wrap(module, name, when):
            real = getattr(module, name)

            def patched(*a, **k):
                if when(*a):
                    die()
                out = real(*a, **k)
                return out
            setattr(module, name, patched)

        tag = f"step_{step:08d}"
        if where == "shards":  # DCP has written this rank's shard, not yet its .metadata
            import torch.distributed.checkpoint as dcp
            real_write = dcp.FileSystemWriter.write_data

            def write_then_die(self, *a, **k):
                out = real_write(self, *a, **k)
                if tag in str(self.path):
                    out.wait()
                    die()
                return out
            dcp.FileSystemWriter.write_data = write_then_die
        elif where == "manifest":
            wrap(layout, "_write_synced", lambda p, *r: tag in str(p) and p.name == layout.MARKER)
        elif where == "marker":
            wrap(layout, "fsync_dir", lambda p, *r: p.name == tag + layout.PARTIAL_SUFFIX)
        else:
            raise SystemExit(f"unknown kill point {where}")
        assert checkpointer.layout is layout

    from perfkit.train.train_cmd import main
    return main(train_argv)


if __name__ == "__main__":
    from perfkit.process_exit import exit_process
    exit_process(_driver(sys.argv[1:]))  # as perfkit.train's own entry point ends
