"""SwiGLU as torch.library ops: silu(gate) * up, from two tensors or one packed [..., 2F] tensor.

Layers as in rms_norm.py: the PyTorch reference (the CPU implementation, the tests' ground truth,
the benchmark baseline); the ops `perfkit::swiglu`, `perfkit::swiglu_backward`,
`perfkit::swiglu_packed`, `perfkit::swiglu_packed_backward` with fake implementations and
registered autograd (no graph break under torch.compile(fullgraph=True)); the public `swiglu`.
The backward saves only the inputs and recomputes sigmoid(gate): one extra exp per element is
cheaper than writing and re-reading silu(gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch


def _triton():
    from . import swiglu_triton  # lazy: importing perfkit.kernels must not import triton
    return swiglu_triton


# ----------------------------------------------------------------------------- reference

def swiglu_reference(gate: Tensor, up: Tensor | None = None) -> Tensor:
    """silu(gate) * up with fp32 math; with up=None, gate is packed as [gate | up] on the last dim."""
    if up is None:
        gate, up = gate.chunk(2, dim=-1)
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def _reference_backward(dout: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    g, u, do = gate.float(), up.float(), dout.float()
    sig = torch.sigmoid(g)
    dgate = do * u * sig * (1.0 + g * (1.0 - sig))
    dup = do * g * sig
    return dgate.to(gate.dtype).contiguous(), dup.to(up.dtype).contiguous()


def _check_packed(x: Tensor) -> None:
    if x.shape[-1] % 2:
        raise ValueError(f"packed SwiGLU input needs an even last dimension, got {x.shape[-1]}")


# ----------------------------------------------------------------------------- ops

@torch.library.custom_op("perfkit::swiglu", mutates_args=())
def swiglu_op(gate: Tensor, up: Tensor) -> Tensor:
    if dispatch.use_triton(gate):
        return _triton().forward(gate, up)
    return swiglu_reference(gate, up).contiguous()


@swiglu_op.register_fake
def _(gate, up):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("perfkit::swiglu_backward", mutates_args=())
def swiglu_backward_op(dout: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    if dispatch.use_triton(gate):
        return _triton().backward(dout, gate, up)
    return _reference_backward(dout, gate, up)


@swiglu_backward_op.register_fake
def _(dout, gate, up):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


@torch.library.custom_op("perfkit::swiglu_packed", mutates_args=())
def swiglu_packed_op(x: Tensor) -> Tensor:
    """x (..., 2F) = [gate | up] -> (..., F)."""
    _check_packed(x)
    if dispatch.use_triton(x):
        return _triton().packed_forward(x)
    return swiglu_reference(x).contiguous()


@swiglu_packed_op.register_fake
def _(x):
    _check_packed(x)
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("perfkit::swiglu_packed_backward", mutates_args=())
def swiglu_packed_backward_op(dout: Tensor, x: Tensor) -> Tensor:
    if dispatch.use_triton(x):
        return _triton().packed_backward(dout, x)
    gate, up = x.chunk(2, dim=-1)
    return torch.cat(_reference_backward(dout, gate, up), dim=-1)


@swiglu_packed_backward_op.register_fake
def _(dout, x):
    return x.new_empty(x.shape)


def _setup_swiglu(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_swiglu(ctx, dout):
    gate, up = ctx.saved_tensors
    return swiglu_backward_op(dout, gate, up)


def _setup_swiglu_packed(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward_swiglu_packed(ctx, dout):
    (x,) = ctx.saved_tensors
    return swiglu_packed_backward_op(dout, x)


swiglu_op.register_autograd(_backward_swiglu, setup_context=_setup_swiglu)
swiglu_packed_op.register_autograd(_backward_swiglu_packed, setup_context=_setup_swiglu_packed)


# ----------------------------------------------------------------------------- public API

def swiglu(gate: Tensor, up: Tensor | None = None) -> Tensor:
    """silu(gate) * up; pass one packed tensor [..., 2F] = [gate | up] to avoid splitting it."""
    if up is None:
        return swiglu_packed_op(gate)
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} {gate.dtype} and up "
                         f"{tuple(up.shape)} {up.dtype} must match")
    return swiglu_op(gate, up)
