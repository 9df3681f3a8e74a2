"""RMSNorm as torch.library ops: y = x / sqrt(mean(x^2) + eps) * weight, optionally fused with
the residual add that precedes it (h = x + residual; y = rmsnorm(h) * weight; returns y and h).

Three layers, as in the other kernel files:
  * the pure-PyTorch reference (fp32 math), which is the CPU implementation of the ops, the
    tests' ground truth and the benchmark baseline;
  * the ops `perfkit::rms_norm`, `perfkit::rms_norm_residual`, `perfkit::rms_norm_backward`
    (custom_op + fake implementations + registered autograd, so torch.compile(fullgraph=True)
    traces through them without a graph break); on CUDA they launch the Triton kernels of
    `rms_norm_triton.py`, which is imported only then;
  * the public functions `rms_norm` and `rms_norm_residual`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch


def _triton():
    from . import rms_norm_triton  # lazy: importing perfkit.kernels must not import triton
    return rms_norm_triton


# ----------------------------------------------------------------------------- reference

def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Pure-PyTorch RMSNorm with fp32 math; the output has x's dtype. Inductor fuses this."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * weight.float()).to(x.dtype)


def _reference_forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1) + eps)  # (...,) fp32
    y = (xf * rstd.unsqueeze(-1) * weight.float()).to(x.dtype)
    return y.contiguous(), rstd.contiguous()


def _reference_backward(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor,
                        dh: Tensor | None) -> tuple[Tensor, Tensor]:
    # dx = rstd * (w*dy - xhat * mean(xhat * w*dy)), xhat = x*rstd; dw = sum_rows(dy * xhat)
    xhat = x.float() * rstd.unsqueeze(-1)
    wdy = dy.float() * weight.float()
    dx = (wdy - xhat * (xhat * wdy).mean(dim=-1, keepdim=True)) * rstd.unsqueeze(-1)
    if dh is not None:
        dx = dx + dh.float()
    dw = (dy.float() * xhat).reshape(-1, x.shape[-1]).sum(dim=0)
    return dx.to(x.dtype).contiguous(), dw.to(weight.dtype)


# ----------------------------------------------------------------------------- ops

@torch.library.custom_op("perfkit::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y, rstd): y has x's shape and dtype, rstd is fp32 of shape x.shape[:-1]."""
    if dispatch.use_triton(x):
        y, rstd, _ = _triton().forward(x, weight, eps)
        return y, rstd
    return _reference_forward(x, weight, eps)


@rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("perfkit::rms_norm_residual", mutates_args=())
def rms_norm_residual_op(x: Tensor, residual: Tensor, weight: Tensor,
                         eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, h, rstd) with h = x + residual (promoted dtype), y = rmsnorm(h) * weight in h's dtype."""
    if dispatch.use_triton(x):
        y, rstd, h = _triton().forward(x, weight, eps, residual=residual)
        return y, h, rstd
    h = (x.float() + residual.float()).to(torch.promote_types(x.dtype, residual.dtype))
    y, rstd = _reference_forward(h, weight, eps)
    return y, h.contiguous(), rstd


@rms_norm_residual_op.register_fake
def _(x, residual, weight, eps):
    dtype = torch.promote_types(x.dtype, residual.dtype)
    return (x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape, dtype=dtype),
            x.new_empty(x.shape[:-1], dtype=torch.float32))


@torch.library.custom_op("perfkit::rms_norm_backward", mutates_args=())
def rms_norm_backward_op(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor,
                         dh: Tensor | None) -> tuple[Tensor, Tensor]:
    """(dx, dw) for y = rmsnorm(x) * weight, with dx += dh when dh is given."""
    if dispatch.use_triton(x):
        return _triton().backward(dy, x, weight, rstd, dh)
    return _reference_backward(dy, x, weight, rstd, dh)


@rms_norm_backward_op.register_fake
def _(dy, x, weight, rstd, dh):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup_rms_norm(ctx, inputs, output):
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _backward_rms_norm(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward_op(dy, x, weight, rstd, None)
    return dx, dw, None


rms_norm_op.register_autograd(_backward_rms_norm, setup_context=_setup_rms_norm)


def _setup_rms_norm_residual(ctx, inputs, output):
    x, residual, weight, _ = inputs
    _, h, rstd = output
    ctx.save_for_backward(h, weight, rstd)  # only h is needed: dx = dresidual = dh_total
    ctx.dtypes = (x.dtype, residual.dtype)


def _backward_rms_norm_residual(ctx, dy, dh, _drstd):
    h, weight, rstd = ctx.saved_tensors
    dh_total, dw = rms_norm_backward_op(dy, h, weight, rstd, dh)
    x_dtype, residual_dtype = ctx.dtypes
    return dh_total.to(x_dtype), dh_total.to(residual_dtype), dw, None


rms_norm_residual_op.register_autograd(_backward_rms_norm_residual,
                                       setup_context=_setup_rms_norm_residual)


# ----------------------------------------------------------------------------- public API

def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm over the last dimension; Triton kernels on CUDA, the reference elsewhere."""
    return rms_norm_op(x, weight, float(eps))[0]


def rms_norm_residual(x: Tensor, residual: Tensor, weight: Tensor,
                      eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(rmsnorm(x + residual) * weight, x + residual) in one pass over memory."""
    y, h, _ = rms_norm_residual_op(x, residual, weight, float(eps))
    return y, h
