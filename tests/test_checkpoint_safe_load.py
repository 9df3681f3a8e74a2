"""A checkpoint folder never runs code: a crafted DCP `.metadata` (with its manifest and COMPLETE
marker recomputed, as an attacker would) is refused by export, generate, resume and warm start,
and no code runs; a pickled non-tensor shard entry is read weights-only; genuine ones load."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from types import SimpleNamespace

import pytest
import torch

from perfkit.checkpoint import Checkpointer, CheckpointError, layout
from perfkit.checkpoint.export import export_checkpoint, load_model
from perfkit.checkpoint.safe_metadata import SafeLoadPlanner, load_metadata
from perfkit.cli import main as cli
from perfkit.config import CheckpointConfig, ModelConfig
from perfkit.model import GPT

CFG = ModelConfig(vocab_size=96, sequence_length=16, n_layer=1, n_embd=32, n_head_q=4, n_head_kv=2,
                  ffn_hidden=64, kernels="torch")


class _Payload:
    """Unpickling this runs os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _parts(seed=0):
    torch.manual_seed(seed)
    model = GPT(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 96, (2, 16))).float().mean().backward()
    opt.step()
    return model, opt, SimpleNamespace(step=1)


def _checkpoint(run_dir, **cfg):
    model, opt, progress = _parts()
    ckpt = Checkpointer(CheckpointConfig(**cfg), run_dir, model=model, optimizer=opt, progress=progress,
                        model_config=CFG)
    return model, ckpt


def _recommit(folder, name):
    """Recompute the manifest entry of `name` and the COMPLETE marker (the attacker's move)."""
    manifest = json.loads((folder / layout.MANIFEST).read_text())
    manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "crc32": layout.file_crc32(folder / name)}
    (folder / layout.MANIFEST).write_text(json.dumps(manifest))
    sha = hashlib.sha256((folder / layout.MANIFEST).read_bytes()).hexdigest()
    (folder / layout.MARKER).write_text(json.dumps({"manifest_sha256": sha}))
    assert layout.is_complete(folder) and not layout.verify(folder)


@pytest.fixture
def crafted(tmp_path):
    """A run folder whose checkpoint's .metadata carries the payload inside genuine metadata."""
    _, ckpt = _checkpoint(tmp_path / "run")
    folder = ckpt.save(1)
    meta = pickle.loads((folder / ".metadata").read_bytes())  # our own file: trusted here
    marker = tmp_path / "pwned"
    meta.planner_data = _Payload(marker)
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    _recommit(folder, ".metadata")
    # the file is a working exploit for a plain unpickler: prove it on a copy, then reset
    pickle.loads((folder / ".metadata").read_bytes())
    assert marker.exists()
    marker.unlink()
    return SimpleNamespace(run=tmp_path / "run", folder=folder, marker=marker, tmp=tmp_path)


def test_crafted_metadata_is_refused_by_export(crafted, capsys):
    with pytest.raises(CheckpointError, match=r"\.metadata is refused: global posix\.system"):
        export_checkpoint(crafted.run, crafted.tmp / "out.pt")
    assert cli(["export", str(crafted.run), "-o", str(crafted.tmp / "out.pt")]) == 1
    err = capsys.readouterr().err
    assert "is refused" in err and "Traceback" not in err
    assert not crafted.marker.exists() and not (crafted.tmp / "out.pt").exists()


def test_crafted_metadata_is_refused_by_generate(crafted, capsys):
    with pytest.raises(CheckpointError, match="is refused"):
        load_model(crafted.folder)
    assert cli(["generate", str(crafted.run), "--prompt", "hi", "--device", "cpu"]) == 1
    assert "is refused" in capsys.readouterr().err
    assert not crafted.marker.exists()


@pytest.mark.parametrize("how", ["resume_auto", "resume_path", "warm_start"])
def test_crafted_metadata_is_refused_by_resume_and_warm_start(crafted, how):
    cfg = {"resume_auto": {"resume": "auto"}, "resume_path": {"resume": str(crafted.folder)},
           "warm_start": {"warm_start": str(crafted.folder)}}[how]
    run_dir = crafted.run if how == "resume_auto" else crafted.tmp / "other"
    _, ckpt = _checkpoint(run_dir, **cfg)
    with pytest.raises(CheckpointError, match="is refused"):
        ckpt.restore()
    assert not crafted.marker.exists()


def test_genuine_checkpoint_loads_through_the_safe_reader(tmp_path):
    model, ckpt = _checkpoint(tmp_path / "run")
    folder = ckpt.save(1)
    assert load_metadata(folder / ".metadata").state_dict_metadata  # a real index, read safely
    fresh, opt, progress = _parts(seed=1)  # other weights until the resume loads them
    want = {k: v.clone() for k, v in model.state_dict().items()}
    want_opt = {k: v.clone() for k, v in ckpt.optimizer.state_dict()["state"][0].items()}
    r = Checkpointer(CheckpointConfig(resume="auto"), tmp_path / "run", model=fresh, optimizer=opt,
                     progress=progress, model_config=CFG)
    assert r.restore() == folder
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert all(torch.equal(v, want_opt[k]) for k, v in opt.state_dict()["state"][0].items())
    exported, _ = load_model(folder)  # generate's path
    assert exported.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in exported.state_dict().items())


def test_pickled_shard_entry_is_read_weights_only(tmp_path):
    """DCP's own planner reads non-tensor entries with torch.load(weights_only=False)."""
    marker = tmp_path / "pwned"
    planner = SafeLoadPlanner()
    item = SimpleNamespace(dest_index=SimpleNamespace(fqn="optim.param_groups"))
    evil = io.BytesIO()
    torch.save({"lr": _Payload(marker)}, evil)
    evil.seek(0)
    with pytest.raises(CheckpointError, match="optim.param_groups.*refused"):
        planner.load_bytes(item, evil)
    assert not marker.exists()
    # a genuine entry arrives unchanged
    good = io.BytesIO()
    torch.save([{"lr": 0.5, "betas": (0.9, 0.95), "name": "decay"}], good)
    good.seek(0)
    planner.flatten_state_dict, planner.state_dict = False, {}
    planner.load_bytes(item, good)
    assert planner.state_dict["optim.param_groups"] == [{"lr": 0.5, "betas": (0.9, 0.95), "name": "decay"}]
