"""`perfkit export --format hf`: transformers loads the folder and computes perfkit's logits; the
tokenizer.json written for tiktoken encodes as tiktoken does."""

from __future__ import annotations

import json
from types import SimpleNamespace

import msgspec
import pytest
import tiktoken
import torch
from tokenizers import Tokenizer as HFTokenizer

from isolation import child_import
from perfkit.checkpoint import Checkpointer
from perfkit.checkpoint.hf_export import export_hf
from perfkit.checkpoint.hf_mapping import hf_architecture
from perfkit.checkpoint.hf_tokenizer import tiktoken_to_hf_json
from perfkit.cli import main as cli
from perfkit.config import CheckpointConfig, ModelConfig
from perfkit.errors import UserError
from perfkit.model import GPT, padded_vocab_size
from perfkit.prep.tokenizer import _builtin_definition  # a built-in's split regex without its ranks

pytestmark = pytest.mark.isolated  # transformers runs in a child process: tests/isolation.py
transformers = child_import("transformers")

# GPT-2's vocabulary (50257 tokens, padded to 50304 rows), 2 layers, 64 wide
LLAMA_CFG = ModelConfig(vocab_size=50257, sequence_length=64, n_layer=2, n_embd=64, n_head_q=4, n_head_kv=2,
                        ffn_hidden=128, kernels="torch", rope_base=5000.0, norm_eps=1e-6)
GPT2_CFG = ModelConfig(vocab_size=50257, sequence_length=64, n_layer=2, n_embd=64, n_head_q=4, n_head_kv=4,
                       ffn_hidden=256, kernels="torch", positions="learned", activation="gelu",
                       norm="layer_norm", bias=True)
TINY_LLAMA = msgspec.structs.replace(LLAMA_CFG, vocab_size=301)  # with tiny_tokenizer_json
TEXT = "The quick brown fox jumps over the lazy dog. 12345 Ünïcödé  spaces\n\tand tabs! It's done."
VARIED = [TEXT, "", " ", "   leading and trailing   ", "a\n\n\nb\r\n\r\nc", "I'm you're he'll we've they'd",
          "3.14159 2,718 1000000 0x1F 007", "東京タワー 👍🏽👩‍👩‍👧 naïve café", "x" * 300 + " " * 17 + "y",
          "def f(x):\n    return x ** 2  # comment\n", "<html><body>Hi&nbsp;there</body></html>",
          "\u00a0\u2003\u3000 odd spaces", "ALL CAPS SHOUTING!!! ??? ...", "mixed123abc456 a1b2c3"]


def _random_weights(model: GPT) -> None:
    """Every parameter random (norm weights and biases too): a mapping mistake cannot hide behind ones/zeros."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _checkpoint(run_dir, cfg):
    model = GPT(cfg)
    _random_weights(model)
    Checkpointer(CheckpointConfig(), run_dir, model=model, optimizer=None, progress=SimpleNamespace(step=3),
                 model_config=cfg).save(3)
    return model.eval()


def _hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()  # config.json says float32
    assert model.dtype == torch.float32
    with torch.no_grad():
        return model, model(torch.tensor([ids])).logits[0]


def tiny_encoding() -> tiktoken.Encoding:
    """GPT-2's first 300 ranks (the bytes and the first merges: a valid BPE) + <|endoftext|> = 300."""
    r50k = tiktoken.get_encoding("r50k_base")
    return tiktoken.Encoding("tiny", pat_str=r50k._pat_str, special_tokens={"<|endoftext|>": 300},
                             mergeable_ranks={t: r for t, r in r50k._mergeable_ranks.items() if r < 300})


def tiny_tokenizer_json(folder) -> str:
    """tiny_encoding() as a tokenizer.json: models of 320 rows export and load in a fraction of GPT-2's time."""
    path = folder / "tiny_tokenizer.json"
    path.write_text(json.dumps(tiktoken_to_hf_json(tiny_encoding())))
    return str(path)


def _export_and_compare(tmp_path, cfg, arch, tokenizer, ids):
    ours = _checkpoint(tmp_path / "run", cfg)
    assert cli(["export", str(tmp_path / "run"), "--format", "hf", "-o", str(tmp_path / "hf"),
                "--tokenizer", tokenizer, "--dtype", "fp32"]) == 0
    model, theirs = _hf_logits(tmp_path / "hf", ids)
    rows = padded_vocab_size(cfg.vocab_size)
    assert type(model).__name__ == arch and theirs.shape == (len(ids), rows)
    with torch.no_grad():
        want = ours(torch.tensor([ids]))[0]
    assert (theirs - want).abs().max().item() < 1e-4
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vocab_size"] == rows and config["tie_word_embeddings"] is cfg.tie_embeddings
    return transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")


@pytest.mark.parametrize("cfg, arch", [(LLAMA_CFG, "LlamaForCausalLM"), (GPT2_CFG, "GPT2LMHeadModel")],
                         ids=["llama-gqa-untied", "gpt2-untied"])
def test_transformers_logits_and_tokenizer_equal_perfkit(tmp_path, cfg, arch):
    ids = tiktoken.get_encoding("r50k_base").encode_ordinary(TEXT)
    tok = _export_and_compare(tmp_path, cfg, arch, "gpt2", ids)
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == ids and tok.eos_token_id == 50256
    assert tok.decode(ids) == TEXT
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 50256


@pytest.mark.parametrize("cfg, arch", [(msgspec.structs.replace(LLAMA_CFG, vocab_size=301, tie_embeddings=True,
                                                                bias=True, n_head_kv=1), "LlamaForCausalLM"),
                                       (msgspec.structs.replace(GPT2_CFG, vocab_size=301, tie_embeddings=True),
                                        "GPT2LMHeadModel")],
                         ids=["llama-mqa-tied-bias", "gpt2-tied"])
def test_tied_and_biased_variants_equal_perfkit(tmp_path, cfg, arch):
    tokenizer = tiny_tokenizer_json(tmp_path)
    ids = tiny_encoding().encode_ordinary(TEXT)
    tok = _export_and_compare(tmp_path, cfg, arch, tokenizer, ids[:cfg.sequence_length])
    assert tok(TEXT, add_special_tokens=False)["input_ids"] == ids and tok.eos_token_id == 300


@pytest.mark.parametrize("pattern_of", ["r50k_base", "cl100k_base", "o200k_base"])
def test_tiktoken_tokenizer_json_encodes_like_tiktoken(pattern_of):
    """GPT-2's ranks under each built-in split regex (cl100k's possessive `\\p{N}{1,3}+` reads
    otherwise in the tokenizers library's regex engine unless rewritten)."""
    r50k = tiktoken.get_encoding("r50k_base")
    enc = tiktoken.Encoding(pattern_of, pat_str=_builtin_definition(pattern_of)[0],
                            mergeable_ranks=r50k._mergeable_ranks, special_tokens={"<|endoftext|>": 50256})
    hf = HFTokenizer.from_str(json.dumps(tiktoken_to_hf_json(enc)))
    for text in VARIED:
        assert hf.encode(text, add_special_tokens=False).ids == enc.encode_ordinary(text), text
        assert hf.decode(enc.encode_ordinary(text)) == text
    assert hf.token_to_id("<|endoftext|>") == 50256
    # a random byte soup of printable and unicode characters, the split regex's corner cases
    g = torch.Generator().manual_seed(1)
    alphabet = list("aZ9 \n\t.,'!é東👍\u00a0-_") + ["'s", "'ll", "  ", "\r\n"]
    soup = "".join(alphabet[i] for i in torch.randint(len(alphabet), (4000,), generator=g).tolist())
    assert hf.encode(soup, add_special_tokens=False).ids == enc.encode_ordinary(soup)


def test_sharded_safetensors_load(tmp_path):
    ours = _checkpoint(tmp_path / "run", TINY_LLAMA)
    summary = export_hf(tmp_path / "run", tmp_path / "hf", tokenizer=tiny_tokenizer_json(tmp_path), dtype="fp32",
                        max_shard_bytes=40_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == [f for f in summary["files"] if f.endswith(".safetensors")]
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    ids = [1, 2, 3, 300, 299]
    _, theirs = _hf_logits(tmp_path / "hf", ids)
    with torch.no_grad():
        assert (theirs - ours(torch.tensor([ids]))[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("change, key", [({"positions": "none"}, "$.model.positions"),
                                         ({"activation": "gelu"}, "$.model.activation"),
                                         ({"norm": "layer_norm"}, "$.model.norm"),
                                         ({"positions": "learned", "activation": "gelu", "norm": "layer_norm"},
                                          "$.model.bias"),
                                         ({"positions": "learned", "activation": "gelu", "norm": "layer_norm",
                                           "bias": True}, "$.model.n_head_kv")])
def test_combinations_without_hf_equivalent_are_refused_by_key(change, key):
    with pytest.raises(UserError, match=key.replace("$", r"\$")):
        hf_architecture(msgspec.structs.replace(LLAMA_CFG, **change))


def test_refusals_write_nothing(tmp_path, capsys):
    tokenizer = tiny_tokenizer_json(tmp_path)
    _checkpoint(tmp_path / "run", msgspec.structs.replace(TINY_LLAMA, positions="none"))
    assert cli(["export", str(tmp_path / "run"), "--format", "hf", "-o", str(tmp_path / "hf"),
                "--tokenizer", tokenizer]) == 1
    assert "$.model.positions" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]  # no temporary folder left
    # a run without a tokenizer named anywhere: the message says how to name one
    _checkpoint(tmp_path / "run2", TINY_LLAMA)
    assert cli(["export", str(tmp_path / "run2"), "--format", "hf", "-o", str(tmp_path / "hf")]) == 1
    assert "--tokenizer" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    # a SentencePiece model cannot be written loadably; a tokenizer larger than the model's rows is refused
    (tmp_path / "sp.model").write_bytes(b"\x00")
    assert cli(["export", str(tmp_path / "run2"), "--format", "hf", "-o", str(tmp_path / "hf"),
                "--tokenizer", str(tmp_path / "sp.model")]) == 1
    assert "SentencePiece" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    _checkpoint(tmp_path / "run3", msgspec.structs.replace(TINY_LLAMA, vocab_size=200))  # 256 rows < 301 tokens
    assert cli(["export", str(tmp_path / "run3"), "--format", "hf", "-o", str(tmp_path / "hf"),
                "--tokenizer", tokenizer]) == 1
    assert "$.model.vocab_size" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf")]
    # an existing folder is replaced only with --force
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    assert cli(["export", str(tmp_path / "run2"), "--format", "hf", "-o", str(tmp_path / "hf"),
                "--tokenizer", tokenizer]) == 1
    assert "pass --force" in capsys.readouterr().err and (tmp_path / "hf" / "keep.txt").exists()
    assert cli(["export", str(tmp_path / "run2"), "--format", "hf", "-o", str(tmp_path / "hf"),
                "--tokenizer", tokenizer, "--force"]) == 0
    assert not (tmp_path / "hf" / "keep.txt").exists() and (tmp_path / "hf" / "model.safetensors").is_file()


def test_tokenizer_comes_from_the_runs_data_manifest(tmp_path, capsys):
    """No --tokenizer: the .pbin.json beside the run's first data.train file names it (here an HF
    tokenizer.json, copied as it is); a stale manifest is refused naming it, nothing written."""
    import numpy as np

    from perfkit.formats.pbin import write_pbin
    from perfkit.formats.pbin_manifest import PbinManifest, TokenizerRecord, write_manifest
    tokenizer = tiny_tokenizer_json(tmp_path)
    pbin = tmp_path / "train.pbin"
    write_pbin(pbin, np.arange(200) % 301, np.array([100, 100]), 2)
    record = TokenizerRecord(kind="hf", name=tokenizer, vocab_size=301, eod_id=300, eod_token="<|endoftext|>",
                             file=tokenizer)
    write_manifest(pbin, PbinManifest(tokenizer=record, sources=[], documents=2, tokens=200, text_bytes=400,
                                      token_width=2))
    model = GPT(TINY_LLAMA)
    Checkpointer(CheckpointConfig(), tmp_path / "run", model=model, optimizer=None, progress=SimpleNamespace(step=1),
                 model_config=TINY_LLAMA, config={"data": {"train": [str(pbin)]}}).save(1)
    assert cli(["export", str(tmp_path / "run"), "--format", "hf", "-o", str(tmp_path / "hf")]) == 0
    assert "train.pbin.json" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (tmp_path / "tiny_tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 300
    write_pbin(pbin, np.arange(300) % 301, np.array([300]), 2)  # replaced .pbin: its manifest is stale
    assert cli(["export", str(tmp_path / "run"), "--format", "hf", "-o", str(tmp_path / "hf2")]) == 1
    assert "train.pbin.json: stale" in capsys.readouterr().err and not (tmp_path / "hf2").exists()


def test_a_model_pt_export_converts_to_the_same_tensors(tmp_path):
    from safetensors.torch import load_file

    from perfkit.checkpoint.export import export_checkpoint
    _checkpoint(tmp_path / "run", TINY_LLAMA)
    tokenizer = tiny_tokenizer_json(tmp_path)
    export_checkpoint(tmp_path / "run", tmp_path / "m.pt", dtype="fp32")
    export_hf(tmp_path / "m.pt", tmp_path / "from_pt", tokenizer=tokenizer, dtype="bf16")
    export_hf(tmp_path / "run", tmp_path / "from_ckpt", tokenizer=tokenizer, dtype="bf16")
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("from_pt", "from_ckpt"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == torch.bfloat16 for k in a)
