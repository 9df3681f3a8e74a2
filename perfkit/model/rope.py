"""Rotary position embeddings (RoPE), half-split convention.

A head vector x of size hd is split into halves (x1, x2); pair i = (x1[i], x2[i]) is rotated by the
angle t * base^(-2i/hd) at position t. The tables are recomputed from the config (never saved).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_tables(seq_len: int, head_dim: int, base: float,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(cos, sin), each fp32 of shape (seq_len, head_dim // 2). Angles computed in fp64."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64, device=device), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, n_head, T, hd) rotated by the tables' first T rows (T, hd/2); fp32 math, x's dtype out."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)
