"""Typed run configuration: one msgspec Struct per TOML section.

This module depends on nothing else in perfkit. Each component receives only its own section
(the model gets `ModelConfig`, the loader `DataConfig`, ...). Decoding rejects unknown keys and
wrong types with the key path in the message (msgspec's `at $.model.n_layer`).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Decoder-only GPT. Defaults are GPT-2 small class with modern choices (RoPE, SwiGLU, RMSNorm)."""

    vocab_size: int = 50304          # the model pads it up to a multiple of 64
    sequence_length: int = 1024      # longest context; also the training window length
    n_layer: int = 12
    n_embd: int = 768
    n_head_q: int = 12
    n_head_kv: int = 12              # < n_head_q: grouped-query attention
    ffn_hidden: int = 2048           # SwiGLU hidden width (GELU MLPs use it as the 4*n_embd width)
    positions: Literal["rope", "none", "learned"] = "rope"
    rope_base: float = 10000.0
    activation: Literal["swiglu", "gelu"] = "swiglu"
    norm: Literal["rms_norm", "layer_norm"] = "rms_norm"
    norm_eps: float = 1e-5
    bias: bool = False
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_std: float = 0.02           # "scaled" init: residual projections use init_std / sqrt(2 * n_layer)
    kernels: Literal["triton", "torch"] = "triton"  # Triton RMSNorm/SwiGLU ops or the PyTorch reference

    def __post_init__(self):
        _positive(self, "model", ("vocab_size", "sequence_length", "n_layer", "n_embd",
                                  "n_head_q", "n_head_kv", "ffn_hidden"))
        if self.n_embd % self.n_head_q:
            raise ValueError(f"$.model.n_embd ({self.n_embd}) must be divisible by $.model.n_head_q ({self.n_head_q})")
        if self.n_head_q % self.n_head_kv:
            raise ValueError(f"$.model.n_head_q ({self.n_head_q}) must be a multiple of $.model.n_head_kv ({self.n_head_kv})")
        if self.positions == "rope" and (self.n_embd // self.n_head_q) % 2:
            raise ValueError("$.model: RoPE needs an even head dimension (n_embd / n_head_q)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"$.model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0 or self.init_std <= 0 or self.rope_base <= 0:
            raise ValueError("$.model.norm_eps, init_std and rope_base must be > 0")


class DataConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Training and validation .pbin files and how windows are cut and ordered."""

    train: list[str] = []                    # .pbin files (perfkit's or Modalities')
    train_weights: list[float] | None = None  # mixture weights, one per train file (None: concatenate)
    val: list[str] = []
    reuse_last_target: bool = True           # Modalities' continuous windows (overlap by one token)
    shuffle: bool = True
    seed: int = 42
    prefetch: int = 2                        # batches staged ahead on the device

    def __post_init__(self):
        if self.train_weights is not None:
            if len(self.train_weights) != len(self.train):
                raise ValueError(f"$.data.train_weights has {len(self.train_weights)} entries "
                                 f"but $.data.train has {len(self.train)}")
            if any(w < 0 for w in self.train_weights) or sum(self.train_weights) <= 0:
                raise ValueError("$.data.train_weights must be >= 0 with a positive sum")
        if self.prefetch < 1:
            raise ValueError("$.data.prefetch must be >= 1")


def _positive(section: msgspec.Struct, name: str, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = getattr(section, f)
        if v <= 0:
            raise ValueError(f"$.{name}.{f} must be > 0, got {v}")


class CheckpointConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sharded checkpoints under <run folder>/checkpoints/step_<N>/, committed by a marker file."""

    every_steps: int = 0          # 0: only at the end (if save_at_end)
    keep_last: int = 3            # complete checkpoints kept; older ones are deleted after a new one commits
    save_at_end: bool = True
    resume: str = "none"          # "none", "auto" (newest complete checkpoint of this run), or a checkpoint path
    warm_start: str = ""          # a checkpoint or export path: load weights only (fresh optimizer and schedule)

    def __post_init__(self):
        if self.every_steps < 0:
            raise ValueError(f"$.checkpoint.every_steps must be >= 0, got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"$.checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.resume and self.warm_start and self.resume != "none":
            raise ValueError("$.checkpoint: set resume or warm_start, not both")
