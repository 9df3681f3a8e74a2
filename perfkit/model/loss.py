"""The language-model loss: final hidden states x head weight -> mean token cross-entropy.

One module owns the loss, so the trainer, the evaluator and the benchmark call `model(idx, targets)`
and a new loss is a change here only. It holds no parameters (the head weight is passed in, so
the checkpoint names stay `lm_head.weight` and a tied head stays tied); the trainer compiles it
in place like a block.

Unfused: logits = hidden @ weight.T (B, T, V) in the compute dtype, then fp32 cross-entropy.
Fused (`model.fused_linear_cross_entropy`): perfkit.kernels' chunked op; the (B*T, V) logits are
never held whole, in forward or backward.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from perfkit.kernels import fused_linear_cross_entropy
from perfkit.kernels.linear_cross_entropy import default_chunk_tokens  # noqa: F401 (rows per chunk; the memory estimate reads it)

IGNORE_INDEX = -100  # targets equal to this are left out of the mean (the val padding uses it)


def cross_entropy_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean token cross-entropy in fp32 (logits (B, T, V) any dtype, targets (B, T) int64;
    targets equal to -100 are ignored)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)


class LMLoss(nn.Module):
    """(hidden (B, T, D), weight (V, D), targets (B, T)) -> () fp32 mean loss over non-ignored targets."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused

    def forward(self, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        if self.fused:
            loss, _lse = fused_linear_cross_entropy(hidden.flatten(0, -2), weight, targets.flatten(),
                                                    ignore_index=IGNORE_INDEX)
            return loss
        return cross_entropy_loss(F.linear(hidden, weight), targets)
