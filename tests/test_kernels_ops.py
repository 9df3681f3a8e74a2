"""torch.library registration of the kernel ops: opcheck (schema, fake impl, autograd, AOT
dispatch) on the reference path and on the Triton path, and the CPU op path against the reference."""

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from perfkit import kernels  # noqa: E402

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _op_cases(device):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        t = torch.randn(shape, generator=gen).to(device)
        return t.requires_grad_(grad)

    x, w, r = rand(3, 5, 24), rand(24), rand(3, 5, 24)
    rstd = torch.rsqrt(x.detach().pow(2).mean(-1) + 1e-5)
    g, u, packed = rand(4, 33), rand(4, 33), rand(2, 3, 66)
    ops = torch.ops.perfkit  # registered by importing perfkit.kernels
    return [
        (ops.rms_norm.default, (x, w, 1e-5)),
        (ops.rms_norm_residual.default, (x, r, w, 1e-5)),
        (ops.rms_norm_backward.default, (rand(3, 5, 24, grad=False), x.detach(), w.detach(), rstd, None)),
        (ops.rms_norm_backward.default,
         (rand(3, 5, 24, grad=False), x.detach(), w.detach(), rstd, rand(3, 5, 24, grad=False))),
        (ops.swiglu.default, (g, u)),
        (ops.swiglu_backward.default, (rand(4, 33, grad=False), g.detach(), u.detach())),
        (ops.swiglu_packed.default, (packed,)),
        (ops.swiglu_packed_backward.default, (rand(2, 3, 33, grad=False), packed.detach())),
    ]


def test_opcheck_reference_path():
    for op, args in _op_cases("cpu"):
        torch.library.opcheck(op, args)


@pytest.mark.skipif(not _INTERPRET, reason="needs TRITON_INTERPRET=1")
def test_opcheck_triton_path_interpreted():
    with kernels.triton_on_cpu():
        for op, args in _op_cases("cpu"):
            torch.library.opcheck(op, args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_opcheck_triton_path_cuda():
    for op, args in _op_cases("cuda"):
        torch.library.opcheck(op, args)


def test_cpu_ops_run_the_reference():
    """Without triton_on_cpu, CPU tensors take the PyTorch reference (what CPU training runs)."""
    x, w = torch.randn(6, 40, dtype=torch.bfloat16), torch.randn(40, dtype=torch.bfloat16)
    assert torch.equal(kernels.rms_norm(x, w, 1e-5), kernels.rms_norm_reference(x, w, 1e-5))
    r = torch.randn(6, 40, dtype=torch.bfloat16)
    y, h = kernels.rms_norm_residual(x, r, w, 1e-5)
    assert torch.equal(h, x + r)
    assert torch.equal(y, kernels.rms_norm_reference(x + r, w, 1e-5))
    packed = torch.randn(2, 5, 80)
    assert torch.equal(kernels.swiglu(packed), kernels.swiglu_reference(packed))
    g, u = packed.chunk(2, dim=-1)
    assert torch.equal(kernels.swiglu(g, u), torch.nn.functional.silu(g) * u)


def test_swiglu_rejects_bad_inputs():
    with pytest.raises(ValueError):
        kernels.swiglu(torch.randn(3, 5))                    # packed needs an even last dim
    with pytest.raises(ValueError):
        kernels.swiglu(torch.randn(3, 4), torch.randn(3, 5))  # gate and up must match


def test_import_does_not_import_triton():
    code = "import sys, perfkit.kernels, perfkit.model; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
