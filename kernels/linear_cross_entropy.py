"""Fused linear + cross-entropy as torch.library ops: loss = mean CE(hidden @ weight.T, targets).

The (N tokens, V vocab) logits are never held whole: the forward walks the tokens in chunks of
`chunk_tokens` rows, keeps only each row's log-sum-exp (N fp32 values) and the loss; the backward
recomputes each chunk's logits, turns them into d(logits) in place and folds them into d(hidden)
(that chunk's rows) and d(weight) (accumulated in fp32). Peak extra memory: one (chunk, V) block
(plus the fp32 d(weight) accumulator when the weight is not fp32), where the unfused path holds
(N, V) logits, their fp32 copy and their gradient. The price is one more matmul (the recompute).

Layers as in rms_norm.py: the chunked PyTorch implementation (the CPU path and the benchmark's
memory bound); the ops `perfkit::linear_cross_entropy` and `perfkit::linear_cross_entropy_backward`
with fake implementations and registered autograd (no graph break under
torch.compile(fullgraph=True)); on CUDA the chunk matmuls are cuBLAS and the cross-entropy of each
chunk is a Triton kernel (linear_cross_entropy_triton.py); the public `fused_linear_cross_entropy`.
Targets equal to ignore_index are left out of the mean; the mean over zero targets is NaN, as in
F.cross_entropy. No host-device sync: the 1 / count scale stays a device tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch

LOGITS_CHUNK_ELEMENTS = 1 << 25  # one (chunk, V) block: 128 MiB in fp32


def _triton():
    from . import linear_cross_entropy_triton  # lazy: importing perfkit.kernels must not import triton
    return linear_cross_entropy_triton


def default_chunk_tokens(vocab: int) -> int:
    """Rows per chunk: the largest power of two whose (rows, vocab) block fits LOGITS_CHUNK_ELEMENTS
    (256 at Llama 3's 128,256, 512 at GPT-2's 50,304), at least 8."""
    rows = max(1, LOGITS_CHUNK_ELEMENTS // max(vocab, 1))
    return max(8, 1 << (rows.bit_length() - 1))


# ----------------------------------------------------------------------------- chunked PyTorch

def _ce_rows_forward(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """logits (C, V) -> lse (C,) fp32 and per-row loss (C,) fp32 (0 where ignored)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    valid = targets != ignore_index
    picked = x.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
    return lse, torch.where(valid, lse - picked, 0.0)


def _ce_rows_backward(logits: Tensor, targets: Tensor, lse: Tensor, dlse: Tensor, scale: Tensor,
                      ignore_index: int) -> Tensor:
    """d(logits) (C, V) in the logits' dtype: softmax * (scale * valid + dlse) - onehot * scale * valid.
    Overwrites `logits` when they are fp32 (a temporary the caller owns): one (C, V) buffer, not four."""
    valid = targets != ignore_index
    w = torch.where(valid, scale, 0.0)  # (C,) fp32: d(loss)/d(row loss)
    g = logits.float()  # the same tensor when fp32
    g.sub_(lse[:, None]).exp_().mul_((w + dlse)[:, None])
    rows = torch.arange(logits.shape[0], device=logits.device)
    g[rows, torch.where(valid, targets, 0)] -= w
    return g.to(logits.dtype)


def _forward(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int,
             chunk: int) -> tuple[Tensor, Tensor]:
    n = hidden.shape[0]
    use_triton = dispatch.use_triton(hidden)
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    row_loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for s in range(0, n, chunk):  # one iteration per chunk of rows, not per token
        e = min(s + chunk, n)
        logits = hidden[s:e] @ weight.T  # (C, V) compute dtype
        if use_triton:
            _triton().ce_forward_into(lse[s:e], row_loss[s:e], logits, targets[s:e], ignore_index)
        else:
            lse[s:e], row_loss[s:e] = _ce_rows_forward(logits, targets[s:e], ignore_index)
        del logits  # free this chunk's (C, V) block before the next matmul allocates one
    count = (targets != ignore_index).sum()
    return row_loss.sum() / count, lse


def _backward(dloss: Tensor, dlse: Tensor, hidden: Tensor, weight: Tensor, targets: Tensor, lse: Tensor,
              ignore_index: int, chunk: int) -> tuple[Tensor, Tensor]:
    n = hidden.shape[0]
    use_triton = dispatch.use_triton(hidden)
    scale = (dloss.float() / (targets != ignore_index).sum()).reshape(1)  # (1,) fp32 on the device
    dhidden = torch.empty_like(hidden)
    dweight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # fp32 accumulator
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        logits = hidden[s:e] @ weight.T  # (C, V) recomputed
        if use_triton:
            _triton().ce_backward_inplace(logits, targets[s:e], lse[s:e], dlse[s:e], scale, ignore_index)
            dlogits = logits
        else:
            dlogits = _ce_rows_backward(logits, targets[s:e], lse[s:e], dlse[s:e], scale, ignore_index)
        torch.mm(dlogits, weight, out=dhidden[s:e])  # (C, D)
        if dlogits.dtype == torch.float32:
            dweight.addmm_(dlogits.T, hidden[s:e])   # (V, D), no temporary
        else:
            dweight += (dlogits.T @ hidden[s:e]).float()
        del logits, dlogits  # free this chunk's (C, V) block before the next matmul allocates one
    return dhidden, dweight.to(weight.dtype)


# ----------------------------------------------------------------------------- ops

@torch.library.custom_op("perfkit::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int,
                            chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """hidden (N, D), weight (V, D), targets (N,) int64 -> (loss () fp32, lse (N,) fp32)."""
    return _forward(hidden, weight, targets, ignore_index, chunk_tokens)


@linear_cross_entropy_op.register_fake
def _(hidden, weight, targets, ignore_index, chunk_tokens):
    return (hidden.new_empty((), dtype=torch.float32),
            hidden.new_empty((hidden.shape[0],), dtype=torch.float32))


@torch.library.custom_op("perfkit::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward_op(dloss: Tensor, dlse: Tensor, hidden: Tensor, weight: Tensor,
                                     targets: Tensor, lse: Tensor, ignore_index: int,
                                     chunk_tokens: int) -> tuple[Tensor, Tensor]:
    return _backward(dloss, dlse, hidden, weight, targets, lse, ignore_index, chunk_tokens)


@linear_cross_entropy_backward_op.register_fake
def _(dloss, dlse, hidden, weight, targets, lse, ignore_index, chunk_tokens):
    return torch.empty_like(hidden), torch.empty_like(weight)


def _setup(ctx, inputs, output):
    hidden, weight, targets, ignore_index, chunk_tokens = inputs
    ctx.save_for_backward(hidden, weight, targets, output[1])
    ctx.ignore_index, ctx.chunk_tokens = ignore_index, chunk_tokens


def _backward_autograd(ctx, dloss, dlse):
    hidden, weight, targets, lse = ctx.saved_tensors
    if dlse is None:  # the usual case: only the loss is used
        dlse = torch.zeros_like(lse)
    dhidden, dweight = linear_cross_entropy_backward_op(dloss, dlse, hidden, weight, targets, lse,
                                                        ctx.ignore_index, ctx.chunk_tokens)
    return dhidden, dweight, None, None, None


linear_cross_entropy_op.register_autograd(_backward_autograd, setup_context=_setup)


# ----------------------------------------------------------------------------- public API

def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100,
                               chunk_tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of hidden (N, D) @ weight (V, D).T against targets (N,) int64, and the
    per-token log-sum-exp (N,) fp32; chunk_tokens rows of logits at a time (default: by vocab)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)} and weight "
                         f"{tuple(weight.shape)} must be (N, D) and (V, D)")
    if targets.shape != hidden.shape[:1] or targets.dtype != torch.int64:
        raise ValueError(f"fused_linear_cross_entropy: targets {tuple(targets.shape)} {targets.dtype} "
                         f"must be ({hidden.shape[0]},) int64")
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0])
    if chunk < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_tokens must be >= 1, got {chunk}")
    return linear_cross_entropy_op(hidden, weight.to(hidden.dtype), targets, ignore_index, chunk)
