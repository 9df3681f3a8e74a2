"""The .pbin reader and the index pickle codec, against pickle itself and hostile files."""

import io
import pickle
import struct

import numpy as np
import pytest

from perfkit.formats.index_pickle import (IndexPickleError, encode_index_pickle, iter_index_pickle,
                                            parse_index_pickle)
from perfkit.formats.pbin import PbinError, read_pbin, token_dtype, token_width_for_vocab, write_pbin


def pairs(off, ln):
    return [(int(a), int(b)) for a, b in zip(off, ln)]


# Values at every int opcode edge: BININT1 / BININT2 / BININT / LONG1 of 5..8 bytes.
EDGES = [0, 1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**39 - 1, 2**39, 2**47, 2**55, 2**62 - 1]


@pytest.mark.parametrize("n", [0, 1, 2, 999, 1000, 1001, 2000, 2001, 7000, 30011])
def test_encoder_is_byte_identical_to_pickle_dumps(n):
    rng = np.random.default_rng(n)
    for kind in range(4):
        if kind == 0:    # Modalities' shape: contiguous documents of a 2-byte vocabulary
            ln = rng.integers(1, 3000, n) * 2
            off = np.cumsum(ln) - ln
        elif kind == 1:  # lengths crossing K/M/J widths, big offsets (frames fill unevenly)
            ln = rng.integers(0, 2**33, n)
            off = rng.integers(0, 2**40, n)
        elif kind == 2:  # every opcode edge value
            ln = rng.choice(EDGES, n)
            off = rng.choice(EDGES, n)
        else:            # tiny values: many items per 64 KiB frame
            ln = rng.integers(0, 256, n)
            off = rng.integers(0, 300, n)
        ref = pickle.dumps(pairs(off, ln), protocol=4)
        block = int(rng.choice([7, 1000, 1 << 20]))  # streaming blocks must not change the bytes
        assert b"".join(iter_index_pickle(off, ln, block=block)) == ref, (n, kind, block)
        got_off, got_ln = parse_index_pickle(ref)
        assert got_off.dtype == np.int64 and got_off.tolist() == off.tolist() and got_ln.tolist() == ln.tolist()


def test_parser_steps_over_tuple_bytes_inside_int_payloads():
    # 0x9486 little-endian is "\x86\x94": the TUPLE2 MEMOIZE pair appears inside M payloads.
    ln = np.array([0x9486, 0x9486, 5, 0x9486, 0x869486] * 500)
    off = np.array([0x9486] * ln.size)
    raw = pickle.dumps(pairs(off, ln), protocol=4)
    got_off, got_ln = parse_index_pickle(raw)
    assert got_off.tolist() == off.tolist() and got_ln.tolist() == ln.tolist()


def test_other_legal_encodings_parse_through_the_restricted_path():
    data = [(0, 4), (4, 6), (10, 2)] * 700 + [(12, 2)]  # 2101 items: a 1-item last batch
    expected = np.array(data)
    streams = [pickle.dumps(data, protocol=p) for p in (0, 1, 2, 3, 5)]
    buf = io.BytesIO()
    pickle._Pickler(buf, protocol=4).dump(data)  # pure-Python pickler: 'e' + item + 'a' tail
    streams.append(buf.getvalue())
    shared = (0, 4)
    streams.append(pickle.dumps([shared, shared, (4, 2)], protocol=4))  # memo GET of a repeat
    for raw in streams[:-1]:
        off, ln = parse_index_pickle(raw)
        assert np.array_equal(np.stack([off, ln], 1), expected)
    off, ln = parse_index_pickle(streams[-1])
    assert off.tolist() == [0, 0, 4] and ln.tolist() == [4, 4, 2]


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", [
    "reduce", "global_in_list", "dict", "strings", "floats", "bool", "negative", "nested", "trailing",
    "truncated", "empty", "garbage"])
def test_hostile_or_wrong_indexes_are_refused(payload, tmp_path):
    marker = tmp_path / "pwned"
    raw = {
        "reduce": lambda: pickle.dumps(Boom(str(marker)), protocol=4),
        "global_in_list": lambda: pickle.dumps([(0, 2), Boom(str(marker))], protocol=4),
        "dict": lambda: pickle.dumps({"a": 1}, protocol=4),
        "strings": lambda: pickle.dumps([("0", "2")], protocol=4),
        "floats": lambda: pickle.dumps([(0.0, 2.0)], protocol=4),
        "bool": lambda: pickle.dumps([(False, True)], protocol=4),
        "negative": lambda: pickle.dumps([(0, 2), (-2, 2)], protocol=4),
        "nested": lambda: pickle.dumps([((0, 2), 2)], protocol=4),
        "trailing": lambda: pickle.dumps([(0, 2)], protocol=4) + b"junk",
        "truncated": lambda: pickle.dumps([(0, 2)] * 5000, protocol=4)[:-7],
        "empty": lambda: b"",
        "garbage": lambda: b"\x80\x04not a pickle at all",
    }[payload]()
    with pytest.raises(IndexPickleError):
        parse_index_pickle(raw)
    assert not marker.exists()


def test_token_width_rule():
    assert [token_width_for_vocab(v) for v in (2, 256, 257, 50257, 65536, 65537, 100277, 200019)] == \
        [1, 1, 2, 2, 2, 4, 4, 4]
    assert token_dtype(2) == np.dtype("<u2") and token_dtype(4) == np.dtype("<u4")
    with pytest.raises(ValueError):
        token_dtype(3)


def test_read_pbin_round_trip_is_zero_copy(tmp_path):
    path = tmp_path / "a.pbin"
    docs = [np.array([5, 6, 50256]), np.array([50256]), np.arange(100, 130)]
    write_pbin(path, np.concatenate(docs), [len(d) for d in docs], 2)
    pb = read_pbin(path)
    assert (pb.token_width, pb.num_docs, pb.num_tokens) == (2, 3, 34)
    assert isinstance(pb.tokens, np.memmap) and pb.tokens.dtype == np.dtype("<u2")
    assert pb.doc_offsets.tolist() == [0, 6, 8] and pb.doc_lengths.tolist() == [6, 2, 60]
    for i, d in enumerate(docs):
        assert pb.doc_tokens(i).tolist() == d.tolist()
    assert pb.doc_tokens(-1).tolist() == docs[-1].tolist()
    with pytest.raises(IndexError, match="a.pbin"):
        pb.doc_tokens(3)
    # Modalities' writer: header struct + raw tokens + pickle.dumps of the index
    data = np.concatenate(docs).astype("<u2").tobytes()
    index = pickle.dumps([(0, 6), (6, 2), (8, 60)], protocol=4)
    assert path.read_bytes() == struct.pack("<QI", len(data), 2) + data + index


def pbin_blob(tokens, width=2, index=None, data_len=None):
    data = np.asarray(tokens, dtype=token_dtype(width) if width in (1, 2, 4) else "<u2").tobytes()
    index = [(0, len(data))] if index is None else index
    return struct.pack("<QI", len(data) if data_len is None else data_len, width) + data + \
        pickle.dumps(index, protocol=4)


@pytest.mark.parametrize("name,blob,match", [
    ("short.pbin", b"\x00" * 7, "shorter than the 12-byte .pbin header"),
    ("width3.pbin", pbin_blob(range(10), width=3), "token width is 3"),
    ("trunc.pbin", pbin_blob(range(10), data_len=400), "truncated"),
    ("odd.pbin", pbin_blob(range(10), data_len=19), "not a multiple"),
    ("range.pbin", pbin_blob(range(10), index=[(0, 10), (10, 12)]), "document 1 .*outside"),
    ("align.pbin", pbin_blob(range(10), index=[(1, 4)]), "document 0 .*aligned"),
    ("noindex.pbin", pbin_blob(range(10))[:32], "no document index"),
    ("evil.pbin", pbin_blob(range(10))[:32] + pickle.dumps([Boom("x")], protocol=4), "refused"),
])
def test_bad_files_name_the_file(tmp_path, name, blob, match):
    path = tmp_path / name
    path.write_bytes(blob)
    with pytest.raises(PbinError, match=match) as err:
        read_pbin(path)
    assert name in str(err.value)


def test_empty_pbin_reads(tmp_path):
    path = tmp_path / "empty.pbin"
    write_pbin(path, np.zeros(0, np.int64), np.zeros(0, np.int64), 4)
    pb = read_pbin(path)
    assert (pb.num_docs, pb.num_tokens, pb.token_width) == (0, 0, 4)


def test_truncated_index_is_refused_not_misread():
    raw = encode_index_pickle(np.arange(0, 20000, 2), np.full(10000, 2))
    for cut in (1, 9, 100, len(raw) // 2):
        with pytest.raises(IndexPickleError):
            parse_index_pickle(raw[:-cut])


def test_every_read_parses_the_index_of_the_file_as_it_is_now(tmp_path, monkeypatch):
    """No process-wide index cache (setup opens each file once instead): a file rewritten in
    place with other documents of the same size is read as it is now."""
    import perfkit.formats.pbin as pbin

    path = tmp_path / "c.pbin"
    write_pbin(path, np.arange(8), np.array([5, 3]), token_width=2)
    parses = []
    real = pbin.parse_index_pickle
    monkeypatch.setattr(pbin, "parse_index_pickle", lambda raw: parses.append(1) or real(raw))
    first = read_pbin(path)
    assert pairs(first.doc_offsets, first.doc_lengths) == [(0, 10), (10, 6)]
    write_pbin(path, np.arange(8), np.array([3, 5]), token_width=2)
    changed = read_pbin(path)
    assert len(parses) == 2 and pairs(changed.doc_offsets, changed.doc_lengths) == [(0, 6), (6, 10)]
