"""SentencePiece `.model` in `perfkit pack` / `perfkit inspect`: per document sentencepiece's own
encode(text) + EOD, a text that encodes to nothing as an EOD-only document, and a one-line error
with an install hint where sentencepiece is missing. The model is trained here, in a second."""

from __future__ import annotations

import io
import json
import sys

import pytest

spm = pytest.importorskip("sentencepiece")  # in the test extra; perfkit[sentencepiece] for users

from hf_tokenizers import random_texts, reference_pbin, training_texts  # noqa: E402
from perfkit import inspect_cmd  # noqa: E402
from perfkit.prep import pack_cmd as pack  # noqa: E402
from perfkit.prep.tokenizer import TokenizerError, TokenizerSpec, resolve_tokenizer  # noqa: E402


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def model_path(request, tmp_path_factory):
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(training_texts()), model_writer=out, vocab_size=400,
                                   model_type=request.param, character_coverage=1.0, byte_fallback=True,
                                   user_defined_symbols=["<|endoftext|>"], minloglevel=2)
    path = tmp_path_factory.mktemp("sp") / f"{request.param}.model"
    path.write_bytes(out.getvalue())
    return path


def test_pack_is_sentencepiece_encode_plus_eod(model_path, write_jsonl, tmp_path):
    texts = random_texts(60, seed=11) + ["", "   ", "\n\t\n", "Grüße 東京 🤖", "x" * 4000,
                                         "a literal <|endoftext|> inside", "ends with <|endoftext|>"]
    src = write_jsonl([{"text": t} for t in texts * 2])
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(model_path), "--eod-token", "</s>",
                      "--workers", "2", "--chunk-mb", "0.002", "--no-progress"]) == 0
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    docs = [sp.encode(t) for t in texts * 2]
    assert docs[61] == [] and docs[62] == []  # whitespace only: nothing, so an EOD-only document below
    assert dst.read_bytes() == reference_pbin(docs, sp.piece_to_id("</s>"), 2)
    # a user-defined EOD piece that ends a text is not doubled (Modalities' rule)
    dst2 = tmp_path / "o2.pbin"
    assert pack.main([str(src), "-o", str(dst2), "--tokenizer", str(model_path), "--no-progress"]) == 0
    assert dst2.read_bytes() == reference_pbin(docs, sp.piece_to_id("<|endoftext|>"), 2)


def test_record_and_inspect(model_path, write_jsonl, tmp_path, capsys):
    tok = resolve_tokenizer(TokenizerSpec(str(model_path)))
    rec = tok.record(tok.token_id("</s>"))
    assert (rec.kind, rec.vocab_size, rec.eod_token, rec.file) == ("sentencepiece", 400, "</s>", str(model_path))
    src = write_jsonl([{"text": "To be, or not to be"}])
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(model_path), "--eod-token", "</s>",
                      "--no-progress"]) == 0
    capsys.readouterr()
    assert inspect_cmd.main([str(dst), "--tokenizer", str(model_path), "--eod-token", "</s>", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["document"]["text"].startswith("To be, or not to be")


def test_bad_sentencepiece_input_is_one_line_and_writes_nothing(model_path, write_jsonl, tmp_path, capsys,
                                                                monkeypatch):
    src = write_jsonl([{"text": "hello"}])
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01 not a model")
    cases = [([str(junk)], f"{junk}: not a SentencePiece model"),
             ([str(model_path), "--eod-token", "<nope>"], "EOD token '<nope>' (--eod-token / settings.eod_token)"
                                                          " is not a piece of")]
    for args, expected in cases:
        dst = tmp_path / "never.pbin"
        assert pack.main([str(src), "-o", str(dst), "--tokenizer", *args, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
        assert not dst.exists()
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed
    with pytest.raises(TokenizerError, match=r"needs the sentencepiece package: pip install 'perfkit\[sentencepiece\]'"):
        resolve_tokenizer(TokenizerSpec(str(model_path)))
    assert pack.main([str(src), "-o", str(tmp_path / "never.pbin"), "--tokenizer", str(model_path),
                      "--no-progress"]) == 1
    assert "pip install 'perfkit[sentencepiece]'" in capsys.readouterr().err
    assert not (tmp_path / "never.pbin").exists()
