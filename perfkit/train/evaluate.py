"""Validation loss over $.data.val: every rank reads its slice, the token-weighted mean is global.

Evaluation is a sync point by nature (the result is printed); it is not part of the training step.
All ranks run the same number of forward passes (the val loader guarantees equal batch counts),
which FSDP's collectives require.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from perfkit import ranks


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable, device: torch.device,
             max_batches: int = 0) -> float:
    """Mean validation loss per target token over all ranks; max_batches > 0 caps the pass."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)   # sum of per-token losses
    count = torch.zeros((), dtype=torch.float64, device=device)      # target tokens seen
    for i, (inputs, targets) in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        logits = model(inputs)                       # (B, S, V_padded)
        n = targets.numel()
        loss_sum += loss_fn(logits, targets).double() * n
        count += n
    if ranks.world_size() > 1:
        both = torch.stack([loss_sum, count])
        dist.all_reduce(both)
        loss_sum, count = both[0], both[1]
    model.train(was_training)
    return float(loss_sum / count.clamp(min=1))
