"""`perfkit pack` writes, byte for byte, what Modalities writes: per document in input order
encode_ordinary(text) + [EOD], the 12-byte header, then pickle.dumps of the (offset, length) list.

The reference below is the straightforward loop (json.loads, tiktoken, struct, pickle.dumps)."""

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from perfkit.prep import pack_cmd as pack
from perfkit.formats.pbin import read_pbin

DEMO_VAL = Path(__file__).resolve().parents[1] / "data" / "raw" / "shakespeare_val.jsonl"


def reference_pbin(src: Path, key=("text",), encoding="r50k_base", eod=50256, width=2) -> bytes:
    enc = tiktoken.get_encoding(encoding)
    fmt = {2: "H", 4: "I"}[width]
    data, index = bytearray(), []
    with open(src, "rb") as f:
        for raw_line in f:
            obj = json.loads(raw_line)
            for k in key:
                obj = obj[k]
            ids = enc.encode_ordinary(obj) + [eod]
            chunk = struct.pack(f"<{len(ids)}{fmt}", *ids)
            index.append((len(data), len(chunk)))
            data += chunk
    return struct.pack("<QI", len(data), width) + bytes(data) + pickle.dumps(index, protocol=4)


TRICKY = [
    {"text": "Hello world", "id": 1},
    {"text": ""},                                               # only the EOD token
    {"text": "a literal <|endoftext|> stays text <|endoftext|>"},
    {"text": "Grüße, 東京, emoji 🤖🏳️‍🌈, RTL עברית, combining é"},
    {"text": "  leading and trailing whitespace \n\n\t "},
    {"text": "line\r\nbreaks\rinside\u2028text"},
    {"meta": {"x": [1, 2, {"text": 5}]}, "text": "other fields are ignored", "n": None},
    {"text": "x" * 20000},                                      # one long document
]


def run_pack(src, dst, *extra):
    return pack.main([str(src), "-o", str(dst), "--tokenizer", "gpt2", "--no-progress", *extra])


@pytest.mark.parametrize("workers,chunk_mb", [(1, None), (3, 0.0005), (2, 0.003)])
def test_tricky_corpus_is_byte_identical(write_jsonl, tmp_path, workers, chunk_mb):
    src = write_jsonl(TRICKY * 7)
    dst = tmp_path / "out.pbin"
    extra = ["--workers", str(workers)] + (["--chunk-mb", str(chunk_mb)] if chunk_mb else [])
    assert run_pack(src, dst, *extra) == 0
    assert dst.read_bytes() == reference_pbin(src)
    pb = read_pbin(dst)
    assert pb.num_docs == len(TRICKY) * 7 and pb.doc_tokens(1).tolist() == [50256]
    assert not list(tmp_path.glob(".*.tmp"))


def test_crlf_and_missing_final_newline(write_jsonl, tmp_path):
    src = write_jsonl(TRICKY, newline="\r\n", final_newline=False)
    dst = tmp_path / "out.pbin"
    assert run_pack(src, dst, "--workers", "2", "--chunk-mb", "0.0003") == 0
    assert dst.read_bytes() == reference_pbin(src)


def test_demo_corpus_is_byte_identical(tmp_path):
    dst = tmp_path / "val.pbin"
    assert run_pack(DEMO_VAL, dst, "--workers", "2") == 0
    assert dst.read_bytes() == reference_pbin(DEMO_VAL)


def test_dotted_text_key_jq_style_and_cl100k(write_jsonl, tmp_path):
    records = [{"doc": {"body": {"text": t["text"]}, "x": 1}} for t in TRICKY if "text" in t]
    src = write_jsonl(records)
    dst = tmp_path / "nested.pbin"
    assert run_pack(src, dst, "--text-key", ".doc.body.text", "--workers", "2") == 0
    assert dst.read_bytes() == reference_pbin(src, key=("doc", "body", "text"))
    wide = tmp_path / "wide.pbin"  # a forced 4-byte width: same ids, uint32
    assert run_pack(src, wide, "--text-key", "doc.body.text", "--token-width", "4") == 0
    assert wide.read_bytes() == reference_pbin(src, key=("doc", "body", "text"), width=4)
    try:
        tiktoken.get_encoding("cl100k_base")
    except Exception:
        pytest.skip("cl100k_base ranks not cached on this machine (offline)")
    dst4 = tmp_path / "cl100k.pbin"
    assert pack.main([str(src), "-o", str(dst4), "--tokenizer", "cl100k_base", "--text-key", "doc.body.text",
                      "--no-progress"]) == 0
    assert dst4.read_bytes() == reference_pbin(src, ("doc", "body", "text"), "cl100k_base", 100257, 4)


def test_empty_corpus_gives_an_empty_valid_file(write_jsonl, tmp_path):
    src = write_jsonl([])
    dst = tmp_path / "empty.pbin"
    assert run_pack(src, dst) == 0
    assert dst.read_bytes() == struct.pack("<QI", 0, 2) + pickle.dumps([], protocol=4)


def test_config_file_and_flags_override(write_jsonl, tmp_path, capsys):
    src = write_jsonl([{"body": "one"}, {"body": "two <|endoftext|>"}])
    cfg = tmp_path / "tok.toml"
    cfg.write_text(f"""
[settings]
src_path = "{src}"
dst_path = "{tmp_path / 'from_cfg.pbin'}"
jq_pattern = ".body"
num_cpus = 2
eod_token = "<|endoftext|>"
processing_batch_size = 10

[tokenizer]
name = "gpt2"
""")
    assert pack.main(["--config", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "from_cfg.pbin").read_bytes() == reference_pbin(src, key=("body",))
    assert "packed 2 documents" in capsys.readouterr().out
    # flags win: another output and --force on the same file
    assert pack.main(["--config", str(cfg), "-o", str(tmp_path / "flag.pbin"), "--workers", "1",
                      "--no-progress"]) == 0
    assert (tmp_path / "flag.pbin").read_bytes() == reference_pbin(src, key=("body",))
    bad = tmp_path / "bad.toml"
    bad.write_text("[settings]\nnum_cpus = 'many'\n")
    assert pack.main(["--config", str(bad)]) == 1
    assert "bad.toml" in capsys.readouterr().err


def test_local_tiktoken_file_known_by_sha256(write_jsonl, tmp_path):
    from perfkit.prep.fetch_cmd import R50K_URL, cached_ranks_path
    src = write_jsonl(TRICKY)
    local = tmp_path / "gpt2.tiktoken"
    local.write_bytes(cached_ranks_path(R50K_URL).read_bytes())
    dst = tmp_path / "local.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(local), "--no-progress"]) == 0
    assert dst.read_bytes() == reference_pbin(src)
    # an unknown ranks file needs its pattern and special tokens named
    odd = tmp_path / "odd.tiktoken"
    odd.write_bytes(local.read_bytes() + b"\n")
    assert pack.main([str(src), "-o", str(tmp_path / "x.pbin"), "--tokenizer", str(odd), "--no-progress"]) == 1
    assert pack.main([str(src), "-o", str(tmp_path / "y.pbin"), "--tokenizer", str(odd), "--tokenizer-pattern",
                      "r50k_base", "--special-token", "<|endoftext|>=50256", "--no-progress"]) == 0
    assert (tmp_path / "y.pbin").read_bytes() == reference_pbin(src)
    regex = tiktoken.get_encoding("r50k_base")._pat_str  # a literal split regex works too
    assert pack.main([str(src), "-o", str(tmp_path / "z.pbin"), "--tokenizer", str(odd), "--tokenizer-pattern",
                      regex, "--special-token", "<|endoftext|>=50256", "--no-progress"]) == 0
    assert (tmp_path / "z.pbin").read_bytes() == reference_pbin(src)


def test_summary_line_reports_counts(write_jsonl, tmp_path, capsys):
    src = write_jsonl(TRICKY)
    assert run_pack(src, tmp_path / "s.pbin") == 0
    out = capsys.readouterr().out
    n_tok = read_pbin(tmp_path / "s.pbin").num_tokens
    assert f"packed {len(TRICKY)} documents, {n_tok:,} tokens, {2 * n_tok:,} bytes" in out
    assert "skipped 0 lines" in out


def test_spawned_workers_resolve_their_own_tokenizer(write_jsonl, tmp_path, monkeypatch):
    # macOS/Windows start workers with spawn: nothing is inherited, the job must be enough.
    import multiprocessing as mp
    from perfkit.prep import pack_pipeline
    monkeypatch.setattr(pack_pipeline, "_mp_context", lambda: mp.get_context("spawn"))
    src = write_jsonl(TRICKY * 3)
    dst = tmp_path / "spawn.pbin"
    assert run_pack(src, dst, "--workers", "2", "--chunk-mb", "0.01") == 0
    assert dst.read_bytes() == reference_pbin(src)


def test_workers_beyond_the_usable_cpus_are_capped_with_a_note(write_jsonl, tmp_path, capsys, monkeypatch):
    # 64 processes on 2 cores ran 3-6x slower, silently: now at most the usable CPUs, said in one line.
    from perfkit.prep import index_cmd as rawindex
    monkeypatch.setattr(pack, "default_workers", lambda: 2)
    started = []
    real_run, real_index = pack.run_pack, rawindex.build_raw_index
    monkeypatch.setattr(pack, "run_pack", lambda job, tasks, dst, tok, workers, **kw:
                        started.append(("pack", workers)) or real_run(job, tasks, dst, tok, workers, **kw))
    monkeypatch.setattr(rawindex, "build_raw_index", lambda src, key, workers, *a:
                        started.append(("index", workers)) or real_index(src, key, workers, *a))
    src = write_jsonl(TRICKY * 20)
    dst = tmp_path / "capped.pbin"
    assert run_pack(src, dst, "--workers", "64", "--chunk-mb", "0.001") == 0
    assert dst.read_bytes() == reference_pbin(src)
    assert "perfkit pack: --workers 64 capped at the 2 usable CPUs" in capsys.readouterr().err
    assert rawindex.main([str(src), "-o", str(tmp_path / "c.idx"), "--workers", "9"]) == 0
    assert "perfkit index: --workers 9 capped at the 2 usable CPUs" in capsys.readouterr().err
    cfg = tmp_path / "tok.toml"
    cfg.write_text(f'[settings]\nsrc_path = "{src}"\ndst_path = "{tmp_path / "cfg.pbin"}"\nnum_cpus = 5\n'
                   '[tokenizer]\nname = "gpt2"\n')
    assert pack.main(["--config", str(cfg), "--no-progress"]) == 0
    assert "settings.num_cpus 5 capped at the 2 usable CPUs" in capsys.readouterr().err
    assert run_pack(src, tmp_path / "two.pbin", "--workers", "2") == 0      # at the limit: no note
    assert "capped" not in capsys.readouterr().err
    assert started == [("pack", 2), ("index", 2), ("pack", 2), ("pack", 2)]
