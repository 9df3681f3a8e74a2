"""Checkpointer on one process with a tiny model: exact round trip, commit protocol, bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import torch

from perfkit.checkpoint import Checkpointer, CheckpointError, latest_checkpoint, layout
from perfkit.config import CheckpointConfig, ModelConfig

TINY = ModelConfig(vocab_size=64, sequence_length=8, n_layer=2, n_embd=16, n_head_q=2, n_head_kv=2,
                   ffn_hidden=32, kernels="torch")


class TinyNet(torch.nn.Module):
    """Stands in for GPT: an embedding, `blocks`, a head; dropout so that RNG state matters."""

    def __init__(self, width=16, n_layer=2):
        super().__init__()
        self.emb = torch.nn.Embedding(64, width)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(n_layer))
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(width, 64)

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = x + torch.relu(b(self.drop(x)))
        return self.head(x)


class CountingLoader:
    """Yields random batches from its own generator; its state is the number of batches drawn."""

    def __init__(self):
        self.drawn = 0

    def next(self):
        g = torch.Generator().manual_seed(1000 + self.drawn)
        self.drawn += 1
        return torch.randint(0, 64, (4, 9), generator=g)

    def state_dict(self):
        return {"drawn": self.drawn}

    def load_state_dict(self, sd):
        self.drawn = sd["drawn"]


class Run:
    """The pieces a trainer holds, wired to a Checkpointer."""

    def __init__(self, run_dir, width=16, model_config=TINY, **ckpt):
        torch.manual_seed(0)
        self.model = TinyNet(width)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / 4))
        self.loader = CountingLoader()
        self.progress = SimpleNamespace(step=0, tokens_seen=0, nonfinite_skips=0)
        cfg = CheckpointConfig(**ckpt)
        self.ckpt = Checkpointer(cfg, run_dir, model=self.model, optimizer=self.opt, scheduler=self.sched,
                                 loader=self.loader, progress=self.progress, model_config=model_config,
                                 config={"model": msgspec.to_builtins(model_config)})

    def step(self):
        batch = self.loader.next()
        logits = self.model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.progress.step += 1
        self.progress.tokens_seen += batch[:, :-1].numel()
        return loss.item()

    def train(self, n):
        losses = []
        for _ in range(n):
            losses.append(self.step())
            self.ckpt.maybe_save(self.progress.step)
        return losses


def test_resume_is_bit_identical(tmp_path):
    straight = Run(tmp_path / "a").train(6)
    first = Run(tmp_path / "b", every_steps=3)
    first.train(3)
    probe = (random.random(), float(np.random.rand()))   # RNG draws made after the save
    resumed = Run(tmp_path / "b", resume="auto")
    assert resumed.ckpt.restore() == tmp_path / "b" / "checkpoints" / "step_00000003"
    assert (random.random(), float(np.random.rand())) == probe
    assert vars(resumed.progress) == {"step": 3, "tokens_seen": 3 * 32, "nonfinite_skips": 0}
    assert resumed.loader.drawn == 3 and resumed.sched.last_epoch == 3
    assert straight[3:] == resumed.train(3)  # exact float equality, not approx


def test_layout_manifest_and_keep_last(tmp_path):
    run = Run(tmp_path, every_steps=1, keep_last=2)
    run.train(4)
    done = layout.complete_checkpoints(tmp_path)
    assert [p.name for p in done] == ["step_00000003", "step_00000004"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000003", "step_00000004"]
    files = json.loads((done[-1] / "manifest.json").read_text())["files"]
    assert {"train_state.pt", "rng_rank00000.pt", "model_config.json", "config.json", ".metadata"} <= set(files)
    assert run.ckpt.maybe_save(4, final=True) is None   # step 4 is saved already


def test_interrupted_saves_never_count(tmp_path):
    run = Run(tmp_path, every_steps=2)
    run.train(2)
    good = latest_checkpoint(tmp_path)
    # a killed save of step 4 at three moments: mid-write, manifest without marker, marker that lies
    shutil.copytree(good, tmp_path / "checkpoints" / "step_00000004.partial")
    bad = tmp_path / "checkpoints" / "step_00000006"
    shutil.copytree(good, bad)
    (bad / "COMPLETE").unlink()
    lying = tmp_path / "checkpoints" / "step_00000008"
    shutil.copytree(good, lying)
    (lying / "COMPLETE").write_text(json.dumps({"manifest_sha256": "0" * 64}))
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(CheckpointError, match="incomplete"):
        layout.resolve_checkpoint(bad)
    resumed = Run(tmp_path, resume="auto", every_steps=2)
    assert resumed.ckpt.restore() == good
    resumed.train(2)  # saving step 4 again replaces the stale partial folder
    assert latest_checkpoint(tmp_path).name == "step_00000004"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_is_a_clear_error(tmp_path, damage):
    run = Run(tmp_path, every_steps=1)
    run.train(1)
    ckpt = latest_checkpoint(tmp_path)
    shard = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(data[:-10])
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(data)
    else:
        shard.unlink()
    before = [p.detach().clone() for p in Run(tmp_path / "x").model.parameters()]
    fresh = Run(tmp_path, resume=str(ckpt))
    with pytest.raises(CheckpointError, match=shard.name):
        fresh.ckpt.restore()
    # nothing was loaded: a failed restore must not leave a half-loaded model behind
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.model.parameters()))
    assert fresh.progress.step == 0


def test_other_model_config_names_the_keys(tmp_path):
    Run(tmp_path, every_steps=1).train(1)
    other = msgspec.structs.replace(TINY, n_layer=3, n_embd=32, kernels="triton")
    with pytest.raises(CheckpointError, match=r"n_embd: checkpoint 16, config 32; n_layer: checkpoint 2") as e:
        Run(tmp_path, model_config=other, resume="auto").ckpt.restore()
    assert "kernels" not in str(e.value)  # a runtime-only field is not a mismatch


def test_shape_mismatch_without_config_difference(tmp_path):
    Run(tmp_path, every_steps=1).train(1)
    with pytest.raises(CheckpointError, match=r"emb.weight: checkpoint shape \(64, 16\), model shape \(64, 24\)"):
        Run(tmp_path, width=24, resume="auto").ckpt.restore()


def test_explicit_path_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Run(tmp_path, resume=str(tmp_path / "nope")).ckpt.restore()
    with pytest.raises(CheckpointError, match="neither a complete checkpoint nor a run folder"):
        Run(tmp_path, resume=str(tmp_path)).ckpt.restore()
    assert Run(tmp_path, resume="auto").ckpt.restore() is None  # auto with nothing saved: fresh
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="warm_start"):
        Run(tmp_path, resume=str(tmp_path / "model.pt")).ckpt.restore()


def test_warm_start_loads_weights_only(tmp_path):
    src = Run(tmp_path / "src", every_steps=4)
    src.train(4)
    warm = Run(tmp_path / "dst", warm_start=str(tmp_path / "src"))
    warm.ckpt.restore()
    for a, b in zip(src.model.parameters(), warm.model.parameters()):
        assert torch.equal(a, b)
    assert warm.progress.step == 0 and warm.loader.drawn == 0 and warm.sched.last_epoch == 0
    assert warm.opt.state == {} or all(not s for s in warm.opt.state.values())


def test_auto_finds_the_same_config_in_a_new_run_folder(tmp_path):
    """A requeued job without a pinned experiment id gets a new `<time>_<hash>` folder."""
    first = tmp_path / "2026-01-01__00-00-00_abcdef12"
    Run(first, every_steps=2).train(2)
    Run(tmp_path / "2026-01-01__00-00-00_99999999", every_steps=1).train(1)  # another config
    again = Run(tmp_path / "2026-01-02__00-00-00_abcdef12", resume="auto", every_steps=2)
    assert again.ckpt.restore() == first / "checkpoints" / "step_00000002"
    again.train(2)  # saves go to the new folder
    assert latest_checkpoint(tmp_path / "2026-01-02__00-00-00_abcdef12").name == "step_00000004"
    assert Run(tmp_path / "pinned-name", resume="auto").ckpt.restore() is None


def test_prune_removes_leftovers_of_killed_saves(tmp_path):
    run = Run(tmp_path, every_steps=2)
    run.train(2)
    root = tmp_path / "checkpoints"
    for name in ("step_00000002.partial", "step_00000001.deleting", "step_00000009.partial"):
        (root / name).mkdir()
    run.train(2)
    assert sorted(os.listdir(root)) == ["step_00000002", "step_00000004", "step_00000009.partial"]
