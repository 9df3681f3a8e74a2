"""Settings changed on resume: every optimizer and scheduler key (and the schedule's length, and
grad_clip) is applied from the resumed step and named in one line; no_decay and the data-order
keys are refused naming the key. The numbers compared are the restored optimizer's param_group
values and the lr of the next two steps against lr_at() of the new config."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint import TINY, TinyNet  # noqa: E402

from perfkit.checkpoint import Checkpointer, CheckpointError  # noqa: E402
from perfkit.config import CheckpointConfig, config_to_dict, load_config  # noqa: E402
from perfkit.train import resume_settings  # noqa: E402
from perfkit.train.optimizer import build_optimizer  # noqa: E402
from perfkit.train.schedules import build_scheduler, lr_at, peak_lr  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAVED_AT = 6

SCHEDULES = {
    "constant": '--scheduler={kind = "constant", warmup_steps = 2}',
    "cosine": '--scheduler={kind = "cosine", warmup_steps = 2, min_lr_ratio = 0.1}',
    "wsd": '--scheduler={kind = "wsd", warmup_steps = 2, decay_fraction = 0.5, decay_shape = "linear", '
           'min_lr_ratio = 0.0}',
    "onecycle": '--scheduler={kind = "onecycle", max_lr = 2e-3, div_factor = 10.0, final_div_factor = 100.0, '
                'pct_start = 0.3, anneal_strategy = "cos"}',
}

# (old schedule, changed key=value): every key of every schedule, and every optimizer setting
CASES = [
    ("cosine", "optimizer.lr=1e-5"), ("cosine", "optimizer.betas=[0.8, 0.99]"),
    ("cosine", "optimizer.eps=1e-6"), ("cosine", "optimizer.weight_decay=0.01"),
    ("cosine", "optimizer.fused=true"),
    ("constant", "scheduler.warmup_steps=8"),
    ("cosine", "scheduler.warmup_steps=0"), ("cosine", "scheduler.min_lr_ratio=0.5"),
    ("wsd", "scheduler.warmup_steps=10"), ("wsd", "scheduler.decay_fraction=0.9"),
    ("wsd", "scheduler.decay_shape=sqrt"), ("wsd", "scheduler.min_lr_ratio=0.2"),
    ("onecycle", "scheduler.max_lr=5e-3"), ("onecycle", "scheduler.div_factor=4.0"),
    ("onecycle", "scheduler.final_div_factor=3.0"), ("onecycle", "scheduler.pct_start=0.8"),
    ("onecycle", "scheduler.anneal_strategy=linear"), ("onecycle", "optimizer.lr=1e-5"),
    ("cosine", 'scheduler={kind = "wsd", decay_fraction = 0.4}'),
    ("cosine", "training.max_steps=40"), ("wsd", "training.max_steps=12"),
    ("cosine", "training.grad_clip=0.25"),
]


def _cfg(schedule: str, *extra: str):
    cfg = load_config(REPO / "configs" / "cpu_debug.toml",
                      ["--training.max_steps=20", "--optimizer.lr=1e-3", SCHEDULES[schedule], *extra])
    resolved = config_to_dict(cfg)
    resolved["derived"] = {"max_steps": cfg.training.max_steps}
    return cfg, resolved


def _parts(run_dir, cfg, resolved, log=None, **ckpt):
    torch.manual_seed(0)
    model = TinyNet()
    opt = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    sched = build_scheduler(cfg.scheduler, cfg.optimizer, opt, cfg.training.max_steps)
    progress = SimpleNamespace(step=0)
    check = None if log is None else (lambda saved: resume_settings.check(saved, resolved, log))
    ck = Checkpointer(CheckpointConfig(**ckpt), run_dir, model=model, optimizer=opt, scheduler=sched,
                      progress=progress, model_config=TINY, config=resolved, settings_check=check)
    return SimpleNamespace(model=model, opt=opt, sched=sched, progress=progress, ckpt=ck)


def _step(p):
    p.model(torch.randint(0, 64, (2, 8))).float().mean().backward()
    p.opt.step()
    p.opt.zero_grad()
    p.sched.step()
    p.progress.step += 1


@pytest.mark.parametrize("schedule,change", CASES, ids=[f"{s}-{c.split('=')[0]}" for s, c in CASES])
def test_changed_setting_is_applied_from_the_resumed_step(tmp_path, schedule, change):
    old_cfg, old_resolved = _cfg(schedule)
    old = _parts(tmp_path, old_cfg, old_resolved)
    for _ in range(SAVED_AT):
        _step(old)
    old.ckpt.save(SAVED_AT)

    cfg, resolved = _cfg(schedule, f"--{change}")
    lines = []
    new = _parts(tmp_path, cfg, resolved, log=lines.append, resume="auto")
    assert new.ckpt.restore() is not None and new.progress.step == SAVED_AT
    resume_settings.apply(new.opt, new.sched, cfg)

    key = change.split("=")[0]
    assert len(lines) == 1 and f"$.{key}" in lines[0] and "->" in lines[0], lines
    total, peak = cfg.training.max_steps, peak_lr(cfg.scheduler, cfg.optimizer)
    o = cfg.optimizer
    for g in new.opt.param_groups:
        assert g["betas"] == tuple(o.betas) and g["eps"] == o.eps
        assert g["weight_decay"] == (o.weight_decay if g["name"] == "decay" else 0.0)
        assert g["foreach"] is (None if o.fused else True) and g["fused"] is (True if o.fused else None)
    for step in range(SAVED_AT, total):  # the lr of every remaining update
        want = lr_at(cfg.scheduler, peak, step, total)
        assert all(math.isclose(g["lr"], want, rel_tol=1e-12) for g in new.opt.param_groups), (step, want)
        assert math.isclose(new.sched.get_last_lr()[0], want, rel_tol=1e-12)
        _step(new)
    # the old settings would have given other numbers: the test sees the change
    name = {"optimizer.betas": "betas", "optimizer.eps": "eps", "optimizer.weight_decay": "weight_decay",
            "optimizer.fused": "foreach"}.get(key)
    if name is not None:
        assert old.opt.param_groups[0][name] != new.opt.param_groups[0][name]
    elif key != "training.grad_clip" and not (schedule == "onecycle" and key == "optimizer.lr"):
        old_peak = peak_lr(old_cfg.scheduler, old_cfg.optimizer)
        assert any(lr_at(old_cfg.scheduler, old_peak, s, old_cfg.training.max_steps) != lr_at(cfg.scheduler, peak, s, total)
                   for s in range(SAVED_AT, total))


def test_unchanged_settings_log_nothing_and_change_nothing(tmp_path):
    cfg, resolved = _cfg("cosine")
    old = _parts(tmp_path, cfg, resolved)
    for _ in range(SAVED_AT):
        _step(old)
    old.ckpt.save(SAVED_AT)
    want = [dict((k, v) for k, v in g.items() if k != "params") for g in old.opt.param_groups]
    lines = []
    new = _parts(tmp_path, cfg, resolved, log=lines.append, resume="auto")
    new.ckpt.restore()
    resume_settings.apply(new.opt, new.sched, cfg)
    assert lines == []
    assert [dict((k, v) for k, v in g.items() if k != "params") for g in new.opt.param_groups] == want


@pytest.mark.parametrize("change", ['optimizer.no_decay=["embedding"]', "data.seed=7", "data.shuffle=false",
                                    "data.reuse_last_target=false"])
def test_settings_that_cannot_change_are_refused_naming_the_key(tmp_path, change):
    cfg, resolved = _cfg("cosine")
    old = _parts(tmp_path, cfg, resolved)
    _step(old)
    old.ckpt.save(1)
    cfg, resolved = _cfg("cosine", f"--{change}")
    with pytest.raises(CheckpointError, match=rf"cannot change on resume: \$\.{change.split('=')[0]}: checkpoint"):
        _parts(tmp_path, cfg, resolved, log=print, resume="auto").ckpt.restore()


def test_train_weights_change_is_refused():
    saved = {"data": {"train_weights": [1.0, 1.0]}}
    assert resume_settings.changes(saved, {"data": {"train_weights": [1.0, 3.0]}})[1] == \
        ["$.data.train_weights: checkpoint [1.0, 1.0], config [1.0, 3.0]"]


@pytest.mark.slow
def test_trainer_resume_with_a_new_lr_trains_at_it_and_records_it(tmp_path):
    """The issue's repro: --optimizer.lr=1e-5 on a resume used to train on at the old 3e-3."""
    import json

    import numpy as np
    from test_resume import STEPS, logged, run_trainer, trainer_args

    from perfkit.formats.pbin import write_pbin

    data = tmp_path / "train.pbin"
    write_pbin(data, np.random.default_rng(0).integers(0, 500, 40_000), np.array([20_000, 20_000]), 2)
    half = STEPS // 2
    run_trainer(trainer_args(tmp_path, "run", data, f"--training.max_steps={half}", "--checkpoint.save_at_end=true"))
    r = run_trainer(trainer_args(tmp_path, "run", data, "--checkpoint.resume=auto", "--optimizer.lr=1e-5",
                                 "--checkpoint.save_at_end=true"))
    assert "settings changed on resume, applied from the resumed step: $.optimizer.lr: 0.003 -> 1e-05" in r.stderr
    cfg = load_config(REPO / "configs" / "cpu_debug.toml", [f"--training.max_steps={STEPS}"])
    lrs = logged(tmp_path / "run", "lr")
    for step in range(half + 1, STEPS + 1):  # metrics step s is the update after s - 1 completed steps
        assert math.isclose(lrs[step], lr_at(cfg.scheduler, 1e-5, step - 1, STEPS), rel_tol=1e-6), (step, lrs)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optimizer"]["lr"] == 1e-5
    newest = tmp_path / "run" / "checkpoints" / f"step_{STEPS:08d}" / "config.json"
    assert json.loads(newest.read_text())["optimizer"]["lr"] == 1e-5
