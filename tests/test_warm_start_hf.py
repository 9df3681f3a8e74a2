"""`--checkpoint.warm_start=DIR` with a Hugging Face folder: export -> warm start gives the same
logits; folders written by transformers itself load onto the matching $.model; a shape that
differs is refused naming the key; pickle weights are never loaded."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import msgspec
import pytest
import torch
from safetensors.torch import load_file, save_file

from isolation import child_import
from perfkit.checkpoint import Checkpointer, CheckpointError
from perfkit.checkpoint.hf_export import export_hf
from perfkit.config import CheckpointConfig, Config, ModelConfig
from perfkit.errors import UserError
from perfkit.model import GPT
from perfkit.train.setup import check_outputs
from test_export_hf import tiny_tokenizer_json

pytestmark = pytest.mark.isolated  # transformers runs in a child process: tests/isolation.py
transformers = child_import("transformers")

# 301 tokens (tiny_tokenizer_json), 320 rows after padding
LLAMA_CFG = ModelConfig(vocab_size=301, sequence_length=64, n_layer=2, n_embd=64, n_head_q=4, n_head_kv=2,
                        ffn_hidden=128, kernels="torch")
GPT2_CFG = ModelConfig(vocab_size=301, sequence_length=64, n_layer=2, n_embd=64, n_head_q=4, n_head_kv=4,
                       ffn_hidden=256, kernels="torch", positions="learned", activation="gelu",
                       norm="layer_norm", bias=True)
IDS = torch.tensor([[64, 284, 79, 299, 17, 256, 300, 0, 255, 120, 42, 263]])


def _random_model(cfg: ModelConfig, seed: int) -> GPT:
    model = GPT(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _warm(folder, cfg: ModelConfig, seed: int = 7):
    """A fresh model of `cfg` (other weights) warm-started from `folder`, with its optimizer state."""
    model = _random_model(cfg, seed)
    opt = torch.optim.AdamW(model.parameters())
    progress = SimpleNamespace(step=0)
    ckpt = Checkpointer(CheckpointConfig(warm_start=str(folder)), folder.parent / "new", model=model,
                        optimizer=opt, progress=progress, model_config=cfg)
    assert ckpt.restore() == folder
    assert progress.step == 0 and not opt.state  # weights only
    return model.eval()


@pytest.mark.parametrize("cfg", [LLAMA_CFG, msgspec.structs.replace(LLAMA_CFG, tie_embeddings=True),
                                 GPT2_CFG], ids=["llama", "llama-tied", "gpt2"])
def test_export_then_warm_start_gives_the_same_logits(tmp_path, cfg):
    source = _random_model(cfg, 0)
    Checkpointer(CheckpointConfig(), tmp_path / "run", model=source, optimizer=None,
                 progress=SimpleNamespace(step=1), model_config=cfg).save(1)
    export_hf(tmp_path / "run", tmp_path / "hf", tokenizer=tiny_tokenizer_json(tmp_path), dtype="fp32")
    warm = _warm(tmp_path / "hf", cfg)
    with torch.no_grad():
        assert torch.equal(warm(IDS), source(IDS))
    # a longer context and dropout change no tensor of a RoPE model: a fine-tune may set them
    if cfg.positions == "rope":
        longer = msgspec.structs.replace(cfg, sequence_length=128, dropout=0.1)
        with torch.no_grad():
            assert torch.equal(_warm(tmp_path / "hf", longer).eval()(IDS), source(IDS))


def test_folders_written_by_transformers_load_and_agree(tmp_path, capsys):
    """GPT-2 with an unpadded 301-row vocabulary (perfkit pads to 320: the first rows are the HF
    ones, as for GPT-2's real 50257) and a Llama with GQA, both saved by transformers' save_pretrained."""
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=301, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256,
        activation_function="gelu", layer_norm_epsilon=1e-5)).eval()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0)).eval()
    with torch.no_grad():  # HF initializes norms to one and biases to zero: make every tensor count
        for model in (gpt2, llama):
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    gpt2_tied = msgspec.structs.replace(GPT2_CFG, tie_embeddings=True)  # as GPT2LMHeadModel by default
    for name, hf_model, cfg, columns in (("gpt2", gpt2, gpt2_tied, 301), ("llama", llama, LLAMA_CFG, 320)):
        hf_model.save_pretrained(tmp_path / name, safe_serialization=True)
        ours = _warm(tmp_path / name, cfg)
        with torch.no_grad():
            want = hf_model(IDS).logits
            got = ours(IDS)[..., :columns]
        assert (got - want).abs().max().item() < 1e-4, name
    assert "padding rows keep their init" in capsys.readouterr().err
    # the hub's own GPT-2 files name tensors without "transformer." and keep the causal-mask buffers
    hub = {k.removeprefix("transformer."): v for k, v in load_file(str(tmp_path / "gpt2" / "model.safetensors")).items()}
    hub.update({f"h.{i}.attn.bias": torch.ones(1, 1, 64, 64) for i in range(2)})
    save_file(hub, str(tmp_path / "gpt2" / "model.safetensors"), metadata={"format": "pt"})
    with torch.no_grad():
        assert (_warm(tmp_path / "gpt2", gpt2_tied)(IDS)[..., :301] - gpt2(IDS).logits).abs().max().item() < 1e-4


def _llama_folder(tmp_path):
    Checkpointer(CheckpointConfig(), tmp_path / "run", model=_random_model(LLAMA_CFG, 0), optimizer=None,
                 progress=SimpleNamespace(step=1), model_config=LLAMA_CFG).save(1)
    export_hf(tmp_path / "run", tmp_path / "hf", tokenizer=tiny_tokenizer_json(tmp_path), dtype="bf16")
    return tmp_path / "hf"


@pytest.mark.parametrize("change, key", [({"n_embd": 128, "ffn_hidden": 128}, "$.model.n_embd"),
                                         ({"n_head_kv": 4}, "$.model.n_head_kv"),
                                         ({"n_layer": 3}, "$.model.n_layer"),
                                         ({"ffn_hidden": 256}, "$.model.ffn_hidden"),
                                         ({"vocab_size": 400}, "$.model.vocab_size"),
                                         ({"tie_embeddings": True}, "$.model.tie_embeddings"),
                                         ({"positions": "learned", "activation": "gelu", "norm": "layer_norm",
                                           "bias": True, "n_head_kv": 4}, "'llama' model")])
def test_a_shape_that_differs_is_refused_naming_the_key(tmp_path, change, key):
    folder = _llama_folder(tmp_path)
    cfg = msgspec.structs.replace(LLAMA_CFG, **change)
    model = _random_model(cfg, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(CheckpointConfig(warm_start=str(folder)), tmp_path / "new", model=model,
                        optimizer=None, progress=SimpleNamespace(step=0), model_config=cfg)
    with pytest.raises(CheckpointError, match=key.replace("$", r"\$")):
        ckpt.restore()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


class _Payload:
    """Unpickling this would create `marker`: the folder's .bin must never be unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_refused_unread(tmp_path):
    folder = _llama_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code_ran"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    ckpt = Checkpointer(CheckpointConfig(warm_start=str(folder)), tmp_path / "new", model=GPT(LLAMA_CFG),
                        optimizer=None, progress=SimpleNamespace(step=0), model_config=LLAMA_CFG)
    with pytest.raises(CheckpointError, match="pytorch_model.bin .pickle"):
        ckpt.restore()
    assert not marker.exists()


def test_the_trainer_accepts_an_hf_folder_before_the_process_group(tmp_path):
    folder = _llama_folder(tmp_path)
    cfg = msgspec.convert({"run": {"root": str(tmp_path / "runs")}, "checkpoint": {"warm_start": str(folder)}},
                          Config)
    check_outputs(cfg)  # accepted: no CheckpointError about a missing COMPLETE marker
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    (folder / "config.json").write_text("{}")  # no model_type: neither an HF folder nor a checkpoint
    with pytest.raises(UserError, match=r"\$.checkpoint.warm_start"):
        check_outputs(cfg)
