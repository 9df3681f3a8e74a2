"""Parameter counts and FLOPs per token (docs/architecture.md: 6 * N + 12 * n_layer * n_head * head_dim * T)."""

from __future__ import annotations

from torch import nn

from perfkit.config import ModelConfig

VOCAB_MULTIPLE = 64  # pad the vocabulary so the embedding and head matmuls tile well


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def parameter_count(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Parameters of GPT(cfg) counted from the config alone (tests check it against the module).

    non_embedding excludes the token embedding and the learned position embedding; a tied
    output head shares the token embedding, so it is counted once (and excluded with it).
    """
    d, hd, n_layer = cfg.n_embd, cfg.n_embd // cfg.n_head_q, cfg.n_layer
    q_width, kv_width = cfg.n_head_q * hd, cfg.n_head_kv * hd
    b = 1 if cfg.bias else 0
    attn = d * (q_width + 2 * kv_width) + b * (q_width + 2 * kv_width) + q_width * d + b * d
    fc_width = 2 * cfg.ffn_hidden if cfg.activation == "swiglu" else cfg.ffn_hidden
    mlp = d * fc_width + b * fc_width + cfg.ffn_hidden * d + b * d
    norm = d if cfg.norm == "rms_norm" else d + b * d
    vocab = padded_vocab_size(cfg.vocab_size)
    embeddings = vocab * d + (cfg.sequence_length * d if cfg.positions == "learned" else 0)
    head = 0 if cfg.tie_embeddings else vocab * d
    body = n_layer * (attn + mlp + 2 * norm) + norm + head
    return body if non_embedding else body + embeddings


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6 * N_matmul + 12 * n_layer * n_head * head_dim * sequence_length.

    N is the non-embedding parameter count; a tied head still does its (vocab x n_embd) matmul,
    so its weights are added back in that case (an embedding lookup does no FLOPs, a head does).
    """
    n = parameter_count(cfg, non_embedding=True)
    if cfg.tie_embeddings:
        n += padded_vocab_size(cfg.vocab_size) * cfg.n_embd
    head_dim = cfg.n_embd // cfg.n_head_q
    return float(6 * n + 12 * cfg.n_layer * cfg.n_head_q * head_dim * cfg.sequence_length)


def count_parameters(model: nn.Module, non_embedding: bool = False) -> int:
    """Parameters of a GPT module (shared tensors once; sharded DTensors by their global size)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= model.tok_emb.weight.numel()
        if model.pos_emb is not None:
            total -= model.pos_emb.weight.numel()
    return total
