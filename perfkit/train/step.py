"""One optimizer step: gradient accumulation over micro-batches, global-norm clipping, update.

No host-device synchronization happens here: the loss and the gradient norm are returned as device
tensors and read (`.item()`) by the loop only on logging steps. The non-finite check is a
device-side flag as well (perfkit.train.faults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from perfkit.train.parallelize import set_gradient_sync


@dataclass
class StepResult:
    loss: torch.Tensor        # () fp32 on device: mean loss of this rank's micro-batches
    grad_norm: torch.Tensor   # () fp32 on device: global L2 norm over all shards, before clipping


def grad_norm_and_clip(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global L2 gradient norm across all shards; scales gradients to max_norm if above (0: no clip).

    With FSDP2 each gradient is a DTensor shard: the norm of the shards is a partial value that
    full_tensor() all-reduces, so every rank gets the norm of the whole model's gradient.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    if max_norm > 0:
        # clip_coef = min(1, max_norm / (total + 1e-6)) computed on the device: no sync
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total,
                                             foreach=True)
    return total


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, next_batch: Callable,
               *, grad_accum: int, grad_clip: float, guard=None,
               step_number: int = 0, reduce_every_micro_batch: bool = False) -> StepResult:
    """Run `grad_accum` micro-batches and one optimizer update.

    next_batch() -> (inputs, targets), int64 (B, S) on the device.
    Each micro-batch loss is divided by grad_accum so the accumulated gradient is the gradient of
    the mean loss over all B * grad_accum samples (each micro-batch has the same token count).
    reduce_every_micro_batch: reduce-scatter after each micro-batch (FSDP2 adds the result to the
    sharded gradient) instead of accumulating unsharded gradients until the last one.
    """
    loss_sum = None
    for micro in range(grad_accum):
        set_gradient_sync(model, reduce_every_micro_batch or micro == grad_accum - 1)
        inputs, targets = next_batch()
        loss = model(inputs, targets) / grad_accum       # () fp32: the model owns the loss
        loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()

    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = grad_norm_and_clip(params, grad_clip)
    do_step = True
    if guard is not None:  # records non-finite loss/grad on the device (see faults.py)
        do_step = guard.observe(step_number, loss_sum, grad_norm, optimizer)
    if do_step:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return StepResult(loss=loss_sum, grad_norm=grad_norm)
