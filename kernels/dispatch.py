"""Which implementation an op runs: the Triton kernels on CUDA, the PyTorch reference elsewhere.

On CPU the registered ops run the reference (that is what CPU training uses). Tests switch the
CPU path to the Triton kernels themselves, run by Triton's interpreter (TRITON_INTERPRET=1 must be
set before the kernel modules are first imported), with `triton_on_cpu()`.
"""

from __future__ import annotations

import contextlib

import torch

_triton_on_cpu = False


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels should handle tensor t."""
    if t.device.type == "cuda":
        return True
    return _triton_on_cpu and t.device.type == "cpu"


@contextlib.contextmanager
def triton_on_cpu(enabled: bool = True):
    """Within this block the ops run the Triton kernels on CPU tensors (interpreter; tests only)."""
    global _triton_on_cpu
    previous, _triton_on_cpu = _triton_on_cpu, enabled
    try:
        yield
    finally:
        _triton_on_cpu = previous
