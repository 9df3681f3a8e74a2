"""Validation loss over $.data.val: every rank reads its slice, the token-weighted mean is global.

Evaluation is a sync point by nature (the result is printed); it is not part of the training step.
All ranks run the same number of forward passes (the val loader guarantees equal batch counts),
which FSDP's collectives require.

A smaller last batch (the val windows rarely divide into micro-batches) is padded to the full
batch with token-0 inputs and ignored (-100) targets: the compiled blocks then see one shape, where
a new batch size would recompile every block with a dynamic batch dimension (seconds to tens of
seconds on a GPU). Every window is still evaluated and the mean is over real target tokens only;
the padding costs at most B - 1 extra rows of forward once per evaluation.

Bits per byte (docs/evaluation.md#bits-per-byte): with a table of UTF-8 bytes per token id
(perfkit/train/bits_per_byte.py), the pass also sums the bytes of exactly the targets whose loss
it sums (EOD and other special tokens: 0 bytes; padding: not counted), one gather per batch on the
device, so bpb = sum of losses in bits / sum of bytes over the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from perfkit import ranks


@dataclass(frozen=True)
class EvalResult:
    """One validation pass, summed over all ranks."""

    loss: float                 # mean cross-entropy in nats per target token
    tokens: int                 # target tokens evaluated (EOD targets included, padding excluded)
    text_bytes: int | None      # UTF-8 bytes of those targets (with a token_bytes table), else None

    @property
    def bits_per_byte(self) -> float | None:
        """sum of per-token losses in bits / sum of the same tokens' bytes."""
        if not self.text_bytes:
            return None
        return self.loss * self.tokens / math.log(2) / self.text_bytes


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, max_batches: int = 0) -> float:
    """Mean validation loss per target token over all ranks; max_batches > 0 caps the pass."""
    return evaluate_sums(model, batches, device, max_batches).loss


@torch.no_grad()
def evaluate_sums(model: nn.Module, batches: Iterable, device: torch.device, max_batches: int = 0,
                  token_bytes: torch.Tensor | None = None) -> EvalResult:
    """The validation pass: loss, target tokens and (with `token_bytes`, a (V,) int64 table on
    `device` of UTF-8 bytes per token id) the targets' text bytes, summed over all ranks.

    Batches are padded to `batches.micro_batch_size` (the ValLoader's B) or, without that
    attribute, to the first batch's size (see the module note)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)   # sum of per-token losses (nats)
    count = torch.zeros((), dtype=torch.float64, device=device)      # target tokens seen
    byte_sum = torch.zeros((), dtype=torch.float64, device=device)   # UTF-8 bytes of those targets
    full = getattr(batches, "micro_batch_size", None)
    for i, (inputs, targets) in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        full = full or inputs.shape[0]
        n = targets.numel()                          # real target tokens of this batch
        if token_bytes is not None:
            byte_sum += token_bytes[targets].sum()   # (B', S) gather, before the padding rows exist
        inputs, targets = _pad_rows(inputs, targets, full)
        loss_sum += model(inputs, targets).double() * n  # the model's loss means over non-ignored targets
        count += n
    if ranks.world_size() > 1:
        sums = torch.stack([loss_sum, count, byte_sum])
        dist.all_reduce(sums)
        loss_sum, count, byte_sum = sums[0], sums[1], sums[2]
    model.train(was_training)
    loss_nats, tokens, text_bytes = torch.stack([loss_sum, count, byte_sum]).tolist()  # one device read
    loss, tokens, text_bytes = loss_nats / max(tokens, 1.0), int(tokens), int(text_bytes)
    return EvalResult(loss=loss, tokens=tokens, text_bytes=text_bytes if token_bytes is not None else None)


def _pad_rows(inputs: torch.Tensor, targets: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B', S) -> (rows, S) for B' < rows: token 0 as input, -100 (ignored by the loss) as target."""
    missing = rows - inputs.shape[0]
    if missing <= 0:
        return inputs, targets
    pad_in = inputs.new_zeros((missing, *inputs.shape[1:]))
    pad_tg = targets.new_full((missing, *targets.shape[1:]), -100)
    return torch.cat([inputs, pad_in]), torch.cat([targets, pad_tg])
