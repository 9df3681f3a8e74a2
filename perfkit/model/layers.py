"""The transformer block and its parts: norms, causal self-attention (GQA, RoPE), MLP.

`cfg.kernels == "triton"` routes RMSNorm and SwiGLU through the perfkit.kernels ops (Triton on
CUDA, the PyTorch reference on CPU); "torch" calls the reference directly so Inductor can fuse it.
Parameters are created empty; GPT.init_weights() fills them (works after meta construction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perfkit import kernels
from perfkit.config import ModelConfig

from .rope import apply_rope


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, use_triton: bool):
        super().__init__()
        self.eps = eps
        self.use_triton = use_triton
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_triton:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.rms_norm_reference(x, self.weight, self.eps)

    def forward_residual(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(norm(x + residual), x + residual); one fused kernel with Triton."""
        if self.use_triton:
            return kernels.rms_norm_residual(x, residual, self.weight, self.eps)
        h = x + residual
        return self.forward(h), h

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class LayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__(dim, eps=eps, bias=bias)

    def forward_residual(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        h = x + residual
        return self.forward(h), h


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rms_norm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps, use_triton=cfg.kernels == "triton")
    return LayerNorm(cfg.n_embd, cfg.norm_eps, bias=cfg.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with n_head_kv <= n_head_q key/value heads (GQA).

    K/V are never repeated in memory: SDPA's enable_gqa lets each group of n_head_q / n_head_kv
    query heads read the same key/value head (flash attention on GPU).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head_q, self.n_head_kv = cfg.n_head_q, cfg.n_head_kv
        self.head_dim = cfg.n_embd // cfg.n_head_q
        self.dropout = cfg.dropout
        q_width, kv_width = self.n_head_q * self.head_dim, self.n_head_kv * self.head_dim
        self.qkv = nn.Linear(cfg.n_embd, q_width + 2 * kv_width, bias=cfg.bias)
        self.proj = nn.Linear(q_width, cfg.n_embd, bias=cfg.bias)  # residual output projection
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.n_head_q * hd, self.n_head_kv * hd, self.n_head_kv * hd], dim=-1)
        q = q.view(B, T, self.n_head_q, hd).transpose(1, 2)   # (B, nq, T, hd)
        k = k.view(B, T, self.n_head_kv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_head_kv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True,
            enable_gqa=self.n_head_kv != self.n_head_q)       # (B, nq, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head_q * hd)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """SwiGLU: one packed up-projection [gate | up] (n_embd -> 2*ffn_hidden), or GELU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.activation = cfg.activation
        self.use_triton = cfg.kernels == "triton"
        fc_width = 2 * cfg.ffn_hidden if cfg.activation == "swiglu" else cfg.ffn_hidden
        self.fc = nn.Linear(cfg.n_embd, fc_width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.ffn_hidden, cfg.n_embd, bias=cfg.bias)  # residual output projection
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (B, T, fc_width)
        if self.activation == "gelu":
            h = F.gelu(h)
        elif self.use_triton:
            h = kernels.swiglu(h)  # packed: reads both halves in place, (B, T, ffn_hidden)
        else:
            h = kernels.swiglu_reference(h)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h)).

    The second norm takes the residual add with it (one fused kernel with Triton RMSNorm: h is
    written once and not re-read), since Inductor cannot fuse across an opaque kernel.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        a = self.attn(self.attn_norm(x), rope)
        y, h = self.mlp_norm.forward_residual(a, x)  # h = x + a, y = norm(h)
        return h + self.mlp(y)
