"""`perfkit pack --shuffle-docs --seed N`: the .pbin of the documents in the order
numpy.random.Generator(PCG64(N)).permutation(D) gives, whatever the formats (issue 14)."""

import gzip
import json

import numpy as np
import pytest

from perfkit.formats.pbin_manifest import read_manifest
from perfkit.prep import pack_cmd as pack, pack_shuffle
from test_pack import reference_pbin

TEXTS = [f"document {i} " + "word " * (i % 17) + "é" * (i % 3) for i in range(300)] + [""]


def lines(texts):
    return [json.dumps({"text": t}, ensure_ascii=False).encode() + b"\n" for t in texts]


def run(*args):
    return pack.main([*map(str, args), "--tokenizer", "gpt2", "--no-progress"])


def shuffled_reference(tmp_path, texts, seed):
    """Independent reference: the JSONL lines permuted with numpy, then the plain-loop packer."""
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(texts))
    ref = tmp_path / f"ref{seed}.jsonl"
    ls = lines(texts)
    ref.write_bytes(b"".join(ls[i] for i in perm))
    return reference_pbin(ref)


@pytest.mark.parametrize("slice_tokens", [1 << 21, 97])   # one gather slice, or hundreds on 2 threads
def test_shuffle_equals_packing_the_permuted_jsonl(tmp_path, monkeypatch, slice_tokens):
    monkeypatch.setattr(pack_shuffle, "SLICE_TOKENS", slice_tokens)
    src = tmp_path / "c.jsonl"
    src.write_bytes(b"".join(lines(TEXTS)))
    dst = tmp_path / "s.pbin"
    assert run(src, "-o", dst, "--shuffle-docs", "--seed", "5", "--workers", "2", "--chunk-mb", "0.001") == 0
    assert dst.read_bytes() == shuffled_reference(tmp_path, TEXTS, 5)
    assert read_manifest(dst).shuffle_seed == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_seeds_and_formats(tmp_path):
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    a.write_bytes(gzip.compress(b"".join(lines(TEXTS[:100]))))
    b.write_bytes(b"".join(lines(TEXTS[100:])))
    for seed in (0, 1):
        assert run(a, b, "-o", tmp_path / f"{seed}.pbin", "--shuffle-docs", "--seed", seed, "--workers", "2") == 0
        assert (tmp_path / f"{seed}.pbin").read_bytes() == shuffled_reference(tmp_path, TEXTS, seed)
    assert (tmp_path / "0.pbin").read_bytes() != (tmp_path / "1.pbin").read_bytes()
    assert run(a, b, "-o", tmp_path / "d.pbin", "--shuffle-docs", "--workers", "1") == 0   # --seed defaults to 0
    assert (tmp_path / "d.pbin").read_bytes() == (tmp_path / "0.pbin").read_bytes()


def test_shuffle_of_nothing_and_a_seed_without_shuffle(tmp_path, capsys):
    src = tmp_path / "e.jsonl"
    src.write_bytes(b"")
    assert run(src, "-o", tmp_path / "e.pbin", "--shuffle-docs") == 0
    assert (tmp_path / "e.pbin").read_bytes() == reference_pbin(src)
    assert run(src, "-o", tmp_path / "x.pbin", "--seed", "3") == 1
    assert "--seed 3 is only used with --shuffle-docs" in capsys.readouterr().err
    assert run(src, "-o", tmp_path / "x.pbin", "--shuffle-docs", "--seed", "-1") == 1
    assert "--seed must be >= 0" in capsys.readouterr().err
