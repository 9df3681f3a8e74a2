"""The trainer reads the manifests beside its .pbin files: a tokenizer larger than the model, or
train and val packed with different tokenizers, stop the run before the model is built."""
from __future__ import annotations

from pathlib import Path

from test_train_data import VOCAB, make_dataset, tiny_overrides

from perfkit.formats.pbin_manifest import PbinManifest, SourceRecord, TokenizerRecord, manifest_path, write_manifest

CPU_DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "cpu_debug.toml")


def _describe(pbin: Path, *, vocab: int = VOCAB, sha: str = "a" * 64) -> None:
    tok = TokenizerRecord(kind="hf", name="tok/", vocab_size=vocab, eod_id=vocab - 1, eod_token="</s>",
                          file="/tok/tokenizer.json", sha256=sha)
    write_manifest(pbin, PbinManifest(tokenizer=tok, sources=[SourceRecord(path="/x.jsonl", size=1, mtime_ns=0)],
                                      documents=1, tokens=1, text_bytes=1, token_width=2))


def _train(argv, capsys) -> tuple[int, str]:
    from perfkit.train.train_cmd import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_a_tokenizer_larger_than_the_model_is_refused_naming_the_file(tmp_path, capsys):
    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4, doc_len=100)
    _describe(train, vocab=VOCAB + 1)  # every id in the file fits: the tokenizer could produce one that does not
    rc, err = _train([CPU_DEBUG, *tiny_overrides(tmp_path, train, val), "--training.max_steps=1"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert f"$.model.vocab_size ({VOCAB:,}) is smaller than the vocabulary of the tokenizer that packed " \
           f"$.data.train[0] {train}" in err and f">= {VOCAB + 1:,}" in err
    assert not (tmp_path / "runs" / "test").exists()  # refused before the run folder


def test_train_and_val_from_different_tokenizers_are_refused(tmp_path, capsys):
    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4, doc_len=100)
    _describe(train, sha="a" * 64)
    _describe(val, sha="b" * 64)
    rc, err = _train([CPU_DEBUG, *tiny_overrides(tmp_path, train, val), "--training.max_steps=1"], capsys)
    assert rc == 2
    assert f"$.data.train[0] {train} and $.data.val[0] {val} were packed with different tokenizers" in err


def test_same_tokenizer_trains_and_a_stale_manifest_is_only_a_warning(tmp_path, capsys):
    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4, doc_len=100)
    _describe(train)
    _describe(val)
    stale = manifest_path(val).read_text().replace('"bytes": ', '"bytes": 1')  # as if the .pbin were replaced
    manifest_path(val).write_text(stale)
    rc, err = _train([CPU_DEBUG, *tiny_overrides(tmp_path, train, val), "--training.max_steps=1"], capsys)
    assert rc == 0, err
    assert f"warning: $.data.val[0]: {manifest_path(val)}: stale" in err and "the manifest is ignored" in err
