"""Learning-rate schedules as pure functions of the optimizer step, wrapped in torch's LambdaLR.

`lr_at(cfg, peak_lr, step, total_steps)` is the whole formula; the LambdaLR wrapper only applies it,
so the scheduler's state is one integer (`last_epoch`, the number of steps taken) and checkpoints
restore it with the standard `state_dict()` / `load_state_dict()`.

Step numbering: `step` counts optimizer steps already taken, so the first update uses lr_at(0)
and the last of `total_steps` updates uses lr_at(total_steps - 1).
"""

from __future__ import annotations

import math

import torch

from perfkit.config import (ConstantSchedule, CosineSchedule, OneCycleSchedule, OptimizerConfig,
                            SchedulerConfig, WSDSchedule)


def peak_lr(sched: SchedulerConfig, opt: OptimizerConfig) -> float:
    """The largest learning rate of the run: onecycle's max_lr, otherwise $.optimizer.lr."""
    return sched.max_lr if isinstance(sched, OneCycleSchedule) else opt.lr


def _warmup(step: int, warmup_steps: int) -> float:
    # (step + 1) / warmup: the first update already moves the weights; the peak is reached at
    # step warmup_steps - 1.
    return (step + 1) / warmup_steps


def _cosine(pct: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * pct))


def _onecycle(s: OneCycleSchedule, step: int, total: int) -> float:
    """torch.optim.lr_scheduler.OneCycleLR (two phases), the seed's scheduler, value for value."""
    initial = s.max_lr / s.div_factor
    final = initial / s.final_div_factor
    # (end step, start lr, end lr) per phase, as torch defines them (float end of phase 1).
    phases = ((float(s.pct_start * total) - 1, initial, s.max_lr),
              (total - 1, s.max_lr, final))
    start_step = 0.0
    for i, (end_step, lr_start, lr_end) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            # torch divides by zero when phase 1 is a single step (pct_start * total == 1);
            # that phase is then complete at its only step.
            pct = (step - start_step) / (end_step - start_step) if end_step != start_step else 1.0
            if s.anneal_strategy == "cos":
                return lr_end + (lr_start - lr_end) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (lr_end - lr_start) * pct + lr_start
        start_step = end_step
    raise AssertionError("unreachable")


def lr_at(sched: SchedulerConfig, peak: float, step: int, total_steps: int) -> float:
    """Learning rate for the update after `step` completed steps of `total_steps`."""
    step = min(max(step, 0), max(total_steps - 1, 0))  # past the end: hold the last value
    if isinstance(sched, OneCycleSchedule):
        return _onecycle(sched, step, max(total_steps, 2))
    w = sched.warmup_steps
    if step < w:
        return peak * _warmup(step, w)
    if isinstance(sched, ConstantSchedule):
        return peak
    if isinstance(sched, CosineSchedule):
        # Cosine from peak (first step after warm-up) to min_lr_ratio * peak (last step).
        pct = (step - w) / max(1, total_steps - 1 - w)
        return peak * (sched.min_lr_ratio + (1 - sched.min_lr_ratio) * _cosine(pct))
    if isinstance(sched, WSDSchedule):
        decay_steps = max(1, round(sched.decay_fraction * total_steps)) if sched.decay_fraction > 0 else 0
        decay_start = total_steps - decay_steps
        if step < decay_start or decay_steps == 0:
            return peak
        pct = (step - decay_start) / decay_steps  # 0 at the first decay step, (d-1)/d at the last
        shape = {"linear": 1.0 - pct, "cosine": _cosine(pct), "sqrt": 1.0 - math.sqrt(pct)}[sched.decay_shape]
        return peak * (sched.min_lr_ratio + (1 - sched.min_lr_ratio) * shape)
    raise TypeError(f"unknown schedule {type(sched).__name__}")


def build_scheduler(sched: SchedulerConfig, opt_cfg: OptimizerConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR whose factor is lr_at(...) / peak; every param group gets the same lr."""
    peak = peak_lr(sched, opt_cfg)
    for group in optimizer.param_groups:
        group["lr"] = peak
        group.pop("initial_lr", None)

    def factor(step: int) -> float:  # a plain function: LambdaLR does not put it in state_dict
        return lr_at(sched, peak, step, total_steps) / peak

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
