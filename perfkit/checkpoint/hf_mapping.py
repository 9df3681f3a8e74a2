"""perfkit GPT <-> Hugging Face transformers: which HF architecture, its config.json, tensor names.

Two architectures have an exact equivalent (same function, same numbers):
- RoPE + SwiGLU + RMSNorm (any GQA, tied or untied head, biases optional) -> LlamaForCausalLM.
  perfkit's RoPE rotates the half-split pairs (x[i], x[i + hd/2]) with angle t * base^(-2i/hd)
  (model/rope.py), which is HF's rotate_half convention, so q/k rows are copied unpermuted.
  The packed qkv weight [q | k | v] splits into q_proj / k_proj / v_proj, the packed SwiGLU
  up-projection [gate | up] (kernels/swiglu.py: silu(first half) * second half) into gate_proj / up_proj.
- learned positions + GELU + LayerNorm + bias (n_head_kv == n_head_q) -> GPT2LMHeadModel with
  activation_function "gelu" (exact erf, as F.gelu). GPT-2's Conv1D stores weights as (in, out):
  the transpose of nn.Linear's (out, in).
Any other combination is refused, naming the config key that has no HF equivalent.

Vocabulary: every row of perfkit's padded embedding is written (padded_vocab_size, a multiple of
64) and config.json's vocab_size says that number, so HF's logits equal perfkit's column for
column; the tokenizer's own vocabulary is smaller (ids beyond it are never produced).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perfkit.checkpoint.layout import CheckpointError
from perfkit.config import ModelConfig
from perfkit.errors import UserError
from perfkit.model import padded_vocab_size

LLAMA, GPT2 = "llama", "gpt2"
ARCHITECTURES = {LLAMA: "LlamaForCausalLM", GPT2: "GPT2LMHeadModel"}


def hf_architecture(cfg: ModelConfig) -> str:
    """"llama" or "gpt2" for this model config; UserError naming the key that has no HF equivalent."""
    def refuse(key: str, value: Any, family: str, want: str) -> UserError:
        return UserError(f"$.model.{key} = {value!r} has no Hugging Face equivalent for a {family} model "
                         f"(it needs {want}); export it with --format pt")
    if cfg.positions == "rope":
        for key, want in (("activation", "swiglu"), ("norm", "rms_norm")):
            if getattr(cfg, key) != want:
                raise refuse(key, getattr(cfg, key), "RoPE (Llama)", repr(want))
        return LLAMA
    if cfg.positions == "learned":
        for key, want in (("activation", "gelu"), ("norm", "layer_norm"), ("bias", True)):
            if getattr(cfg, key) != want:
                raise refuse(key, getattr(cfg, key), "learned-position (GPT-2)", repr(want))
        if cfg.n_head_kv != cfg.n_head_q:
            raise refuse("n_head_kv", cfg.n_head_kv, "learned-position (GPT-2)", f"n_head_kv = n_head_q = {cfg.n_head_q}")
        return GPT2
    raise UserError(f"$.model.positions = {cfg.positions!r} has no Hugging Face equivalent (Llama needs "
                    "'rope', GPT-2 'learned'); export it with --format pt")


def hf_config(cfg: ModelConfig, *, dtype: str, eos_id: int | None, bos_id: int | None) -> dict[str, Any]:
    """config.json for the model (transformers 4.x and 5.x read these keys)."""
    arch = hf_architecture(cfg)
    common = {"architectures": [ARCHITECTURES[arch]], "model_type": arch,
              "vocab_size": padded_vocab_size(cfg.vocab_size), "tie_word_embeddings": cfg.tie_embeddings,
              "torch_dtype": {"bf16": "bfloat16", "fp32": "float32"}[dtype], "use_cache": True,
              "bos_token_id": bos_id if bos_id is not None else eos_id, "eos_token_id": eos_id,
              "initializer_range": cfg.init_std}
    if arch == LLAMA:
        return {**common, "hidden_size": cfg.n_embd, "intermediate_size": cfg.ffn_hidden,
                "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head_q,
                "num_key_value_heads": cfg.n_head_kv, "head_dim": cfg.n_embd // cfg.n_head_q,
                "hidden_act": "silu", "max_position_embeddings": cfg.sequence_length,
                "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base,
                "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
                "pretraining_tp": 1}
    return {**common, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head_q,
            "n_inner": cfg.ffn_hidden, "n_positions": cfg.sequence_length, "n_ctx": cfg.sequence_length,
            "activation_function": "gelu", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False}


def to_hf(state_dict: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """perfkit GPT state dict -> HF tensor names (new contiguous tensors; a tied head is not repeated)."""
    arch, hd = hf_architecture(cfg), cfg.n_embd // cfg.n_head_q
    q, kv = cfg.n_head_q * hd, cfg.n_head_kv * hd
    out: dict[str, Tensor] = {}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        get = lambda name: state_dict[b + name]  # noqa: E731
        if arch == LLAMA:
            h = f"model.layers.{i}."
            qkv_names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
            for name, part in zip(qkv_names, get("attn.qkv.weight").split([q, kv, kv])):
                out[h + name + ".weight"] = part
            out[h + "self_attn.o_proj.weight"] = get("attn.proj.weight")
            gate, up = get("mlp.fc.weight").chunk(2, dim=0)
            out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
            out[h + "mlp.down_proj.weight"] = get("mlp.proj.weight")
            if cfg.bias:
                for name, part in zip(qkv_names, get("attn.qkv.bias").split([q, kv, kv])):
                    out[h + name + ".bias"] = part
                out[h + "self_attn.o_proj.bias"] = get("attn.proj.bias")
                out[h + "mlp.gate_proj.bias"], out[h + "mlp.up_proj.bias"] = get("mlp.fc.bias").chunk(2)
                out[h + "mlp.down_proj.bias"] = get("mlp.proj.bias")
            out[h + "input_layernorm.weight"] = get("attn_norm.weight")
            out[h + "post_attention_layernorm.weight"] = get("mlp_norm.weight")
        else:
            h = f"transformer.h.{i}."
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                out[h + theirs + ".weight"] = get(ours + ".weight").t()  # Conv1D: (in, out)
                out[h + theirs + ".bias"] = get(ours + ".bias")
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[h + theirs + ".weight"], out[h + theirs + ".bias"] = get(ours + ".weight"), get(ours + ".bias")
    if arch == LLAMA:
        out["model.embed_tokens.weight"] = state_dict["tok_emb.weight"]
        out["model.norm.weight"] = state_dict["final_norm.weight"]
    else:
        out["transformer.wte.weight"] = state_dict["tok_emb.weight"]
        out["transformer.wpe.weight"] = state_dict["pos_emb.weight"]
        out["transformer.ln_f.weight"] = state_dict["final_norm.weight"]
        out["transformer.ln_f.bias"] = state_dict["final_norm.bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state_dict["lm_head.weight"]
    # safetensors refuses tensors that share storage: the split q/k/v and gate/up views are copied
    return {k: v.clone(memory_format=torch.contiguous_format) if v._base is not None else v.contiguous()
            for k, v in out.items()}


def from_hf(tensors: dict[str, Tensor], cfg: ModelConfig, folder: str) -> dict[str, Tensor]:
    """HF tensors -> perfkit names for `cfg` (the inverse of to_hf). Older checkpoints store
    buffers derived from the config (GPT-2's causal mask attn.bias / attn.masked_bias, Llama's
    rotary_emb.inv_freq): those are not weights and are skipped."""
    arch = hf_architecture(cfg)
    buffers = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
    tensors = {k: v for k, v in tensors.items() if not k.endswith(buffers)}
    if arch == GPT2 and not any(k.startswith("transformer.") for k in tensors):
        tensors = {"transformer." + k if k != "lm_head.weight" else k: v for k, v in tensors.items()}  # GPT2Model

    def take(name: str) -> Tensor:
        try:
            return tensors.pop(name)
        except KeyError:
            raise CheckpointError(f"{folder}: tensor {name} is missing from its safetensors files") from None

    out: dict[str, Tensor] = {}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        if arch == LLAMA:
            h = f"model.layers.{i}."
            qkv = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
            out[b + "attn.qkv.weight"] = torch.cat([take(h + n + ".weight") for n in qkv])
            out[b + "attn.proj.weight"] = take(h + "self_attn.o_proj.weight")
            out[b + "mlp.fc.weight"] = torch.cat([take(h + "mlp.gate_proj.weight"), take(h + "mlp.up_proj.weight")])
            out[b + "mlp.proj.weight"] = take(h + "mlp.down_proj.weight")
            if cfg.bias:
                out[b + "attn.qkv.bias"] = torch.cat([take(h + n + ".bias") for n in qkv])
                out[b + "attn.proj.bias"] = take(h + "self_attn.o_proj.bias")
                out[b + "mlp.fc.bias"] = torch.cat([take(h + "mlp.gate_proj.bias"), take(h + "mlp.up_proj.bias")])
                out[b + "mlp.proj.bias"] = take(h + "mlp.down_proj.bias")
            out[b + "attn_norm.weight"] = take(h + "input_layernorm.weight")
            out[b + "mlp_norm.weight"] = take(h + "post_attention_layernorm.weight")
        else:
            h = f"transformer.h.{i}."
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                                 ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                out[b + ours + ".weight"] = take(h + theirs + ".weight").t()
                out[b + ours + ".bias"] = take(h + theirs + ".bias")
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[b + ours + ".weight"], out[b + ours + ".bias"] = take(h + theirs + ".weight"), take(h + theirs + ".bias")
    if arch == LLAMA:
        out["tok_emb.weight"], out["final_norm.weight"] = take("model.embed_tokens.weight"), take("model.norm.weight")
    else:
        out["tok_emb.weight"], out["pos_emb.weight"] = take("transformer.wte.weight"), take("transformer.wpe.weight")
        out["final_norm.weight"], out["final_norm.bias"] = take("transformer.ln_f.weight"), take("transformer.ln_f.bias")
    head = tensors.pop("lm_head.weight", None)
    if not cfg.tie_embeddings:
        if head is None:
            raise CheckpointError(f"{folder}: has no lm_head.weight (its head is tied to the embedding), "
                                  "but $.model.tie_embeddings is false; set it to true")
        out["lm_head.weight"] = head
    if tensors:
        raise CheckpointError(f"{folder}: tensors that $.model has no place for: {sorted(tensors)[:10]}")
    return {k: v.contiguous() for k, v in out.items()}


# HF config key -> the perfkit $.model key whose tensor shape it sets, per architecture
_SHAPE_KEYS = {
    LLAMA: (("hidden_size", "n_embd"), ("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head_q"),
            ("num_key_value_heads", "n_head_kv"), ("intermediate_size", "ffn_hidden"),
            ("attention_bias", "bias"), ("mlp_bias", "bias"), ("tie_word_embeddings", "tie_embeddings")),
    GPT2: (("n_embd", "n_embd"), ("n_layer", "n_layer"), ("n_head", "n_head_q"), ("n_inner", "ffn_hidden"),
           ("n_positions", "sequence_length"), ("tie_word_embeddings", "tie_embeddings")),
}
_HF_DEFAULTS = {"num_key_value_heads": None, "attention_bias": False, "mlp_bias": False,
                "tie_word_embeddings": {LLAMA: False, GPT2: True}, "n_inner": None}


def check_fits(hf: dict[str, Any], cfg: ModelConfig, folder: str) -> tuple[str, list[str]]:
    """(arch, notes): CheckpointError naming the $.model key whose shape differs from the HF
    config; notes list the differences that change numbers but not shapes (reported, as a warm
    start from a perfkit checkpoint reports them)."""
    arch = hf_architecture(cfg)
    if hf.get("model_type") != arch:
        raise CheckpointError(f"{folder} holds a {hf.get('model_type')!r} model; $.model (positions = "
                              f"{cfg.positions!r}) maps onto {arch!r} ({ARCHITECTURES[arch]})")
    for hf_key, key in _SHAPE_KEYS[arch]:
        value = hf.get(hf_key)
        if value is None and hf_key in _HF_DEFAULTS:  # unset: transformers' default, or derived from another key
            value = _HF_DEFAULTS[hf_key][arch] if isinstance(_HF_DEFAULTS[hf_key], dict) else _HF_DEFAULTS[hf_key]
            if hf_key == "num_key_value_heads":
                value = hf.get("num_attention_heads")
            elif hf_key == "n_inner" and isinstance(hf.get("n_embd"), int):
                value = 4 * hf["n_embd"]
        if value is None:
            raise CheckpointError(f"{folder}: its config.json has no {hf_key} (needed for $.model.{key})")
        if value != getattr(cfg, key):
            raise CheckpointError(f"{folder} does not fit $.model.{key}: its config.json has {hf_key} = "
                                  f"{value!r}, $.model.{key} is {getattr(cfg, key)!r}")
    rows, padded = hf.get("vocab_size"), padded_vocab_size(cfg.vocab_size)
    if rows not in (padded, cfg.vocab_size):
        raise CheckpointError(f"{folder} does not fit $.model.vocab_size: its config.json has vocab_size = "
                              f"{rows!r}, $.model.vocab_size = {cfg.vocab_size} (embedding rows {padded})")
    if arch == LLAMA and hf.get("head_dim", cfg.n_embd // cfg.n_head_q) != cfg.n_embd // cfg.n_head_q:
        raise CheckpointError(f"{folder} does not fit $.model.n_head_q: its head_dim {hf.get('head_dim')} is "
                              f"not $.model.n_embd / $.model.n_head_q = {cfg.n_embd // cfg.n_head_q}")
    notes = []
    if arch == LLAMA:
        theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = (hf.get("rope_parameters") or hf.get("rope_scaling") or {}).get("rope_type", "default")
        compared = (("rope_theta", theta, "rope_base", cfg.rope_base), ("rms_norm_eps", hf.get("rms_norm_eps"),
                    "norm_eps", cfg.norm_eps), ("hidden_act", hf.get("hidden_act", "silu"), "activation", "silu"),
                    ("rope_type", rope_type, "positions", "default"))
    else:
        compared = (("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-5), "norm_eps", cfg.norm_eps),
                    ("activation_function", hf.get("activation_function", "gelu_new"), "activation", "gelu"))
    for hf_key, value, key, ours in compared:
        if value != ours:
            notes.append(f"{hf_key} = {value!r} (perfkit computes $.model.{key} as {ours!r})")
    return arch, notes


def pad_vocab_rows(state: dict[str, Tensor], current: dict[str, Tensor]) -> list[str]:
    """An HF model whose vocab_size is the unpadded $.model.vocab_size: its rows are written into
    the first rows of the model's own (padded) tensors, the padding rows keep their values. Returns
    the names padded."""
    padded = []
    for name in ("tok_emb.weight", "lm_head.weight"):
        if name in state and name in current and state[name].shape[0] < current[name].shape[0]:
            full = current[name].detach().to("cpu", torch.float32).clone()
            full[: state[name].shape[0]] = state[name].float()
            state[name] = full
            padded.append(name)
    return padded
