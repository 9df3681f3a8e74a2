"""Hand-written Triton kernels (imported as perfkit.kernels)."""
