"""One run per run folder: rank 0 holds an exclusive flock on <run folder>/.lock for the run's
life; a second run is refused at once naming the folder and the holder; a dead holder never blocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_resume import REPO, logged, pbin, run_trainer, trainer_args  # noqa: E402,F401

from perfkit.train.run_folder import LOCK_FILE, RunFolderBusy, RunLock  # noqa: E402

HOLDER = textwrap.dedent("""
    import sys, time
    from perfkit.train.run_folder import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def _start_holder(run_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                         cwd=REPO)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    run_dir = tmp_path / "run"
    first = RunLock(run_dir).acquire()
    assert json.loads((run_dir / LOCK_FILE).read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    with pytest.raises(RunFolderBusy, match=f"run folder {run_dir} is in use by another run "
                                            rf"\(host {socket.gethostname()}, pid {os.getpid()}\)"):
        RunLock(run_dir).acquire()  # another open file description: flock conflicts within one process too
    (run_dir / "metrics.jsonl").write_text("")  # the run wrote something: the folder stays
    first.release()
    again = RunLock(run_dir).acquire()
    again.release()
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, "metrics.jsonl"]


def test_a_folder_the_lock_created_and_nothing_used_is_removed(tmp_path):
    RunLock(tmp_path / "runs" / "new").acquire().release()  # e.g. a resume refused before any write
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_second_run_is_refused_at_once_and_a_dead_holder_never_blocks(tmp_path, pbin):
    run_dir = tmp_path / "busy"
    holder = _start_holder(run_dir)
    try:
        r = run_trainer(trainer_args(tmp_path, "busy", pbin, "--training.max_steps=2"), expect=2)  # refused before the first step
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("perfkit train: rank ")]  # error lines; the log shares stderr
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert f"run folder {run_dir} is in use by another run (host {socket.gethostname()}, pid {holder.pid})" \
            in errors[0]
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without unlocking; its lock file is still there, naming it, and blocks nothing
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == holder.pid
    run_trainer(trainer_args(tmp_path, "busy", pbin, "--training.max_steps=2"))
    assert sorted(logged(run_dir)) == [1, 2]


@pytest.mark.slow
def test_two_ranks_of_one_run_are_one_holder_and_both_are_refused(tmp_path, pbin):
    run_trainer(trainer_args(tmp_path, "two", pbin, "--training.max_steps=2"), nproc=2)
    assert sorted(logged(tmp_path / "two")) == [1, 2]
    holder = _start_holder(tmp_path / "two")
    try:
        r = run_trainer(trainer_args(tmp_path, "two", pbin, "--training.max_steps=4",
                                     "--checkpoint.resume=auto"), nproc=2, expect=None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert r.returncode != 0
    for rank in (0, 1):  # rank 1 learns rank 0's outcome instead of waiting in a collective
        assert f"perfkit train: rank {rank}: run folder {tmp_path / 'two'} is in use" in r.stderr, r.stderr[-3000:]
