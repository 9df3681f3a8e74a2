"""`perfkit pack` writes DST.pbin.json beside the .pbin (tokenizer, sources, documents, tokens,
text bytes, skipped lines by reason, version) and `perfkit inspect` shows it (issue 14)."""

import gzip
import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from perfkit import inspect_cmd
from perfkit.formats.pbin import read_pbin
from perfkit.formats.pbin_manifest import manifest_path, read_manifest
from perfkit.prep import pack_cmd as pack

TEXTS = ["Hello world", "", "Grüße aus 東京 🤖", "a literal <|endoftext|> stays text", "x" * 5000]


def run(*args):
    return pack.main([*map(str, args), "--tokenizer", "gpt2", "--no-progress"])


def test_manifest_records_what_was_packed(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in TEXTS) + b"{bad json\n   \n")
    b = tmp_path / "b.jsonl.gz"
    b.write_bytes(gzip.compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in TEXTS[:2])))
    c = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": TEXTS[2:] + [None]}), c)
    dst = tmp_path / "out" / "m.pbin"
    assert run(a, b, c, "-o", dst, "--on-bad-line", "skip", "--workers", "2") == 0
    m = read_manifest(dst)
    pb = read_pbin(dst)
    assert (m.documents, m.tokens, m.token_width) == (pb.num_docs, pb.num_tokens, 2) == (10, pb.num_tokens, 2)
    packed = TEXTS + TEXTS[:2] + TEXTS[2:]
    assert m.text_bytes == sum(len(t.encode("utf-8")) for t in packed)
    assert m.skipped == {"malformed JSON": 1, "blank line": 1, "text is null": 1}
    assert m.tokenizer.name == "gpt2" and m.tokenizer.eod_id == 50256 and m.tokenizer.vocab_size == 50257
    assert [(s.path, s.format, s.documents, s.size) for s in m.sources] == [
        (str(a.resolve()), "jsonl", 5, a.stat().st_size), (str(b.resolve()), "jsonl.gz", 2, b.stat().st_size),
        (str(c.resolve()), "parquet", 3, c.stat().st_size)]
    assert m.sources[0].sha256 == hashlib.sha256(a.read_bytes()).hexdigest()
    assert m.sources[1].mtime_ns == b.stat().st_mtime_ns
    assert m.shuffle_seed is None and m.perfkit_version


def test_inspect_shows_the_manifest_and_reports_a_stale_one(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    dst = tmp_path / "a.pbin"
    assert run(src, "-o", dst) == 0
    capsys.readouterr()
    assert inspect_cmd.main([str(dst)]) == 0
    out = capsys.readouterr().out
    assert "manifest:    a.pbin.json" in out and "tiktoken gpt2" in out and f"{src.resolve()} (jsonl" in out
    assert inspect_cmd.main([str(dst), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["manifest"]["documents"] == len(TEXTS) and r["manifest_problem"] is None
    # a .pbin replaced by another one: the manifest is reported stale and not used
    other = tmp_path / "b.jsonl"
    other.write_text(json.dumps({"text": "something else entirely"}) + "\n")
    assert run(other, "-o", tmp_path / "b.pbin") == 0
    shutil.copy(tmp_path / "b.pbin", dst)
    capsys.readouterr()
    assert inspect_cmd.main([str(dst), "--json"]) == 0          # the .pbin itself is fine
    r = json.loads(capsys.readouterr().out)
    assert r["manifest"] is None and "stale" in r["manifest_problem"]
    # a Modalities .pbin: no manifest, still inspected
    manifest_path(dst).unlink()
    assert inspect_cmd.main([str(dst)]) == 0
    assert "manifest:    none" in capsys.readouterr().out


def test_force_replaces_the_manifest_and_a_failed_pack_keeps_the_old_pair(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    dst = tmp_path / "a.pbin"
    assert run(src, "-o", dst) == 0
    before = (dst.read_bytes(), manifest_path(dst).read_bytes())
    src.write_text(json.dumps({"text": "one"}) + "\n" + "{broken\n")
    assert run(src, "-o", dst, "--force") == 1                   # fails: the old pair is untouched
    assert (dst.read_bytes(), manifest_path(dst).read_bytes()) == before
    assert run(src, "-o", dst, "--force", "--on-bad-line", "skip") == 0
    assert read_manifest(dst).documents == 1 and read_manifest(dst).skipped == {"malformed JSON": 1}


def test_text_bytes_equal_the_bytes_the_tokens_decode_to(tmp_path):
    """Bits per byte divides by text_bytes: it must equal what the packed tokens decode to (EOD
    excluded; a literal "<|endoftext|>" in a text is ordinary text and counts)."""
    import numpy as np
    import tiktoken

    src = tmp_path / "a.jsonl"
    src.write_bytes(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in TEXTS))
    dst = tmp_path / "a.pbin"
    assert run(src, "-o", dst, "--workers", "2") == 0
    enc = tiktoken.get_encoding("r50k_base")
    ids = np.asarray(read_pbin(dst).tokens).astype(np.int64)
    decoded = sum(len(enc.decode_single_token_bytes(int(i))) for i in ids[ids != 50256])
    assert read_manifest(dst).text_bytes == decoded
