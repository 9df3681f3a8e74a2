"""The r50k -> HF GPT-2 tokenizer folder conversion in bench/modalities_compare.py.

CPU only; the r50k tests skip without tiktoken's cached ranks, the HF check skips without a
Modalities venv (MODALITIES_VENV, default /tmp/modvenv).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from perfkit.bench.modalities_compare import verify_tokenizer
from perfkit.bench.tokenizer_files import (EOT, EOT_ID, bpe_parts, bytes_to_unicode, derive_merges, load_ranks,
                                           r50k_ranks_path, write_hf_gpt2_folder)


def merges_bpe(word: bytes, merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    """BPE the way a merges.txt consumer does it: apply the listed pair of lowest merge index first."""
    order = {pair: i for i, pair in enumerate(merges)}
    parts = [word[i:i + 1] for i in range(len(word))]
    while len(parts) > 1:
        cands = [(order[(parts[i], parts[i + 1])], i) for i in range(len(parts) - 1)
                 if (parts[i], parts[i + 1]) in order]
        if not cands:
            break
        _, i = min(cands)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def toy_ranks(extra: list[bytes]) -> dict[bytes, int]:
    ranks = {bytes([b]): (b * 37) % 256 for b in range(256)}  # a permutation: bytes need not be in order
    for i, tok in enumerate(extra):
        ranks[tok] = 256 + i
    return ranks


def test_bytes_to_unicode_is_gpt2_alphabet():
    t = bytes_to_unicode()
    assert len(set(t.values())) == 256
    assert t[ord("A")] == "A" and t[ord("~")] == "~" and t[0xE9] == "é"
    assert t[ord(" ")] == "\u0120" and t[ord("\n")] == "\u010a" and t[0] == "\u0100"  # Ġ, Ċ, Ā
    assert all(c.isprintable() and not c.isspace() for c in t.values())


def test_derive_merges_toy():
    ranks = toy_ranks([b"ab", b"bc", b"abc", b"abcd", b"cd"])
    merges = derive_merges(ranks)
    # abc: with ranks below it, "ab" (256) beats "bc" (257) -> (ab, c); abcd -> (abc, d); cd -> (c, d)
    assert merges == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"abc", b"d"), (b"c", b"d")]
    for word in (b"abcd", b"bcd", b"xabcdcd", b"cab"):
        assert merges_bpe(word, merges) == bpe_parts(word, ranks, len(ranks))


def test_derive_merges_refuses_unreachable_token():
    with pytest.raises(ValueError, match="not one merge"):
        derive_merges(toy_ranks([b"abc"]))  # no "ab" or "bc" below it
    with pytest.raises(ValueError, match="single bytes first"):
        derive_merges({b"a": 0, b"ab": 1})


@pytest.fixture(scope="module")
def r50k():
    try:
        path = r50k_ranks_path()
    except Exception as e:  # noqa: BLE001 - no tiktoken cache and no network
        pytest.skip(f"r50k_base ranks unavailable: {e}")
    return load_ranks(path)


def test_r50k_merges_and_vocab(r50k, tmp_path):
    import tiktoken

    enc = tiktoken.get_encoding("r50k_base")
    folder = write_hf_gpt2_folder(r50k, tmp_path / "hf_gpt2")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 50257 and vocab[EOT] == EOT_ID
    assert vocab["\u0120the"] == enc.encode_ordinary(" the")[0]
    assert lines[0].startswith("#version") and len(lines) == 1 + 50000
    assert lines[1:4] == ["\u0120 t", "\u0120 a", "h e"]

    b2u = bytes_to_unicode()
    u2b = {c: b for b, c in b2u.items()}
    merges = [tuple(bytes(u2b[c] for c in side) for side in ln.split(" ")) for ln in lines[1:]]
    for word in (" Shakespeare", " antidisestablishmentarianism", "'s", " 1234567", " ¿qué?", "\n\n\n"):
        ids = [r50k[p] for p in merges_bpe(word.encode(), merges)]
        assert ids == enc.encode_ordinary(word), word


def _venv_python() -> Path:
    py = Path(os.environ.get("MODALITIES_VENV", "/tmp/modvenv")) / "bin" / "python"
    if not py.is_file():
        pytest.skip(f"no Modalities venv at {py.parent.parent}")
    ok = subprocess.run([str(py), "-c", "import modalities.tokenization.tokenizer_wrapper"],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("Modalities' tokenizer wrapper does not import in that venv")
    return py


def test_hf_folder_in_modalities_matches_tiktoken(r50k, tmp_path):
    py = _venv_python()
    folder = write_hf_gpt2_folder(r50k, tmp_path / "hf_gpt2")
    texts = ["To be, or not to be: that is the question.", "O Romeo, Romeo! wherefore art thou Romeo?\n\n",
             "  Enter   HAMLET,\treading.  ", "It's 1599 — naïve 日本 🙂"]
    r = verify_tokenizer(py, folder, texts, tmp_path)
    assert r["vocab_size"] == 50257 and r["eod_id"] == EOT_ID
    assert r["corpus_diffs"] == []
    # the one known difference: HF splits the literal special token out, encode_ordinary does not
    assert [d["text"] for d in r["edge_diffs"]] == [f"edge:{'mid ' + EOT + ' text'!r}"]


@pytest.mark.slow
def test_gpt2_tokenizer_json_converts_to_tiktoken_and_matches_r50k(r50k, tmp_path):
    # A real-size byte-level BPE (50,257 ids): perfkit's conversion of the tokenizer.json built from
    # the r50k ranks is verified and chosen, and gives tiktoken's own r50k ids, specials recognised.
    import numpy as np
    import tiktoken

    from perfkit.bench.tokenizer_files import gpt2_tokenizer_json
    from perfkit.prep.tokenizer import TokenizerSpec, resolve_tokenizer

    tok = resolve_tokenizer(TokenizerSpec(str(gpt2_tokenizer_json(tmp_path / "hf_gpt2"))))
    assert tok.fast is not None and tok.note is None and tok.n_vocab == 50257 and tok.token_width == 2
    enc = tiktoken.get_encoding("r50k_base")
    texts = ["To be, or not to be: that is the question.", f"a {EOT} b{EOT}", "  naïve 日本 🙂\r\n\n 12345 ",
             "I'll've 'S 's", ""]
    ids, lengths = tok.encode_batch(texts)
    got = [p.tolist() for p in np.split(ids, np.cumsum(lengths)[:-1])]
    assert got == [enc.encode(t, allowed_special={EOT}) for t in texts]
