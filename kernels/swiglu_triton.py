"""SwiGLU Triton kernels and launchers: out = silu(gate) * up, and its backward.

Imported lazily by `perfkit.kernels.swiglu` (importing perfkit.kernels never imports triton).
gate, up, out and the gradients are (M rows, F) matrices with unit column stride and any row
stride, so the two halves of one packed (M, 2F) projection are read and written in place.
Math in fp32; the backward recomputes sigmoid(gate) instead of saving silu(gate).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreter_compat
from .rms_norm_triton import as_rows

interpreter_compat.apply()  # Triton 3.6 interpreter + NumPy >= 2.4 (tests only)

MAX_BLOCK_F = 1024
TILE_ELEMENTS = 4096


@triton.jit
def _swiglu_fwd_kernel(G, g_stride, U, u_stride, O, o_stride, M, F,
                       BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    rows64 = rows.to(tl.int64)[:, None]  # (BLOCK_M, 1)
    cols = cols[None, :]                 # (1, BLOCK_F)
    mask = (rows[:, None] < M) & (cols < F)
    g = tl.load(G + rows64 * g_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows64 * u_stride + cols, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(O + rows64 * o_stride + cols, out.to(O.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DO, do_stride, G, g_stride, U, u_stride, DG, dg_stride, DU, du_stride,
                       M, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    # d silu(g)/dg = sig * (1 + g * (1 - sig)), sig = sigmoid(g)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    rows64 = rows.to(tl.int64)[:, None]
    cols = cols[None, :]
    mask = (rows[:, None] < M) & (cols < F)
    do = tl.load(DO + rows64 * do_stride + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + rows64 * g_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows64 * u_stride + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    dg = do * u * sig * (1.0 + g * (1.0 - sig))
    du = do * silu
    tl.store(DG + rows64 * dg_stride + cols, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + rows64 * du_stride + cols, du.to(DU.dtype.element_ty), mask=mask)


def _launch_config(m: int, f: int):
    block_f = min(triton.next_power_of_2(f), MAX_BLOCK_F)
    block_m = max(1, TILE_ELEMENTS // block_f)
    grid = (triton.cdiv(m, block_m), triton.cdiv(f, block_f))
    return grid, block_m, block_f


def forward_into(out: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> None:
    """out[...] = silu(gate) * up for (M, F) views with unit column stride."""
    m, f = gate.shape
    if m == 0 or f == 0:
        return
    grid, block_m, block_f = _launch_config(m, f)
    _swiglu_fwd_kernel[grid](gate, gate.stride(0), up, up.stride(0), out, out.stride(0), m, f,
                             BLOCK_M=block_m, BLOCK_F=block_f, num_warps=8)


def backward_into(dgate: torch.Tensor, dup: torch.Tensor, dout: torch.Tensor,
                  gate: torch.Tensor, up: torch.Tensor) -> None:
    """Writes the gradients of silu(gate) * up into the (M, F) views dgate and dup."""
    m, f = gate.shape
    if m == 0 or f == 0:
        return
    grid, block_m, block_f = _launch_config(m, f)
    _swiglu_bwd_kernel[grid](dout, dout.stride(0), gate, gate.stride(0), up, up.stride(0),
                             dgate, dgate.stride(0), dup, dup.stride(0), m, f,
                             BLOCK_M=block_m, BLOCK_F=block_f, num_warps=8)


def forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g2, u2 = as_rows(gate), as_rows(up)
    out = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    forward_into(out, g2, u2)
    return out.view(gate.shape)


def backward(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor):
    g2, u2, do2 = as_rows(gate), as_rows(up), as_rows(dout)
    dgate = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty(u2.shape, dtype=up.dtype, device=up.device)
    backward_into(dgate, dup, do2, g2, u2)
    return dgate.view(gate.shape), dup.view(up.shape)


def packed_forward(x: torch.Tensor) -> torch.Tensor:
    """x (..., 2F) = [gate | up] -> silu(gate) * up (..., F), reading both halves in place."""
    f = x.shape[-1] // 2
    x2 = as_rows(x)
    out = torch.empty((x2.shape[0], f), dtype=x.dtype, device=x.device)
    forward_into(out, x2[:, :f], x2[:, f:])
    return out.view(*x.shape[:-1], f)


def packed_backward(dout: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the packed x (..., 2F), written as one tensor (no concatenation)."""
    f = x.shape[-1] // 2
    x2, do2 = as_rows(x), as_rows(dout)
    dx = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    backward_into(dx[:, :f], dx[:, f:], do2, x2[:, :f], x2[:, f:])
    return dx.view(x.shape)
