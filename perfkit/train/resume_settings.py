"""Settings that differ between a checkpoint's run and the run that resumes it.

The restored optimizer and scheduler state carry the old lr, betas, eps and weight decay; left
alone they would win over the config while config.json records the new values. Instead:

- what can change is applied from the resumed step (`apply`): every key of $.optimizer but
  no_decay, every key of $.scheduler (the kind included), every key of $.training; one line
  names each change. The lr of the next step is the current schedule's value at the resumed
  step, with the current peak lr and the current total number of steps.
- what cannot change is refused naming the key (`check`): $.optimizer.no_decay (the optimizer
  state belongs to the parameter groups it made) and the data order keys $.data.seed, shuffle,
  reuse_last_target and train_weights (the loader's position means nothing in another order).
  The model's keys are checked by the Checkpointer, the data files by their fingerprints.

So config.json, written after the resume, records what actually runs.
"""

from __future__ import annotations

from typing import Any

import torch

from perfkit.config import Config
from perfkit.train.schedules import peak_lr

CHANGEABLE_SECTIONS = ("optimizer", "scheduler", "training")
FIXED_KEYS = (("optimizer", "no_decay"), ("data", "seed"), ("data", "shuffle"),
              ("data", "reuse_last_target"), ("data", "train_weights"))


def _differs(saved: dict, current: dict, section: str, key: str) -> bool:
    a, b = saved.get(section, {}), current.get(section, {})
    return key in a and key in b and _norm(a[key]) != _norm(b[key])


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v  # betas: a tuple in the Struct, a list in JSON


def changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(changed, refused): "$.section.key: old -> new" for each key that differs."""
    refused = [f"$.{s}.{k}: checkpoint {saved[s][k]!r}, config {current[s][k]!r}"
               for s, k in FIXED_KEYS if _differs(saved, current, s, k)]
    fixed = set(FIXED_KEYS)
    changed = []
    for s in CHANGEABLE_SECTIONS:
        old, new = saved.get(s, {}), current.get(s, {})
        if s == "scheduler" and old.get("kind") != new.get("kind"):  # another Struct: name it whole
            changed.append(f"$.scheduler: {_short(old)} -> {_short(new)}")
            continue
        changed += [f"$.{s}.{k}: {_norm(old[k])!r} -> {_norm(new[k])!r}" for k in sorted(set(old) & set(new))
                    if (s, k) not in fixed and _norm(old[k]) != _norm(new[k])]
    if _differs(saved, current, "derived", "max_steps"):  # e.g. target_tokens or the data changed
        changed.append(f"schedule length (derived max_steps): {saved['derived']['max_steps']} -> "
                       f"{current['derived']['max_steps']}")
    return changed, refused


def _short(section: dict) -> str:
    return "{" + ", ".join(f"{k} = {_norm(v)!r}" for k, v in section.items()) + "}"


def check(saved_config: dict, current_config: dict, log) -> None:
    """Refuse a resume whose config changes a key that cannot change (ValueError naming the keys);
    otherwise `log` one line of what changes. Both are resolved configs: the checkpoint's
    config.json and this run's (with "derived")."""
    changed, refused = changes(saved_config, current_config)
    if refused:
        raise ValueError("these settings cannot change on resume: " + "; ".join(refused)
                         + " (restore them, or start a new run with checkpoint.warm_start)")
    if changed:
        log("checkpoint: settings changed on resume, applied from the resumed step: " + "; ".join(changed))


def apply(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: Config) -> None:
    """Write the configured optimizer settings and the schedule's lr at the resumed step into the
    restored optimizer and scheduler (in place; a no-op when nothing changed)."""
    opt, peak = cfg.optimizer, peak_lr(cfg.scheduler, cfg.optimizer)
    for group in optimizer.param_groups:
        # as build_optimizer decides it: a checkpoint of a CUDA run may resume on the CPU
        fused = opt.fused if opt.fused is not None else group["params"][0].device.type == "cuda"
        group["fused"], group["foreach"] = fused or None, None if fused else True
        group["betas"] = tuple(opt.betas)
        group["eps"] = opt.eps
        # optimizer.param_groups names the groups; the no_decay group keeps 0
        group["weight_decay"] = opt.weight_decay if group.get("name", "decay") == "decay" else 0.0
        group["initial_lr"] = peak
    if scheduler is None:
        return
    scheduler.base_lrs = [peak] * len(optimizer.param_groups)
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports until the next step
