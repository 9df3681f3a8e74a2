"""JSONL chunking and text extraction: every line lands in exactly one byte-range chunk, in order."""

import os

import numpy as np
import pytest

from perfkit.prep.jsonl import (BAD_UTF8, BLANK, MALFORMED, MISSING, NOT_OBJECT, NOT_STRING, TRUNCATED,
                                TextExtractor, extract_texts, parse_text_key, read_line_chunk)


@pytest.mark.parametrize("final_newline", [True, False])
def test_chunks_partition_the_lines(tmp_path, final_newline):
    rng = np.random.default_rng(0)
    lines = [b"x" * int(n) for n in rng.integers(0, 300, 400)]
    body = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path = tmp_path / "f.jsonl"
    path.write_bytes(body)
    fd = os.open(path, os.O_RDONLY)
    try:
        for chunk_bytes in (1, 7, 64, 299, 1000, len(body)):
            got, offsets = [], []
            for start in range(0, len(body), chunk_bytes):
                ch = read_line_chunk(fd, start, start + chunk_bytes, len(body))
                got += [ch.line(i) for i in range(ch.num_lines)]
                offsets += (ch.starts + ch.base).tolist()
                assert all(start <= o < start + chunk_bytes for o in (ch.starts + ch.base).tolist())
            assert got == lines, chunk_bytes
            assert offsets == np.cumsum([0] + [len(x) + 1 for x in lines[:-1]]).tolist()
    finally:
        os.close(fd)


def test_text_key_forms():
    assert parse_text_key("text") == ("text",)
    assert parse_text_key(".text") == ("text",)
    assert parse_text_key("meta.body.text") == ("meta", "body", "text")
    for bad in ("", ".", "a..b", "a."):
        with pytest.raises(ValueError, match="--text-key"):
            parse_text_key(bad)


def test_every_reason_is_classified(tmp_path):
    lines = [
        (b'{"a": {"t": "ok"}}', None),
        (b'{"a": {"t": "ok"}, "junk": [1, {"x": null}]}\r', None),
        (b"", BLANK),
        (b" \t\r", BLANK),
        (b'{"a": {"t": "x"}', MALFORMED),
        (b'{"a": {"t": "x"}} {"a": 1}', MALFORMED),
        (b'{"a": {"t": "x"}},{"a": {"t": "y"}}', MALFORMED),
        (b'"just a string"', NOT_OBJECT),
        (b'{"a": {"u": "x"}}', MISSING),
        (b'{"a": "not an object"}', MISSING),
        (b'{"a": {"t": ["x"]}}', NOT_STRING),
        (b'{"a": {"t": "x"}, "b": "\xc3\x28"}', BAD_UTF8),
        (b'{"a": {"t": "cut', TRUNCATED),
    ]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in lines))  # no final newline: the last is truncated
    fd = os.open(path, os.O_RDONLY)
    try:
        ch = read_line_chunk(fd, 0, path.stat().st_size, path.stat().st_size)
    finally:
        os.close(fd)
    texts, good, bad = extract_texts(ch, TextExtractor(("a", "t")), stop_at_first_bad=False)
    assert texts == ["ok", "ok"] and good.tolist() == [r is None for _, r in lines]
    assert bad == [(i, r) for i, (_, r) in enumerate(lines) if r is not None]
    _, _, first = extract_texts(ch, TextExtractor(("a", "t")), stop_at_first_bad=True)
    assert first == [(2, BLANK)]
