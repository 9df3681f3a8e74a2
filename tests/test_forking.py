"""Forked pack and index workers never finalize their parent's objects (perfkit/prep/forking.py).

Seen under the whole test suite on torch 2.11: a pack worker's collector freed a gloo
ProcessGroup left in the pytest process by an earlier FSDP2 test, and hung in its destructor.
Here the leftover is a reference cycle with a finalizer that reports the process it ran in; each
worker collects garbage as it starts (what the child's collector does at some allocation, made
deterministic); the parent's collector is off from the cycle's creation until the command ends,
so the cycle is still garbage in the parent at the fork, as a not-yet-collected cycle would be.
"""

from __future__ import annotations

import gc
import os

import pytest

from perfkit.prep import index_cmd, pack_cmd, pack_pipeline


class _Leftover:
    """A cycle whose finalizer appends the pid it ran in to `log`."""

    def __init__(self, log):
        self.log, self.me = log, self

    def __del__(self):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


@pytest.fixture
def leftover_garbage(tmp_path):
    """Makes one unreachable cycle with the parent's collector off; yields the finalizer log,
    then collects it in the parent (so the log then holds the parent's pid, and only it)."""
    log = tmp_path / "finalized_in.txt"
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        _Leftover(str(log))   # unreachable at once, collectable only by the collector
        yield log
    finally:
        gc.collect()
        if enabled:
            gc.enable()


def _collecting_first(fn):
    def wrapped(*args, **kwargs):
        gc.collect()  # in the child: everything the child's collector may reach
        return fn(*args, **kwargs)
    return wrapped


def test_pack_workers_never_finalize_the_parents_garbage(write_jsonl, tmp_path, monkeypatch, leftover_garbage):
    src = write_jsonl([{"text": f"document {i}"} for i in range(200)])
    monkeypatch.setattr(pack_pipeline, "worker_main", _collecting_first(pack_pipeline.worker_main))
    rc = pack_cmd.main([str(src), "-o", str(tmp_path / "c.pbin"), "--tokenizer", "gpt2", "--no-progress",
                        "--workers", "2", "--chunk-mb", "0.001"])
    assert rc == 0
    assert not leftover_garbage.exists(), f"finalized in a worker: {leftover_garbage.read_text()}"
    gc.collect()
    assert leftover_garbage.read_text().split() == [str(os.getpid())]  # the parent still can


def test_index_workers_never_finalize_the_parents_garbage(write_jsonl, tmp_path, monkeypatch, leftover_garbage):
    src = write_jsonl([{"text": f"document {i}"} for i in range(200)])
    monkeypatch.setattr(index_cmd, "_init", _collecting_first(index_cmd._init))
    assert index_cmd.main([str(src), "-o", str(tmp_path / "c.idx"), "--workers", "2"]) == 0
    assert not leftover_garbage.exists(), f"finalized in a worker: {leftover_garbage.read_text()}"
    gc.collect()
    assert leftover_garbage.read_text().split() == [str(os.getpid())]


def test_the_parent_collects_again_after_the_fork():
    from perfkit.prep.forking import frozen_heap

    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
