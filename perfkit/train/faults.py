"""Numerical faults: what happens when the loss or the gradient norm is NaN or infinite.

    guard = NonFiniteGuard(cfg.training.on_nonfinite)          # "stop" (default) or "skip"
    ...  loss.backward(); grad_norm = clip_grad_norm_(...)
    guard.observe(progress.step + 1, loss, grad_norm, optimizer)   # before optimizer.step()
    optimizer.step()   # fused AdamW: skipped on the device when the flag is set
    ...
    if logging_step:   # where the trainer already synchronizes to print the loss
        guard.poll(progress)   # raises NonFiniteError(step) in "stop" mode; sets progress.nonfinite_skips

Nothing here synchronizes the host with the device per step. The check is a device-side flag:
`observe` turns (loss, grad_norm) into a 0/1 tensor without reading it (all-reduced with MAX on
the device when distributed, since each rank's loss is its own and all must decide alike), and
- "skip": the update is dropped on the device. Fused Adam/AdamW take a `found_inf` tensor (the
  GradScaler mechanism): when it is 1 the kernel leaves weights, moments and step count untouched.
  Other optimizers have no such hook, so for them `observe` reads the flag (one sync per step,
  in skip mode only) and returns False to tell the trainer not to call optimizer.step().
- "stop": the first bad step is recorded on the device and reported at the next `poll` (the
  logging step, or a checkpoint save, which polls before writing so that poisoned weights are
  never saved). With a fused optimizer the bad update itself is also dropped.
Skipped steps still count as steps: the data and the schedule move on, so a run that skips is
the same run on every rank and after a resume.
"""

from __future__ import annotations

from typing import Any

import torch

from perfkit import ranks


class NonFiniteError(RuntimeError):
    def __init__(self, step: int, what: str = "loss or gradient norm"):
        super().__init__(f"non-finite {what} at step {step}; stopping "
                         "(set training.on_nonfinite=\"skip\" to skip such steps instead)")
        self.step = step


class NonFiniteGuard:
    def __init__(self, policy: str = "stop"):
        if policy not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self._first_bad: torch.Tensor | None = None   # step number of the first bad step, -1: none
        self._skips: torch.Tensor | None = None       # bad steps seen since the last poll
        self._skips_before = 0                        # counted into progress at earlier polls

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None,
                optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Record whether this step's loss/grad norm are finite. Returns whether to call
        optimizer.step() (False only in skip mode with an optimizer that cannot skip on device)."""
        ok = torch.isfinite(_local(loss).detach().float()).all()
        if grad_norm is not None:
            ok = ok & torch.isfinite(_local(grad_norm).detach().float()).all()
        bad = (~ok).to(torch.int64)
        if ranks.world_size() > 1:
            # the per-rank loss can differ; every rank must take the same decision (a device
            # all-reduce: queued like any other kernel, the host does not wait for it)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if self._first_bad is None or self._first_bad.device != bad.device:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=bad.device)
            self._skips = torch.zeros((), dtype=torch.int64, device=bad.device)
        self._skips += bad
        here = torch.full((), step, dtype=torch.int64, device=bad.device)
        self._first_bad = torch.where((bad > 0) & (self._first_bad < 0), here, self._first_bad)
        if optimizer is not None and _fused(optimizer):
            # the GradScaler hook of fused Adam/AdamW: a nonzero found_inf skips the whole update
            optimizer.found_inf = bad.to(torch.float32)  # shape (), like GradScaler's
            optimizer.grad_scale = None
            return True
        if self.policy == "skip":
            return not bool(bad.item())  # documented sync: only for non-fused optimizers in skip mode
        return True

    def poll(self, progress: Any = None) -> int:
        """Read the device flags (the caller's sync point). Stop mode: raise NonFiniteError with the
        first bad step. Skip mode: set progress.nonfinite_skips and return the total skips."""
        if self._first_bad is None:
            return self._skips_before
        first_bad, skips = torch.stack([self._first_bad, self._skips]).tolist()
        if self.policy == "stop" and first_bad >= 0:
            raise NonFiniteError(first_bad)
        self._skips_before += skips
        self._skips.zero_()
        if progress is not None:
            progress.nonfinite_skips = getattr(progress, "nonfinite_skips", 0) + skips
        return self._skips_before


def _fused(optimizer: torch.optim.Optimizer) -> bool:
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and bool(optimizer.defaults.get("fused"))


def _local(t: torch.Tensor) -> torch.Tensor:
    # a DTensor grad norm (FSDP2 clip_grad_norm_) may be a partial sum per rank: take the full value
    return t.full_tensor() if hasattr(t, "full_tensor") else t
