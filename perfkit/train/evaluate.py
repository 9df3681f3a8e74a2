"""Validation loss over $.data.val: every rank reads its slice, the token-weighted mean is global.

Evaluation is a sync point by nature (the result is printed); it is not part of the training step.
All ranks run the same number of forward passes (the val loader guarantees equal batch counts),
which FSDP's collectives require.

A smaller last batch (the val windows rarely divide into micro-batches) is padded to the full
batch with token-0 inputs and ignored (-100) targets: the compiled blocks then see one shape, where
a new batch size would recompile every block with a dynamic batch dimension (seconds to tens of
seconds on a GPU). Every window is still evaluated and the mean is over real target tokens only;
the padding costs at most B - 1 extra rows of forward once per evaluation.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from perfkit import ranks


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, max_batches: int = 0) -> float:
    """Mean validation loss per target token over all ranks; max_batches > 0 caps the pass.

    Batches are padded to `batches.micro_batch_size` (the ValLoader's B) or, without that
    attribute, to the first batch's size (see the module note)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)   # sum of per-token losses
    count = torch.zeros((), dtype=torch.float64, device=device)      # target tokens seen
    full = getattr(batches, "micro_batch_size", None)
    for i, (inputs, targets) in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        full = full or inputs.shape[0]
        n = targets.numel()                          # real target tokens of this batch
        inputs, targets = _pad_rows(inputs, targets, full)
        loss_sum += model(inputs, targets).double() * n  # the model's loss means over non-ignored targets
        count += n
    if ranks.world_size() > 1:
        both = torch.stack([loss_sum, count])
        dist.all_reduce(both)
        loss_sum, count = both[0], both[1]
    model.train(was_training)
    return float(loss_sum / count.clamp(min=1))


def _pad_rows(inputs: torch.Tensor, targets: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B', S) -> (rows, S) for B' < rows: token 0 as input, -100 (ignored by the loss) as target."""
    missing = rows - inputs.shape[0]
    if missing <= 0:
        return inputs, targets
    pad_in = inputs.new_zeros((missing, *inputs.shape[1:]))
    pad_tg = targets.new_full((missing, *targets.shape[1:]), -100)
    return torch.cat([inputs, pad_in]), torch.cat([targets, pad_tg])
