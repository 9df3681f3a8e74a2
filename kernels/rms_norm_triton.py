"""RMSNorm Triton kernels and their launchers (forward, backward, optional fused residual add).

Imported lazily by `perfkit.kernels.rms_norm` the first time a kernel must run, so that importing
`perfkit.kernels` never imports triton. Under TRITON_INTERPRET=1 (set before this module is first
imported) the same kernels run on CPU tensors; the tests use that.

Layout: every input is viewed as a (M rows, N hidden) matrix whose last dimension is contiguous;
rows may have any stride (slices of a bigger tensor are read in place, not copied).
All arithmetic is fp32 whatever the storage dtype; rstd (M,) is stored in fp32 for the backward.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import interpreter_compat

interpreter_compat.apply()  # Triton 3.6 interpreter + NumPy >= 2.4 (tests only)

# Widest row kept entirely in registers; wider rows are processed in chunks (two passes over HBM).
MAX_SINGLE_PASS_N = 16384
# The backward keeps x, dy, w and dw live: at 16384 its single pass spills (32 warps are capped at
# 64 registers a thread; ptxas for sm_90 reported 116-148 bytes spilled, none from 768 to 8192).
MAX_SINGLE_PASS_N_BWD = 8192
CHUNK_N = 4096
# A program works on a (BLOCK_M, BLOCK_N) tile of about this many elements: several rows per
# program for small hidden sizes so that each program moves enough bytes to hide latency.
TILE_ELEMENTS = 4096


@triton.jit
def _rms_norm_fwd_kernel(X, x_stride, R, r_stride, W, Y, y_stride, H, h_stride, RSTD, M, N, eps,
                         HAS_RESIDUAL: tl.constexpr, SINGLE_PASS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Program p normalizes rows [p*BLOCK_M, (p+1)*BLOCK_M). With a residual, h = x + r is
    # rounded to the storage dtype, written, and the rounded h is normalized (the backward
    # reads that same h back).
    eps = tl.cast(eps, tl.float32)  # Inductor and Python pass fp64 scalars; keep the math in fp32
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)[:, None]  # (BLOCK_M, 1); int64 so row * stride never overflows
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK_N)[None, :]  # (1, BLOCK_N)
        mask = row_mask[:, None] & (cols < N)
        x = tl.load(X + rows64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(R + rows64 * r_stride + cols, mask=mask, other=0.0).to(tl.float32)
            h = (x + r).to(H.dtype.element_ty)
            tl.store(H + rows64 * h_stride + cols, h, mask=mask)
            x = h.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)  # (BLOCK_M,)
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
        y = x * rstd[:, None] * w
        tl.store(Y + rows64 * y_stride + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        # Pass 1: sum of squares (and h) chunk by chunk; pass 2: re-read and scale.
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)[None, :]
            mask = row_mask[:, None] & (cols < N)
            x = tl.load(X + rows64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                r = tl.load(R + rows64 * r_stride + cols, mask=mask, other=0.0).to(tl.float32)
                h = (x + r).to(H.dtype.element_ty)
                tl.store(H + rows64 * h_stride + cols, h, mask=mask)
                x = h.to(tl.float32)
            acc += x * x
        rstd = tl.rsqrt(tl.sum(acc, axis=1) / N + eps)
        if HAS_RESIDUAL:
            tl.debug_barrier()  # pass 2 re-reads h: make every thread's pass-1 stores visible
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)[None, :]
            mask = row_mask[:, None] & (cols < N)
            if HAS_RESIDUAL:
                x = tl.load(H + rows64 * h_stride + cols, mask=mask, other=0.0).to(tl.float32)
            else:
                x = tl.load(X + rows64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
            y = x * rstd[:, None] * w
            tl.store(Y + rows64 * y_stride + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _rms_norm_bwd_kernel(DY, dy_stride, X, x_stride, W, RSTD, DH, dh_stride, DX, dx_stride,
                         DW_PARTIAL, C, M, N, rows_per_program,
                         HAS_DH: tl.constexpr, SINGLE_PASS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # y = x * rstd * w  =>  dx = rstd * (w*dy - xhat * mean(xhat * w*dy)),  xhat = x * rstd,
    # dw = sum over rows of dy * xhat. Program p owns rows [p*rows_per_program, ...) and writes
    # its dw partial sum to row p of DW_PARTIAL (P, N); the launcher sums those rows in a fixed
    # order, so dw is bitwise deterministic (no atomics). DH (optional) is an extra gradient
    # added to dx: the gradient of the residual-stream output h of the fused variant.
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK_N)[None, :]
        w = tl.load(W + cols, mask=cols < N, other=0.0).to(tl.float32)
        dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(row_start, row_end, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            row_mask = rows < row_end
            rows64 = rows.to(tl.int64)[:, None]
            mask = row_mask[:, None] & (cols < N)
            x = tl.load(X + rows64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + rows64 * dy_stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)[:, None]
            xhat = x * rstd
            wdy = w * dy
            c = tl.sum(xhat * wdy, axis=1)[:, None] / N
            dx = (wdy - xhat * c) * rstd
            if HAS_DH:
                dx += tl.load(DH + rows64 * dh_stride + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + rows64 * dx_stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw_acc += dy * xhat
        dw = tl.sum(dw_acc, axis=0)  # (BLOCK_N,)
        tl.store(DW_PARTIAL + pid.to(tl.int64) * N + tl.arange(0, BLOCK_N), dw,
                 mask=tl.arange(0, BLOCK_N) < N)
    else:
        # Wide rows, one row at a time. Phase 1 stores c = mean(xhat * w*dy) of each row in the
        # scratch C (M,); phase 2 walks column chunks, and within a chunk all this program's rows,
        # so each chunk's dw partial stays in registers and is written once (no read-modify-write).
        for row in range(row_start, row_end):
            row64 = tl.cast(row, tl.int64)
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + row64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row64 * dy_stride + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                acc += x * w * dy
            tl.store(C + row, tl.sum(acc, axis=0) * tl.load(RSTD + row) / N)
        tl.debug_barrier()  # phase 2 reads every row's c, stored by whichever thread held it
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for row in range(row_start, row_end):
                row64 = tl.cast(row, tl.int64)
                rstd = tl.load(RSTD + row)
                c = tl.load(C + row)
                x = tl.load(X + row64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(DY + row64 * dy_stride + cols, mask=mask, other=0.0).to(tl.float32)
                xhat = x * rstd
                dx = (w * dy - xhat * c) * rstd
                if HAS_DH:
                    dx += tl.load(DH + row64 * dh_stride + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(DX + row64 * dx_stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
                dw_acc += dy * xhat
            tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw_acc, mask=mask)


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """View t as (M, N) with a unit column stride; copies only when no such view exists."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.shape[1] > 1 and t2.stride(1) != 1:
        t2 = t2.contiguous()
    return t2


def _tile(n: int, backward: bool = False) -> tuple[int, int, bool, int]:
    """(BLOCK_M, BLOCK_N, single_pass, num_warps) for hidden size n.

    Forward: 16 elements per thread per tensor (~40 registers, several CTAs per SM). Backward
    keeps x, dy, w and the dw accumulator live, so it uses twice the warps (8 elements per
    thread) to stay near 64 registers without spilling (checked with ptxas for sm_90).
    """
    block_n = triton.next_power_of_2(n)
    if block_n > (MAX_SINGLE_PASS_N_BWD if backward else MAX_SINGLE_PASS_N):
        return 1, CHUNK_N, False, 8
    block_m = max(1, TILE_ELEMENTS // block_n)
    elements_per_thread = 8 if backward else 16
    num_warps = min(32 if backward else 16, max(4, block_m * block_n // (32 * elements_per_thread)))
    return block_m, block_n, True, num_warps


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs_target(device: torch.device, num_warps: int) -> int:
    """Backward programs: about as many as fit on the GPU at once (each loops over its rows)."""
    if device.type != "cuda":
        return 4  # interpreter on CPU: a few programs, each looping over several tiles
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index) * max(1, 32 // num_warps)


def forward(x: torch.Tensor, weight: torch.Tensor, eps: float,
            residual: torch.Tensor | None = None):
    """y = rmsnorm(x [+ residual]) * weight -> (y, rstd fp32 of shape x.shape[:-1], h or None).

    With a residual, h = x + residual (in the promoted dtype) is returned too and y has h's dtype.
    """
    n = x.shape[-1]
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x2 = as_rows(x)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
    h = r2 = None
    if residual is not None:
        r2 = as_rows(residual)
        h = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m > 0 and n > 0:
        block_m, block_n, single, warps = _tile(n)
        _rms_norm_fwd_kernel[(triton.cdiv(m, block_m),)](
            x2, x2.stride(0), r2 if r2 is not None else x2, r2.stride(0) if r2 is not None else 0,
            weight.contiguous(), y, y.stride(0), h if h is not None else y, h.stride(0) if h is not None else 0,
            rstd, m, n, eps,
            HAS_RESIDUAL=residual is not None, SINGLE_PASS=single,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    shape = x.shape
    return y.view(shape), rstd.view(shape[:-1]), (h.view(shape) if h is not None else None)


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
             dh: torch.Tensor | None = None, num_programs: int | None = None):
    """(dx, dw) of y = rmsnorm(x) * weight; dx += dh when given. dx has x's dtype, dw weight's."""
    n = x.shape[-1]
    x2, dy2 = as_rows(x), as_rows(dy)
    m = x2.shape[0]
    dx = torch.empty((m, n), dtype=x.dtype, device=x.device)
    dh2 = as_rows(dh) if dh is not None else None
    block_m, block_n, single, warps = _tile(n, backward=True)
    tiles = triton.cdiv(m, block_m)
    programs = min(num_programs or _programs_target(x.device, warps), max(tiles, 1))
    rows_per_program = triton.cdiv(tiles, programs) * block_m
    programs = max(1, triton.cdiv(m, rows_per_program))
    partial = torch.empty((programs, n), dtype=torch.float32, device=x.device)
    # per-row scratch of the wide-row path (the single-pass path keeps c in registers)
    c_scratch = rstd if single else torch.empty((m,), dtype=torch.float32, device=x.device)
    if m == 0 or n == 0:
        partial.zero_()
    else:
        _rms_norm_bwd_kernel[(programs,)](
            dy2, dy2.stride(0), x2, x2.stride(0), weight.contiguous(), rstd.reshape(-1).contiguous(),
            dh2 if dh2 is not None else dy2, dh2.stride(0) if dh2 is not None else 0,
            dx, dx.stride(0), partial, c_scratch, m, n, rows_per_program,
            HAS_DH=dh is not None, SINGLE_PASS=single,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    dw = partial.sum(dim=0).to(weight.dtype)
    return dx.view(x.shape), dw
