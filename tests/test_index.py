"""`perfkit index` writes Modalities' raw index: pickle of (byte_offset, byte_length) per line,
the newline excluded; bad lines follow the pack policy; `pack --index` packs exactly those lines."""

import pickle

import pytest

from perfkit.prep import index_cmd as rawindex, pack_cmd as pack

RECORDS = [{"text": "alpha"}, {"text": "Grüße 東京"}, {"text": ""}, {"text": "x <|endoftext|> y"}] * 5


def reference_index(path):
    out, pos = [], 0
    for line in path.read_bytes().split(b"\n"):
        if line:
            out.append((pos, len(line)))
        pos += len(line) + 1
    return out


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_raw_index_matches_the_plain_definition(write_jsonl, tmp_path, newline, capsys):
    src = write_jsonl(RECORDS, newline=newline)
    dst = tmp_path / "c.idx"
    assert rawindex.main([str(src), "-o", str(dst), "--workers", "2"]) == 0
    assert dst.read_bytes() == pickle.dumps(reference_index(src), protocol=4)
    assert f"indexed {len(RECORDS)} lines" in capsys.readouterr().out


def test_pack_with_index_equals_pack_without(write_jsonl, tmp_path):
    src = write_jsonl(RECORDS * 30)
    idx = tmp_path / "c.idx"
    assert rawindex.main([str(src), "-o", str(idx)]) == 0
    a, b = tmp_path / "a.pbin", tmp_path / "b.pbin"
    common = ["--tokenizer", "gpt2", "--no-progress", "--workers", "2", "--chunk-mb", "0.001"]
    assert pack.main([str(src), "-o", str(a), *common]) == 0
    assert pack.main([str(src), "-o", str(b), "--index", str(idx), *common]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_index_selects_and_orders_documents(write_jsonl, tmp_path):
    src = write_jsonl(RECORDS)
    entries = reference_index(src)
    chosen = [entries[3], entries[0], entries[3]]  # any subset, any order, repeats
    idx = tmp_path / "pick.idx"
    idx.write_bytes(pickle.dumps(chosen, protocol=4))
    sub = write_jsonl([RECORDS[3], RECORDS[0], RECORDS[3]], name="sub.jsonl")
    a, b = tmp_path / "a.pbin", tmp_path / "b.pbin"
    assert pack.main([str(src), "-o", str(a), "--index", str(idx), "--tokenizer", "gpt2", "--no-progress"]) == 0
    assert pack.main([str(sub), "-o", str(b), "--tokenizer", "gpt2", "--no-progress"]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_bad_lines_error_or_skip(write_jsonl, tmp_path, capsys):
    src = write_jsonl([RECORDS[0], b"{nope", RECORDS[1], b"", RECORDS[2]])
    dst = tmp_path / "c.idx"
    assert rawindex.main([str(src), "-o", str(dst)]) == 1
    assert f"{src}:2: malformed JSON" in capsys.readouterr().err and not dst.exists()
    assert rawindex.main([str(src), "-o", str(dst), "--on-bad-line", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 lines (blank line: 1, malformed JSON: 1)" in out
    good = [e for i, e in enumerate(reference_index(src)) if i in (0, 2, 3)]
    assert dst.read_bytes() == pickle.dumps(good, protocol=4)
    assert rawindex.main([str(src), "-o", str(dst)]) == 1  # exists, no --force
    assert "exists" in capsys.readouterr().err


def test_index_of_another_file_is_refused(write_jsonl, tmp_path, capsys):
    src = write_jsonl(RECORDS)
    idx = tmp_path / "other.idx"
    idx.write_bytes(pickle.dumps([(0, 10), (10_000, 50)], protocol=4))
    assert pack.main([str(src), "-o", str(tmp_path / "o.pbin"), "--index", str(idx), "--tokenizer", "gpt2"]) == 1
    assert "other.idx: entry 1" in capsys.readouterr().err
    idx.write_bytes(b"\x80\x04garbage")
    assert pack.main([str(src), "-o", str(tmp_path / "o.pbin"), "--index", str(idx), "--tokenizer", "gpt2"]) == 1
    assert "other.idx: not a raw index" in capsys.readouterr().err


def test_bad_line_named_by_index_entry(write_jsonl, tmp_path, capsys):
    src = write_jsonl([RECORDS[0], b'{"text": 7}', RECORDS[1]])
    entries = reference_index(src)
    idx = tmp_path / "all.idx"
    idx.write_bytes(pickle.dumps(entries, protocol=4))  # an index that did not validate the text key
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--index", str(idx), "--tokenizer", "gpt2", "--no-progress"]) == 1
    assert f"{src}: index entry 2 (byte offset {entries[1][0]}): text field is not a string" in capsys.readouterr().err
    assert not dst.exists()
    assert pack.main([str(src), "-o", str(dst), "--index", str(idx), "--tokenizer", "gpt2", "--no-progress",
                      "--on-bad-line", "skip"]) == 0
    assert "skipped 1 lines (text field is not a string: 1)" in capsys.readouterr().out
