"""A resume checks the data files against the fingerprints saved in the checkpoint: changed token
bytes (same size), another file with the same window count, or a changed validation file are
refused naming the file and what differs, unless $.checkpoint.allow_data_change; the same data
(also moved to another folder) resumes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint import TINY, TinyNet  # noqa: E402

from perfkit.checkpoint import Checkpointer, CheckpointError  # noqa: E402
from perfkit.checkpoint import fingerprint  # noqa: E402
from perfkit.formats import pbin_fingerprint  # noqa: E402
from perfkit.config import CheckpointConfig  # noqa: E402
from perfkit.formats.pbin import read_pbin, write_pbin  # noqa: E402


def _pbin(path, seed, n=4000, docs=(1000, 3000)):
    write_pbin(path, np.random.default_rng(seed).integers(0, 64, n), np.array(docs), 2)
    return path


def _ckpt(run_dir, train, val=(), **cfg):
    torch.manual_seed(0)
    model = TinyNet()
    return Checkpointer(CheckpointConfig(**cfg), run_dir, model=model,
                        optimizer=torch.optim.AdamW(model.parameters()), progress=SimpleNamespace(step=0),
                        model_config=TINY, data_files={"$.data.train": [str(p) for p in train],
                                                       "$.data.val": [str(p) for p in val]})


@pytest.fixture
def saved(tmp_path):
    train, val = _pbin(tmp_path / "train.pbin", 0), _pbin(tmp_path / "val.pbin", 1)
    folder = _ckpt(tmp_path / "run", [train], [val]).save(1)
    return SimpleNamespace(run=tmp_path / "run", folder=folder, train=train, val=val, tmp=tmp_path)


def _overwrite_tokens(path, seed):
    """Other token bytes in place: same size, same header and document index."""
    f = read_pbin(path)
    size, n, off = path.stat().st_size, f.num_tokens, 12
    del f
    new = np.random.default_rng(seed).integers(0, 64, n).astype("<u2").tobytes()
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(new)
    assert path.stat().st_size == size


def test_unchanged_data_resumes_also_from_another_folder(saved):
    assert _ckpt(saved.run, [saved.train], [saved.val], resume="auto").restore() == saved.folder
    moved = saved.tmp / "moved"
    moved.mkdir()
    shutil.copy(saved.train, moved / "t.pbin")
    shutil.copy(saved.val, moved / "v.pbin")
    assert _ckpt(saved.run, [moved / "t.pbin"], [moved / "v.pbin"], resume="auto").restore() == saved.folder


def test_overwritten_token_bytes_are_refused_naming_the_file(saved):
    _overwrite_tokens(saved.train, seed=7)
    with pytest.raises(CheckpointError) as e:
        _ckpt(saved.run, [saved.train], [saved.val], resume="auto").restore()
    msg = str(e.value)
    assert f"$.data.train[0] {saved.train}: the token bytes differ (same size)" in msg
    assert "allow_data_change" in msg and "$.data.val" not in msg


def test_another_file_with_the_same_window_count_is_refused(saved):
    other = _pbin(saved.tmp / "other.pbin", seed=3)
    assert other.stat().st_size == saved.train.stat().st_size
    with pytest.raises(CheckpointError, match=rf"\$\.data\.train\[0\] {other} \(checkpoint: {saved.train}\): "
                                              "the token bytes differ"):
        _ckpt(saved.run, [other], [saved.val], resume="auto").restore()


@pytest.mark.parametrize("change", ["val_tokens", "val_docs", "train_size", "train_count"])
def test_other_changes_are_refused(saved, change):
    train, val = [saved.train], [saved.val]
    if change == "val_tokens":
        _overwrite_tokens(saved.val, seed=9)
        want = rf"\$\.data\.val\[0\] {saved.val}: the token bytes differ"
    elif change == "val_docs":  # same tokens, other document boundaries: only the index differs
        tokens = np.asarray(read_pbin(saved.val).tokens).copy()
        write_pbin(saved.val, tokens, np.array([2000, 2000]), 2)
        want = r"\$\.data\.val\[0\] .*: the document index differs"
    elif change == "train_size":
        _pbin(saved.train, 0, n=4100, docs=(1000, 3100))
        want = rf"\$\.data\.train\[0\] {saved.train}: 8\d+ bytes, the checkpoint's file had 8\d+"
    else:
        train = [saved.train, saved.val]
        want = r"\$\.data\.train lists 2 file\(s\), the checkpoint's run had 1"
    with pytest.raises(CheckpointError, match=want):
        _ckpt(saved.run, train, val, resume="auto").restore()


def test_allow_data_change_resumes_and_says_what_differs(saved, capsys):
    _overwrite_tokens(saved.train, seed=7)
    ck = _ckpt(saved.run, [saved.train], [saved.val], resume="auto", allow_data_change=True)
    assert ck.restore() == saved.folder
    err = capsys.readouterr().err
    assert "WARNING: resuming on changed data" in err and str(saved.train) in err
    # the next checkpoint records the data it now trains on: a later resume needs no key
    ck.save(2)
    assert _ckpt(saved.run, [saved.train], [saved.val], resume="auto").restore().name == "step_00000002"


def test_large_file_fingerprint_reads_a_bounded_sample(tmp_path, monkeypatch):
    big = _pbin(tmp_path / "big.pbin", 0, n=6_000_000, docs=(1_000_000, 5_000_000))  # 12 MB of tokens
    base = fingerprint.file_fingerprint(big)
    read = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, n):
            self.f.seek(n)

        def read(self, n=-1):
            b = self.f.read(n)
            read.append(len(b))
            return b

    monkeypatch.setattr(pbin_fingerprint, "open", lambda p, m: Counting(real_open(p, m)), raising=False)
    assert fingerprint.file_fingerprint(big) == base
    assert sum(read) <= 12 + 2 * fingerprint.SAMPLE_BLOCKS * fingerprint.BLOCK < big.stat().st_size
    monkeypatch.undo()
    data_len = int.from_bytes(big.read_bytes()[:8], "little")
    with open(big, "r+b") as f:  # the last token is always in a sampled block
        f.seek(12 + data_len - 2)
        last = f.read(2)
        f.seek(12 + data_len - 2)
        f.write(b"\x3f\x00" if last != b"\x3f\x00" else b"\x00\x00")
    assert fingerprint.differences({"k": [base]}, {"k": [fingerprint.file_fingerprint(big)]}) == \
        [f"k[0] {big}: the token bytes differ (same size)"]


@pytest.mark.slow
def test_trainer_refuses_resume_auto_on_overwritten_data(tmp_path):
    """The issue's repro through the real trainer: same size, other token bytes, resume=auto."""
    from test_resume import run_trainer, trainer_args

    data = _pbin(tmp_path / "train.pbin", 0, n=40_000, docs=(20_000, 20_000))
    run_trainer(trainer_args(tmp_path, "run", data, "--training.max_steps=2", "--checkpoint.save_at_end=true"))
    _overwrite_tokens(data, seed=5)
    r = run_trainer(trainer_args(tmp_path, "run", data, "--training.max_steps=4", "--checkpoint.resume=auto"),
                    expect=2)  # a refused resume: the run did not start
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("perfkit train: rank ")]  # error lines; the log shares stderr
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"$.data.train[0] {data}: the token bytes differ (same size)" in errors[0]
    r = run_trainer(trainer_args(tmp_path, "run", data, "--training.max_steps=4", "--checkpoint.resume=auto",
                                 "--checkpoint.allow_data_change=true"))
    assert "resuming on changed data" in r.stderr
