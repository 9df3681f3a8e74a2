"""Triton cross-entropy over one chunk of logits, for perfkit.kernels.linear_cross_entropy.

Imported lazily (importing perfkit.kernels never imports triton). logits are a (C rows, V) matrix
with unit column stride, in the compute dtype, as the chunk matmul wrote them. One program per row
walks the vocabulary in BLOCK_V blocks (V need not be a multiple), math in fp32:
- forward: online max / sum-of-exp -> lse, and the row's loss lse - logit[target] (0 if ignored);
- backward: overwrites the row with d(logits) = softmax * (scale * valid + dlse) - onehot * scale * valid,
  so no second (C, V) buffer is allocated. scale (d(loss) / count) is read from device memory;
- forward with gradient: both in one program (the training path: the gradient for d(loss) = 1 is
  made while the row was just read, often still in L2, and the logits are never read again).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreter_compat

interpreter_compat.apply()  # Triton 3.6 interpreter + NumPy >= 2.4 (tests only)

MAX_BLOCK_V = 4096


@triton.jit
def _row_lse(x_row, V, BLOCK_V: tl.constexpr):
    """log-sum-exp (fp32) of one row of V logits."""
    m_vec = tl.full((BLOCK_V,), float("-inf"), tl.float32)  # running max per lane
    s_vec = tl.zeros((BLOCK_V,), tl.float32)                # running sum of exp(x - m) per lane
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        new_m = tl.maximum(m_vec, x)
        # a lane that has seen only masked columns stays (-inf, 0) instead of exp(-inf + inf) = nan
        s_vec = tl.where(new_m == float("-inf"), 0.0, s_vec * tl.exp(m_vec - new_m) + tl.exp(x - new_m))
        m_vec = new_m
    m = tl.max(m_vec, 0)
    return m + tl.log(tl.sum(s_vec * tl.exp(m_vec - m), 0))


@triton.jit
def _row_grad_inplace(x_row, V, t, lse, w, dlse, BLOCK_V: tl.constexpr):
    """Overwrites one row of logits with softmax * (w + dlse) - onehot(t) * w."""
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < V
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) * (w + dlse) - tl.where(cols == t, w, 0.0)
        tl.store(x_row + cols, g.to(x_row.dtype.element_ty), mask=mask)


@triton.jit
def _ce_fwd_kernel(X, x_stride, T, LSE, LOSS, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * x_stride
    lse = _row_lse(x_row, V, BLOCK_V)
    t = tl.load(T + row)
    valid = t != ignore_index
    picked = tl.load(x_row + tl.where(valid, t, 0)).to(tl.float32)
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(valid, lse - picked, 0.0))


@triton.jit
def _ce_bwd_kernel(X, x_stride, T, LSE, DLSE, SCALE, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * x_stride
    t = tl.load(T + row)
    w = tl.where(t != ignore_index, tl.load(SCALE), 0.0)  # d(loss)/d(this row's loss)
    _row_grad_inplace(x_row, V, t, tl.load(LSE + row), w, tl.load(DLSE + row), BLOCK_V)


@triton.jit
def _ce_fwd_grad_kernel(X, x_stride, T, LSE, LOSS, SCALE, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    x_row = X + row.to(tl.int64) * x_stride
    lse = _row_lse(x_row, V, BLOCK_V)
    t = tl.load(T + row)
    valid = t != ignore_index
    picked = tl.load(x_row + tl.where(valid, t, 0)).to(tl.float32)  # read before the row is overwritten
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(valid, lse - picked, 0.0))
    _row_grad_inplace(x_row, V, t, lse, tl.where(valid, tl.load(SCALE), 0.0), 0.0, BLOCK_V)


def _block_v(v: int) -> int:
    return min(triton.next_power_of_2(v), MAX_BLOCK_V)


def ce_forward_into(lse: torch.Tensor, row_loss: torch.Tensor, logits: torch.Tensor,
                    targets: torch.Tensor, ignore_index: int) -> None:
    """Writes lse (C,) and row_loss (C,) (fp32) of the (C, V) logits."""
    c, v = logits.shape
    if c == 0:
        return
    assert logits.stride(1) == 1 and lse.is_contiguous() and row_loss.is_contiguous()
    _ce_fwd_kernel[(c,)](logits, logits.stride(0), targets.contiguous(), lse, row_loss, v, ignore_index,
                         BLOCK_V=_block_v(v), num_warps=8)


def ce_backward_inplace(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dlse: torch.Tensor,
                        scale: torch.Tensor, ignore_index: int) -> None:
    """Overwrites the (C, V) logits with their gradient; scale is a (1,) fp32 device tensor."""
    c, v = logits.shape
    if c == 0:
        return
    assert logits.stride(1) == 1
    _ce_bwd_kernel[(c,)](logits, logits.stride(0), targets.contiguous(), lse.contiguous(),
                         dlse.float().contiguous(), scale, v, ignore_index, BLOCK_V=_block_v(v), num_warps=8)


def ce_forward_grad_inplace(lse: torch.Tensor, row_loss: torch.Tensor, logits: torch.Tensor,
                            targets: torch.Tensor, scale: torch.Tensor, ignore_index: int) -> None:
    """Writes lse (C,) and row_loss (C,) and overwrites the (C, V) logits with d(mean loss)/d(logits)
    for d(loss) = 1 (scale: (1,) fp32 device tensor, 1 / count of the non-ignored targets)."""
    c, v = logits.shape
    if c == 0:
        return
    assert logits.stride(1) == 1 and lse.is_contiguous() and row_loss.is_contiguous()
    _ce_fwd_grad_kernel[(c,)](logits, logits.stride(0), targets.contiguous(), lse, row_loss, scale, v,
                              ignore_index, BLOCK_V=_block_v(v), num_warps=8)
