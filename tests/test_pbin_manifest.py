"""The manifest beside a .pbin: round trip, absent (a Modalities .pbin), stale, damaged."""
import shutil

import numpy as np
import pytest

from perfkit.formats.pbin import write_pbin
from perfkit.formats.pbin_manifest import (ManifestError, PbinManifest, SourceRecord, TokenizerRecord,
                                           manifest_path, read_manifest, write_manifest)


def _pack(path, seed=0):
    tokens = np.random.default_rng(seed).integers(0, 50257, 1000).astype("<u2")
    write_pbin(path, tokens, np.array([300, 400, 300]), token_width=2)
    return path


def _manifest():
    tok = TokenizerRecord(kind="tiktoken", name="gpt2", vocab_size=50257, eod_id=50256, eod_token="<|endoftext|>")
    return PbinManifest(tokenizer=tok, sources=[SourceRecord(path="/x/a.jsonl", size=10, mtime_ns=1)],
                        documents=3, tokens=1000, text_bytes=4321, token_width=2, skipped={"empty text": 2})


def test_round_trip_and_a_copied_pair_stays_valid(tmp_path):
    pbin = _pack(tmp_path / "c.pbin")
    assert read_manifest(pbin) is None  # no manifest: a Modalities .pbin, still fine
    assert write_manifest(pbin, _manifest()) == manifest_path(pbin) == tmp_path / "c.pbin.json"
    back = read_manifest(pbin)
    assert back.tokenizer == _manifest().tokenizer and back.skipped == {"empty text": 2}
    assert back.bytes_per_token == pytest.approx(4.321)
    (tmp_path / "copy").mkdir()
    shutil.copy(manifest_path(pbin), tmp_path / "copy" / "d.pbin.json")  # manifest copied first
    shutil.copy(pbin, tmp_path / "copy" / "d.pbin")                     # .pbin newer: still valid
    assert read_manifest(tmp_path / "copy" / "d.pbin").documents == 3


def test_a_replaced_pbin_makes_the_manifest_stale(tmp_path):
    pbin = _pack(tmp_path / "c.pbin")
    write_manifest(pbin, _manifest())
    _pack(pbin, seed=1)  # same size, other tokens
    with pytest.raises(ManifestError, match=r"c\.pbin\.json: stale: .*contents differ"):
        read_manifest(pbin)
    pbin.write_bytes(pbin.read_bytes()[:-5])
    with pytest.raises(ManifestError, match=r"stale: it describes a [\d,]+-byte \.pbin"):
        read_manifest(pbin)


@pytest.mark.parametrize("text,why", [("{", "not valid JSON"), ('{"documents": 1}', "not a perfkit .pbin manifest"),
                                      ('{"format": "x"}', "not a perfkit .pbin manifest")])
def test_a_damaged_manifest_is_named(tmp_path, text, why):
    pbin = _pack(tmp_path / "c.pbin")
    manifest_path(pbin).write_text(text)
    with pytest.raises(ManifestError, match=f"c.pbin.json: {why}"):
        read_manifest(pbin)
