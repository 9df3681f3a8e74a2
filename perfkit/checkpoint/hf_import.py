"""Warm start from a Hugging Face folder (`--checkpoint.warm_start=DIR`): config.json + safetensors.

The folder's config.json (a Llama or GPT-2 model, as `perfkit export --format hf` writes or the
hub publishes) is checked against the run's `$.model`: a difference that changes a tensor's shape
is refused naming the key (checkpoint/hf_mapping.py `check_fits`), differences that change only the
numbers (rope_theta, norm eps, GPT-2's tanh GELU) are reported. The tensors are read from
safetensors only, renamed to perfkit's (hf_mapping.from_hf) and loaded like an export's full
state dict. An HF vocabulary of exactly `$.model.vocab_size` rows (unpadded, e.g. GPT-2's 50257)
fills the first rows of the padded embedding; the padding rows keep their fresh init.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from perfkit.checkpoint.hf_files import read_weights
from perfkit.checkpoint.hf_mapping import check_fits, from_hf, pad_vocab_rows
from perfkit.checkpoint.layout import CheckpointError
from perfkit.config import ModelConfig


def read_hf_state(folder: Path, model_config: dict, current: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """(perfkit state dict of full CPU tensors, notes to report) for the run's model.

    `current` is the model's own state dict (get_model_state_dict; DTensors under FSDP2): its
    padding rows are kept when the folder's vocabulary is unpadded, and a tied head that the
    state dict lists under both names gets the embedding under both."""
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: unreadable ({e})") from None
    cfg = ModelConfig(**{**model_config, "kernels": "torch"})
    _, notes = check_fits(hf, cfg, str(folder))  # before the weights are read
    state = from_hf(read_weights(folder), cfg, str(folder))
    # gathered only when the folder's vocabulary is unpadded (the same decision on every rank, so
    # each rank joins the same full_tensor all-gathers): an 8B model's embedding is GBs per rank
    rows = hf.get("vocab_size")
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in current.items()
            if k in ("tok_emb.weight", "lm_head.weight") and rows != v.shape[0]}
    padded = pad_vocab_rows(state, full)
    if padded:
        notes.append(f"vocab_size = {hf.get('vocab_size')} rows fill the first rows of the padded "
                     f"{', '.join(padded)}; the padding rows keep their init")
    if cfg.tie_embeddings and "lm_head.weight" in current:
        state["lm_head.weight"] = state["tok_emb.weight"]
    return state, notes
