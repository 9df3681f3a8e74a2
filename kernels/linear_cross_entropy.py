"""Fused linear + cross-entropy as torch.library ops: loss = mean CE(hidden @ weight.T, targets).

The (N tokens, V vocab) logits are never held whole: the tokens are walked in chunks of
`chunk_tokens` rows, each chunk's (C, V) logits made by one matmul and dropped before the next.

Training (gradients wanted, the usual case): `perfkit::linear_cross_entropy_with_grad` makes the
gradient in the forward, for d(loss) = 1: each chunk's logits give their row's log-sum-exp and loss,
are overwritten in place by d(logits), and folded at once into d(hidden) (that chunk's rows, one
matmul written once) and d(weight) (accumulated in fp32 over the chunks). The backward only
scales the two saved gradients by the incoming d(loss). Three matmuls of the head's size in all,
the same as the unfused loss (the logits are never recomputed), and each logit is written once and
read twice (its row's log-sum-exp, then its gradient in the same pass) - the unfused loss's traffic.
Its per-token log-sum-exp output is then not differentiable (`lse_grad=True` asks for the
recomputing pair of ops below instead).
Inference, or `lse_grad=True`: `perfkit::linear_cross_entropy` keeps only each row's log-sum-exp
(N fp32 values) and the loss; `perfkit::linear_cross_entropy_backward` recomputes each chunk's
logits (a fourth matmul) and turns them into d(logits) in place.

Chunk rows (`default_chunk_tokens`): on CUDA one (C, V) block holds up to 2**28 values (512 MiB in
bf16), so Llama 3's vocabulary takes 2,048 rows and 8,192 tokens make 4 chunks (each one more
fp32 add of d(weight): few chunks keep that cheap); elsewhere 2**25 (128 MiB in fp32).

Layers as in rms_norm.py: the chunked PyTorch implementation (the CPU path and the benchmark's
memory bound); the ops with fake implementations and registered autograd (no graph break under
torch.compile(fullgraph=True)); on CUDA the chunk matmuls are cuBLAS and the cross-entropy of each
chunk is a Triton kernel (linear_cross_entropy_triton.py); the public `fused_linear_cross_entropy`.
Targets equal to ignore_index are left out of the mean; the mean over zero targets is NaN, as in
F.cross_entropy. No host-device sync: the 1 / count scale stays a device tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch

LOGITS_CHUNK_ELEMENTS = 1 << 25       # one (chunk, V) block off CUDA: 128 MiB in fp32
CUDA_LOGITS_CHUNK_ELEMENTS = 1 << 28  # on CUDA: 512 MiB in bf16; fewer chunks, fewer d(weight) adds


def _triton():
    from . import linear_cross_entropy_triton  # lazy: importing perfkit.kernels must not import triton
    return linear_cross_entropy_triton


def default_chunk_tokens(vocab: int, device_type: str = "cpu") -> int:
    """Rows per chunk: the largest power of two whose (rows, vocab) block fits the device's budget
    (CPU: 256 at Llama 3's 128,256, 512 at GPT-2's 50,304; CUDA: 2,048 and 4,096), at least 8."""
    budget = CUDA_LOGITS_CHUNK_ELEMENTS if device_type == "cuda" else LOGITS_CHUNK_ELEMENTS
    rows = max(1, budget // max(vocab, 1))
    return max(8, 1 << (rows.bit_length() - 1))


# ----------------------------------------------------------------------------- chunked PyTorch

def _ce_rows_forward(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """logits (C, V) -> lse (C,) fp32 and per-row loss (C,) fp32 (0 where ignored)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    valid = targets != ignore_index
    picked = x.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
    return lse, torch.where(valid, lse - picked, 0.0)


def _ce_rows_backward(logits: Tensor, targets: Tensor, lse: Tensor, dlse: Tensor | float, scale: Tensor,
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


class _WeightGrad:
    """d(weight) (V, D) summed over the chunks: sum of dlogits.T @ hidden rows. fp32 throughout
    when the inputs are fp32 (addmm in place); in bf16 each chunk's product is one matmul (fp32
    inside) added to an fp32 sum, and a single chunk's product is kept as it is (no extra pass)."""

    def __init__(self, weight: Tensor, chunks: int):
        self.weight, self.chunks, self.sum = weight, chunks, None

    def add(self, dlogits: Tensor, rows: Tensor) -> None:
        if self.sum is None:
            part = dlogits.T @ rows  # (V, D) in the compute dtype
            self.sum = part if part.dtype == torch.float32 or self.chunks == 1 else part.float()
        elif dlogits.dtype == torch.float32:
            self.sum.addmm_(dlogits.T, rows)  # no temporary
        else:
            self.sum.add_(dlogits.T @ rows)   # bf16 product, fp32 sum

    def result(self) -> Tensor:
        if self.sum is None:  # no tokens
            return torch.zeros_like(self.weight)
        return self.sum.to(self.weight.dtype)


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
    dweight = _WeightGrad(weight, -(-n // chunk))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        logits = hidden[s:e] @ weight.T  # (C, V) recomputed
        if use_triton:
            _triton().ce_backward_inplace(logits, targets[s:e], lse[s:e], dlse[s:e], scale, ignore_index)
            dlogits = logits
        else:
            dlogits = _ce_rows_backward(logits, targets[s:e], lse[s:e], dlse[s:e], scale, ignore_index)
        torch.mm(dlogits, weight, out=dhidden[s:e])  # (C, D)
        dweight.add(dlogits, hidden[s:e])
        del logits, dlogits  # free this chunk's (C, V) block before the next matmul allocates one
    return dhidden, dweight.result()


def _forward_with_grad(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int,
                       chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """loss, lse and the gradients of the loss (for d(loss) = 1) w.r.t. hidden and weight."""
    n = hidden.shape[0]
    use_triton = dispatch.use_triton(hidden)
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    row_loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    count = (targets != ignore_index).sum()
    scale = (1.0 / count).float().reshape(1)  # (1,) fp32 on the device: d(mean)/d(row loss)
    dhidden = torch.empty_like(hidden)
    dweight = _WeightGrad(weight, -(-n // chunk))
    for s in range(0, n, chunk):  # one iteration per chunk of rows, not per token
        e = min(s + chunk, n)
        logits = hidden[s:e] @ weight.T  # (C, V) compute dtype, overwritten by its gradient
        if use_triton:
            _triton().ce_forward_grad_inplace(lse[s:e], row_loss[s:e], logits, targets[s:e], scale,
                                              ignore_index)
            dlogits = logits
        else:
            lse[s:e], row_loss[s:e] = _ce_rows_forward(logits, targets[s:e], ignore_index)
            dlogits = _ce_rows_backward(logits, targets[s:e], lse[s:e], 0.0, scale, ignore_index)
        torch.mm(dlogits, weight, out=dhidden[s:e])  # (C, D)
        dweight.add(dlogits, hidden[s:e])
        del logits, dlogits  # free this chunk's (C, V) block before the next matmul allocates one
    return row_loss.sum() / count, lse, dhidden, dweight.result()


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


@torch.library.custom_op("perfkit::linear_cross_entropy_with_grad", mutates_args=())
def linear_cross_entropy_with_grad_op(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int,
                                      chunk_tokens: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (loss () fp32, lse (N,) fp32, d(loss)/d(hidden) (N, D), d(loss)/d(weight) (V, D))."""
    return _forward_with_grad(hidden, weight, targets, ignore_index, chunk_tokens)


@linear_cross_entropy_with_grad_op.register_fake
def _(hidden, weight, targets, ignore_index, chunk_tokens):
    return (hidden.new_empty((), dtype=torch.float32),
            hidden.new_empty((hidden.shape[0],), dtype=torch.float32),
            torch.empty_like(hidden), torch.empty_like(weight))


def _setup_with_grad(ctx, inputs, output):
    _loss, lse, dhidden, dweight = output
    ctx.mark_non_differentiable(lse, dhidden, dweight)
    ctx.save_for_backward(dhidden, dweight)


def _backward_with_grad(ctx, dloss, _dlse, _ddhidden, _ddweight):
    dhidden, dweight = ctx.saved_tensors
    # dloss: () fp32; the products keep the gradients' dtype (a 0-dim operand does not promote)
    return dhidden * dloss, dweight * dloss, None, None, None


linear_cross_entropy_with_grad_op.register_autograd(_backward_with_grad, setup_context=_setup_with_grad)


# ----------------------------------------------------------------------------- public API

def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100,
                               chunk_tokens: int | None = None, lse_grad: bool = False) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of hidden (N, D) @ weight (V, D).T against targets (N,) int64, and the
    per-token log-sum-exp (N,) fp32; chunk_tokens rows of logits at a time (default: by vocab and
    device). When gradients are wanted the forward makes them (no recompute) and the lse comes
    back non-differentiable (requires_grad False); lse_grad=True makes it differentiable, at the
    cost of recomputing the logits in backward."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)} and weight "
                         f"{tuple(weight.shape)} must be (N, D) and (V, D)")
    if targets.shape != hidden.shape[:1] or targets.dtype != torch.int64:
        raise ValueError(f"fused_linear_cross_entropy: targets {tuple(targets.shape)} {targets.dtype} "
                         f"must be ({hidden.shape[0]},) int64")
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0], hidden.device.type)
    if chunk < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_tokens must be >= 1, got {chunk}")
    weight = weight.to(hidden.dtype)
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if wants_grad and not lse_grad:
        loss, lse, _dhidden, _dweight = linear_cross_entropy_with_grad_op(hidden, weight, targets,
                                                                          ignore_index, chunk)
        return loss, lse
    return linear_cross_entropy_op(hidden, weight, targets, ignore_index, chunk)
