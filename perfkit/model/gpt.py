"""Decoder-only GPT: token (+ learned position) embedding, n_layer pre-norm blocks, final norm, head.

Construction allocates parameters without meaningful values when done under
`torch.device("meta")`; `init_weights()` then fills every parameter and buffer in place, so a
trainer can construct on meta, shard (fully_shard), `to_empty(device=...)`, and initialize.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from perfkit.config import ModelConfig

from .accounting import padded_vocab_size
from .layers import Block, RMSNorm, make_norm
from .loss import LMLoss
from .rope import rope_tables


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = padded_vocab_size(cfg.vocab_size)  # logits' last dimension
        self.head_dim = cfg.n_embd // cfg.n_head_q
        self.tok_emb = nn.Embedding(self.vocab_size, cfg.n_embd)
        self.pos_emb = (nn.Embedding(cfg.sequence_length, cfg.n_embd)
                        if cfg.positions == "learned" else None)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, self.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.loss = LMLoss(fused=cfg.fused_linear_cross_entropy)  # no parameters; see loss.py
        if cfg.positions == "rope":
            # (sequence_length, head_dim/2) fp32; derived from the config, so never checkpointed
            half = self.head_dim // 2
            self.register_buffer("rope_cos", torch.empty(cfg.sequence_length, half), persistent=False)
            self.register_buffer("rope_sin", torch.empty(cfg.sequence_length, half), persistent=False)
        else:
            self.rope_cos = self.rope_sin = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The seed's "scaled" init, in place: linears and embeddings N(0, init_std), residual
        output projections N(0, init_std / sqrt(2 * n_layer)), norms one, biases zero; RoPE
        tables recomputed. On meta tensors this is a no-op."""
        if self.cfg.tie_embeddings and self.lm_head.weight is not self.tok_emb.weight:
            # Module.to_empty() from meta makes one new Parameter per module, untying the head;
            # tie again (under FSDP2 prefer set_swap_module_params_on_conversion(True), which keeps it)
            self.lm_head.weight = self.tok_emb.weight
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)
        if self.rope_cos is not None:
            cos, sin = rope_tables(self.cfg.sequence_length, self.head_dim, self.cfg.rope_base,
                                   device=self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        """idx (B, T) int64 -> logits (B, T, padded vocab) in the compute dtype; with targets
        (B, T) int64 -> () fp32 mean cross-entropy over the targets that are not -100."""
        B, T = idx.shape
        if T > self.cfg.sequence_length:
            raise ValueError(f"sequence of {T} tokens exceeds sequence_length {self.cfg.sequence_length}")
        x = self.tok_emb(idx)  # (B, T, n_embd)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        x = self.drop(x)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.rope_cos is not None else None
        for block in self.blocks:
            x = block(x, rope)
        x = self.final_norm(x)  # (B, T, n_embd)
        if targets is None:
            return self.lm_head(x)  # (B, T, vocab)
        return self.loss(x, self.lm_head.weight, targets)
