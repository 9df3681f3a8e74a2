"""Activation checkpointing of transformer blocks ($.parallel.activation_checkpointing).

- "full": a block keeps only its input; backward recomputes the whole block.
- "op": selective (torch.utils.checkpoint's policy API): the outputs of matmuls and attention are
  saved, everything else (norms, activations, RoPE, residual adds) is recomputed - most of the
  memory of "full" for a few percent of recompute, since the cheap elementwise ops are what it redoes.
- every k-th block (blocks 0, k, 2k, ...; $.parallel.activation_checkpointing_every) is checkpointed.

The block's `forward` is replaced on the instance by a checkpointed call of the original, so the
module tree and the parameter names (`blocks.0.attn...`) stay the same: a checkpoint loads with
checkpointing on or off. Applied before `block.compile()` (Dynamo traces the checkpoint as one
region) and before `fully_shard` (FSDP2 has gathered the block's parameters when backward
recomputes it), the order of design.md: construct -> checkpointing -> compile -> fully_shard.
Dropout stays identical: the checkpoint replays the saved RNG state.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts, noop_context_fn

# matmul and attention ops whose outputs "op" keeps (the names that exist in this torch build);
# _scaled_mm is the float8 matmul of $.parallel.float8's linears: eager, checkpointing sees those as
# aten.mm on torchao's float8 tensor; compiled, torchao's tensor is traced through to _scaled_mm
_SAVED_OP_NAMES = ("mm", "addmm", "bmm", "_scaled_mm", "_scaled_dot_product_flash_attention",
                   "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
                   "_scaled_dot_product_flash_attention_for_cpu")


def saved_ops() -> list:
    aten = torch.ops.aten
    return [getattr(aten, n).default for n in _SAVED_OP_NAMES if hasattr(aten, n)]


def _context_fn(mode: str):
    if mode == "op":
        return functools.partial(create_selective_checkpoint_contexts, saved_ops())
    return noop_context_fn


def checkpoint_block(block: nn.Module, mode: str) -> None:
    """Make block's forward a checkpointed region ("full" or "op"), in place."""
    forward, context_fn = block.forward, _context_fn(mode)

    def checkpointed_forward(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)

    block.forward = checkpointed_forward


def apply_activation_checkpointing(blocks: nn.ModuleList, mode: str, every: int) -> list[int]:
    """Checkpoint blocks 0, every, 2 * every, ... with `mode`; returns their indices ("none": [])."""
    if mode == "none":
        return []
    chosen = [i for i in range(len(blocks)) if i % every == 0]
    for i in chosen:
        checkpoint_block(blocks[i], mode)
    return chosen
