"""Bits per byte of the validation text (perfkit/train/bits_per_byte.py, train/evaluate.py, plot).

The reference is computed directly, not through perfkit's table: the model's per-token losses
summed in bits over every target, divided by the UTF-8 bytes of the documents' texts that those
targets cover (Python's str.encode, not tiktoken). The corpus starts with an empty document (its
EOD is token 0, never a target) and the windows end at the last token, so the targets are exactly
the other documents with their EODs.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_train import CPU_DEBUG, records  # noqa: E402
from test_train_data import make_dataset, tiny_overrides, write_pbin  # noqa: E402

tiktoken = pytest.importorskip("tiktoken")
EOD = 50256
TEXTS = ["", "Hello, world.", "naïve café — 東京タワー 🚀 ok", "def f(x):\n    return x * 2\n",
         "Ünïcödé\u00a0spaces\tand tabs", "The quick brown fox jumps over the lazy dog. " * 3,
         "Ελληνικά και русский текст", "ok"]


@pytest.fixture(scope="module")
def enc():
    try:
        return tiktoken.get_encoding("r50k_base")  # `perfkit fetch` caches it (CI does)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"GPT-2 ranks not cached ({e}); run `perfkit fetch`")


def corpus(enc):
    """(texts, docs, S): documents (tokens + EOD) whose targets, in windows of S, cover all but
    token 0 (the first, empty document's EOD) exactly; an odd window count pads the last batch of 2."""
    texts = list(TEXTS)
    while True:
        docs = [enc.encode_ordinary(t) + [EOD] for t in texts]
        targets = sum(map(len, docs)) - 1
        for s in range(5, 17):
            if targets % s == 0 and (targets // s) % 2 == 1:
                return texts, docs, s
        texts.append("a")


def val_dataset(tmp_path, enc, *, manifest_tokenizer: str | None = "gpt2", text_bytes_delta: int = 0, name="v"):
    from perfkit.data.windows import WindowDataset
    from perfkit.formats.pbin_manifest import PbinManifest, SourceRecord, TokenizerRecord, write_manifest

    texts, docs, seq = corpus(enc)
    path = write_pbin(tmp_path / f"{name}.pbin", [np.asarray(d) for d in docs])
    if manifest_tokenizer is not None:
        tok = TokenizerRecord(kind="tiktoken", name=manifest_tokenizer, vocab_size=50257, eod_id=EOD,
                              eod_token="<|endoftext|>")
        write_manifest(path, PbinManifest(
            tokenizer=tok, sources=[SourceRecord(path="/x.jsonl", size=1, mtime_ns=1)], documents=len(docs),
            tokens=sum(map(len, docs)), text_bytes=sum(len(t.encode()) for t in texts) + text_bytes_delta,
            token_width=2))
    return texts, docs, WindowDataset([str(path)], seq, reuse_last_target=True, config_key="$.data.val")


def tiny_model(seq: int):
    from perfkit.config import ModelConfig
    from perfkit.model.gpt import GPT

    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=50257, sequence_length=seq, n_layer=1, n_embd=16, n_head_q=2, n_head_kv=2,
                           ffn_hidden=32, kernels="torch")).eval()


def direct_bits_per_byte(model, docs, texts, seq) -> tuple[float, int, int]:
    """(bits / bytes, targets, bytes) from the model's logits, one window at a time."""
    tokens = torch.tensor([t for d in docs for t in d])
    bits, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, seq):
            x, y = tokens[start:start + seq], tokens[start + 1:start + seq + 1]
            logits = model(x[None]).double()[0]  # (S, padded vocab), as the model's own loss sees them
            bits += F.cross_entropy(logits, y, reduction="sum").item() / math.log(2)
            count += len(y)
    covered = sum(len(t.encode("utf-8")) for t in texts[1:])  # every document but the empty first
    return bits / covered, count, covered


def test_exact_bpb_is_the_sum_of_bits_over_the_covered_documents_bytes(tmp_path, enc):
    from perfkit.data.loader import ValLoader
    from perfkit.train import bits_per_byte
    from perfkit.train.evaluate import evaluate_sums

    texts, docs, ds = val_dataset(tmp_path, enc)
    val_bytes, line = bits_per_byte.resolve(ds, "", 50304)
    assert val_bytes.token_bytes is not None and "tokenizer gpt2" in line  # the manifest's tokenizer
    model = tiny_model(ds.seq_len)
    loader = ValLoader(ds, micro_batch_size=2, rank=0, world_size=1, device=torch.device("cpu"))
    assert loader.num_samples % 2 == 1  # the last batch is padded with ignored targets
    result = evaluate_sums(model, loader, torch.device("cpu"), token_bytes=torch.from_numpy(val_bytes.token_bytes))
    expected, targets, covered = direct_bits_per_byte(model, docs, texts, ds.seq_len)
    assert result.tokens == targets == sum(map(len, docs)) - 1
    assert result.text_bytes == covered
    assert val_bytes.bits_per_byte(result) == pytest.approx(expected, rel=1e-6)
    assert 5 < expected < 40  # an untrained model: about ln(50304) / ln 2 bits per token over ~3 bytes


def test_token_bytes_add_up_to_the_utf8_text(enc):
    from perfkit.train.bits_per_byte import token_byte_lengths

    table = token_byte_lengths(enc, 50304)
    assert table.shape == (50304,) and table[EOD] == 0 and not table[50257:].any()
    for text in TEXTS:
        ids = enc.encode_ordinary(text)
        assert int(table[ids].sum()) == len(text.encode("utf-8"))


def test_manifest_ratio_when_the_tokenizer_cannot_be_loaded(tmp_path, enc):
    from perfkit.train import bits_per_byte
    from perfkit.train.evaluate import EvalResult

    texts, docs, ds = val_dataset(tmp_path, enc, manifest_tokenizer="no_such_encoding")
    val_bytes, line = bits_per_byte.resolve(ds, "", 50304)
    assert val_bytes.token_bytes is None and "manifests' bytes per token" in line and "no_such_encoding" in line
    tokens, text = sum(map(len, docs)), sum(len(t.encode()) for t in texts)
    result = EvalResult(loss=3.0, tokens=100, text_bytes=None)
    assert val_bytes.bits_per_byte(result) == pytest.approx(3.0 / math.log(2) * tokens / text, rel=1e-12)


def test_a_manifest_the_tokenizer_does_not_reproduce(tmp_path, enc):
    from perfkit.errors import UserError
    from perfkit.train import bits_per_byte

    _, _, ds = val_dataset(tmp_path, enc, text_bytes_delta=1)
    val_bytes, line = bits_per_byte.resolve(ds, "", 50304)  # from the manifest: falls back to its ratio
    assert val_bytes.token_bytes is None and "its manifest records" in line
    with pytest.raises(UserError, match=r"\$\.metrics\.bpb_tokenizer: tokenizer 'gpt2' gives .* text bytes, "
                                         r"its manifest records"):
        bits_per_byte.resolve(ds, "gpt2", 50304)  # named explicitly: a wrong tokenizer is an error


def test_without_manifest_or_key_bpb_is_not_logged_and_says_why(tmp_path, enc):
    from perfkit.data.windows import WindowDataset
    from perfkit.errors import UserError
    from perfkit.train import bits_per_byte

    _, _, ds = val_dataset(tmp_path, enc, manifest_tokenizer=None)
    val_bytes, line = bits_per_byte.resolve(ds, "", 50304)
    assert val_bytes is None
    assert line.startswith("val/bpb not logged: ") and ds.files[0].path in line and "$.metrics.bpb_tokenizer" in line
    assert bits_per_byte.resolve(ds, "gpt2", 50304)[0].token_bytes is not None
    with pytest.raises(UserError, match=r"^\$\.metrics\.bpb_tokenizer: tokenizer 'nope' for bits per byte"):
        bits_per_byte.resolve(ds, "nope", 50304)
    assert bits_per_byte.resolve(None, "", 50304) == (None, "")  # no validation set: nothing to say
    # a local ranks file without a split pattern: its ranks are enough; 256 single bytes hold ids < 256
    (tmp_path / "bytes.tiktoken").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    learnable = WindowDataset([str(write_pbin(tmp_path / "b.pbin", [np.arange(256)] * 3))], 16, config_key="$.data.val")
    val_bytes, line = bits_per_byte.resolve(learnable, str(tmp_path / "bytes.tiktoken"), 256)
    assert "(val files: 1.000 bytes per token)" in line and val_bytes.token_bytes.tolist() == [1] * 256
    beyond = WindowDataset([str(write_pbin(tmp_path / "c.pbin", [np.array([1, 60000, EOD])] * 8))], 4,
                           config_key="$.data.val")
    with pytest.raises(UserError, match=r"^\$\.metrics\.bpb_tokenizer: .*c\.pbin holds token id 60000, beyond the "
                                         r"50,257 ids of tokenizer 'gpt2'; is it the tokenizer that packed the file\?"):
        bits_per_byte.resolve(beyond, "gpt2", 60032)


def test_mixed_tokenizers_are_an_error_and_a_stale_manifest_counts_as_none(tmp_path, enc):
    from perfkit.data.windows import WindowDataset
    from perfkit.errors import UserError
    from perfkit.train import bits_per_byte

    _, docs, ds = val_dataset(tmp_path, enc, name="a")
    _, _, other = val_dataset(tmp_path, enc, manifest_tokenizer="cl100k_base", name="b")
    both = WindowDataset([ds.files[0].path, other.files[0].path], ds.seq_len, config_key="$.data.val")
    with pytest.raises(UserError, match=r"^\$\.data\.val: the files were packed with different tokenizers"):
        bits_per_byte.resolve(both, "", 50304)
    write_pbin(Path(ds.files[0].path), [np.asarray(d) for d in reversed(docs)])  # replaced: the manifest is stale
    changed = WindowDataset([ds.files[0].path], ds.seq_len, config_key="$.data.val")
    val_bytes, line = bits_per_byte.resolve(changed, "", 50304)
    assert val_bytes is None and "a.pbin has no usable .pbin.json manifest" in line


def test_training_logs_val_bpb_everywhere(tmp_path, capsys):
    """The tiny data's ids are < 256, which GPT-2 maps to one byte each: bpb = val loss / ln 2."""
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4, doc_len=100)
    base = [CPU_DEBUG, *tiny_overrides(tmp_path, train, val), "--training.max_steps=4", "--training.eval_every=2",
            "--metrics.log_every=2"]
    assert main(base + ["--metrics.bpb_tokenizer=gpt2"]) == 0
    err = capsys.readouterr().err
    assert "perfkit train: val/bpb from the UTF-8 bytes of each evaluated target token, tokenizer gpt2" in err
    run_dir = tmp_path / "runs" / "test"
    val_records = records(run_dir, "val")
    assert [r["step"] for r in val_records] == [2, 4]
    for r in val_records:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-9)
    assert f"val bpb {val_records[-1]['val_bpb']:.4f}" in err

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [round(e.value, 4) for e in events.Scalars("val/bpb")] == [round(r["val_bpb"], 4) for r in val_records]

    assert main(base + ["--run.experiment_id=nobpb"]) == 0  # no manifest, no key: one line, no val_bpb
    err = capsys.readouterr().err
    assert f"perfkit train: val/bpb not logged: {val} has no usable .pbin.json manifest" in err
    assert all("val_bpb" not in r for r in records(tmp_path / "runs" / "nobpb", "val"))


def test_plot_draws_bpb_as_a_third_panel(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from perfkit import plot_cmd

    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    lines = [{"step": 10, "kind": "train", "loss": 5.0, "tokens_per_s_per_gpu": 10.0},
             {"step": 10, "kind": "val", "val_loss": 4.0, "val_bpb": 1.5},
             {"step": 20, "kind": "val", "val_loss": 3.5, "val_bpb": 1.25}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    drawn = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, out, **kw: drawn.update(axes=fig.axes))
    assert plot_cmd.main([str(path.parent), "-o", str(tmp_path / "o.png")]) == 0
    axes = drawn["axes"]
    assert [a.get_title() for a in axes] == ["loss", "throughput", "val bits per byte"]
    (line,) = axes[2].get_lines()
    assert list(line.get_xdata()) == [10, 20] and list(line.get_ydata()) == [1.5, 1.25]
    assert "val bpb 1.2500 (step 20)" in capsys.readouterr().out
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "val_bpb"}) + "\n" for r in lines))
    assert plot_cmd.main([str(path.parent), "-o", str(tmp_path / "o.png")]) == 0
    assert len(drawn["axes"]) == 2  # no bits per byte logged: the two panels as before
