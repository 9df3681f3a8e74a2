"""Hand-written Triton kernels (imported as perfkit.kernels).

Importing this package registers the torch.library ops (`perfkit::rms_norm`,
`perfkit::linear_cross_entropy`, ...) and imports
torch only; triton is imported the first time a kernel runs on a CUDA tensor.
"""

from .dispatch import triton_on_cpu
from .linear_cross_entropy import fused_linear_cross_entropy
from .rms_norm import rms_norm, rms_norm_reference, rms_norm_residual
from .swiglu import swiglu, swiglu_reference

__all__ = ["rms_norm", "rms_norm_residual", "rms_norm_reference", "swiglu", "swiglu_reference",
           "triton_on_cpu", "fused_linear_cross_entropy"]
