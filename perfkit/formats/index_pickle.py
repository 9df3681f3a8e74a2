"""The .pbin document index: a pickle (protocol 4) of [(byte_offset, byte_length), ...].

Modalities writes `pickle.dumps(index_list)`; a 10-million-document corpus makes 10 million tuples
on the way in and out. This module encodes and parses that exact byte stream with numpy instead,
one vectorized pass per block, and never runs the stock unpickler on file contents.

The byte stream CPython's C pickler (`_pickle`) writes for a list of non-negative int pairs:
    PROTO 4 | ']' MEMOIZE | ('(' tuple*1000 'e')* ... '.'     (a 1-item list: ']' MEMOIZE tuple 'a' '.')
    tuple = int int TUPLE2(0x86) MEMOIZE(0x94)
    int   = 'K' u8 | 'M' u16 | 'J' i32 | LONG1(0x8a) n <n bytes two's complement>   (smallest that fits)
and the body after PROTO is cut into frames: FRAME(0x95) u64-length payload. The pickler checks for
a frame cut when it starts saving an object (each tuple, and each int in it) and cuts once the open
frame holds >= 64 KiB; a frame of fewer than 4 bytes gets no FRAME header. (Verified against
pickle.dumps in tests/test_pbin.py over list sizes, batch edges and every int opcode width.)
"""

from __future__ import annotations

import io
import pickle
import pickletools
from typing import Iterator

import numpy as np

from perfkit.errors import UserError

FRAME_SIZE_TARGET = 64 * 1024
BATCH_SIZE = 1000          # items per MARK ... APPENDS batch (CPython's BATCHSIZE)
MAX_VALUE = 1 << 62        # no file offset is this large; keeps offset + length inside int64

_K, _M, _J, _LONG1 = 0x4B, 0x4D, 0x4A, 0x8A
_TUPLE2, _MEMOIZE, _FRAME = 0x86, 0x94, 0x95
_MARK, _APPENDS, _APPEND, _STOP = 0x28, 0x65, 0x61, 0x2E

# Opcodes a list of int pairs can be written with; anything else (globals, reduce, strings, ...)
# is refused before the restricted unpickler runs.
_ALLOWED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_TUPLE",
    "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "LONG4", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET", "POP",
    "POP_MARK", "DUP",
})


class IndexPickleError(UserError):
    """The index bytes are not a pickle of a list of non-negative int pairs."""


# ----------------------------------------------------------------------------------------------
# Encoder


def _sliding(b: np.ndarray, dtype: str) -> np.ndarray:
    """An unaligned view where element p is the little-endian `dtype` value at byte p of b."""
    width = np.dtype(dtype).itemsize
    return np.ndarray(shape=(b.shape[0] - width + 1,), dtype=dtype, buffer=b, strides=(1,))


def _int_opcodes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For non-negative int64 values: (opcode, header bytes before the payload, payload bytes)."""
    big = v >= (1 << 31)
    # LONG1 length: the smallest n with v < 2**(8n - 1) (two's complement keeps a sign bit).
    n_long = 1 + sum((v >= (1 << (8 * k - 1))).astype(np.int64) for k in range(1, 8))
    op = np.where(v < 256, _K, np.where(v < 65536, _M, np.where(big, _LONG1, _J))).astype(np.uint8)
    payload = np.where(v < 256, 1, np.where(v < 65536, 2, np.where(big, n_long, 4)))
    head = np.where(big, 2, 1)  # LONG1 carries a length byte after the opcode
    return op, head, payload


def _put_ints(buf: np.ndarray, at: np.ndarray, v: np.ndarray, op, payload) -> None:
    """Write int opcodes and their little-endian payloads at `at`: one unaligned scatter per width."""
    buf[at] = op
    u16, u32 = _sliding(buf, "<u2"), _sliding(buf, "<u4")
    for code, view in ((_K, buf), (_M, u16), (_J, u32)):
        sel = op == code
        if sel.any():
            view[at[sel] + 1] = v[sel]  # the view's dtype keeps exactly its width of low bytes
    sel = np.flatnonzero(op == _LONG1)
    if sel.size:  # offsets past 2 GiB: 5..8 payload bytes after a length byte
        p, vv, nb = at[sel] + 2, v[sel], payload[sel]
        buf[p - 1] = nb
        u32[p] = vv & 0xFFFFFFFF
        for j in range(4, 8):
            m = nb > j
            buf[p[m] + j] = (vv[m] >> (8 * j)) & 0xFF


def _encode_items(off: np.ndarray, ln: np.ndarray, first: int, total: int) -> tuple[bytes, np.ndarray]:
    """Unframed bytes of items first..first+k-1 of a `total`-item list, and the positions (relative
    to the returned bytes) right after each finished object, where the pickler may cut a frame."""
    k = off.shape[0]
    g = np.arange(first, first + k)
    many = total > 1
    pre = ((g % BATCH_SIZE == 0) & many).astype(np.int64)                   # '(' opens a batch
    suf = (((g % BATCH_SIZE == BATCH_SIZE - 1) | (g == total - 1)) | (not many)).astype(np.int64)
    op_a, head_a, pay_a = _int_opcodes(off)
    op_b, head_b, pay_b = _int_opcodes(ln)
    len_a, len_b = head_a + pay_a, head_b + pay_b
    item_len = pre + len_a + len_b + 2 + suf
    ends = np.cumsum(item_len)
    starts = ends - item_len
    buf = np.empty(int(ends[-1]) if k else 0, dtype=np.uint8)
    buf[starts[pre == 1]] = _MARK
    a_at = starts + pre
    b_at = a_at + len_a
    t_at = b_at + len_b
    _put_ints(buf, a_at, off, op_a, pay_a)
    _put_ints(buf, b_at, ln, op_b, pay_b)
    buf[t_at] = _TUPLE2
    buf[t_at + 1] = _MEMOIZE
    buf[t_at[suf == 1] + 2] = _APPENDS if many else _APPEND
    cuts = np.stack([a_at, b_at], axis=1).ravel()  # before each tuple (and its int a), before int b
    return buf.tobytes(), cuts


class _Framer:
    """Cuts an unframed body into FRAME opcodes the way CPython's pickler does."""

    def __init__(self):
        self.frame_start = 0   # absolute body position where the open frame begins
        self.pos = 0           # absolute body position of the end of what was added
        self.open_parts: list[bytes] = []

    def add(self, data: bytes, cuts_rel: np.ndarray) -> Iterator[bytes]:
        cuts = cuts_rel + self.pos
        used = 0
        while True:
            i = int(np.searchsorted(cuts, self.frame_start + FRAME_SIZE_TARGET))
            if i == cuts.shape[0]:
                break
            cut = int(cuts[i])
            self.open_parts.append(data[used:cut - self.pos])
            yield _frame(b"".join(self.open_parts))
            self.open_parts, used, self.frame_start = [], cut - self.pos, cut
        self.open_parts.append(data[used:])
        self.pos += len(data)

    def finish(self) -> Iterator[bytes]:
        yield _frame(b"".join(self.open_parts))


def _frame(content: bytes) -> bytes:
    if len(content) < 4:  # too small to be worth a header (CPython's FRAME_SIZE_MIN)
        return content
    return bytes([_FRAME]) + len(content).to_bytes(8, "little") + content


def iter_index_pickle(offsets, lengths, block: int = 1 << 20) -> Iterator[bytes]:
    """Yield the bytes of `pickle.dumps(list(zip(offsets, lengths)), protocol=4)`, byte for byte,
    encoding `block` pairs at a time so memory stays bounded for any number of documents."""
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    ln = np.ascontiguousarray(lengths, dtype=np.int64)
    if off.shape != ln.shape or off.ndim != 1:
        raise ValueError(f"offsets {off.shape} and lengths {ln.shape} must be 1-D and equal")
    if off.size and (min(off.min(), ln.min()) < 0 or max(off.max(), ln.max()) >= MAX_VALUE):
        raise ValueError("index values must be in [0, 2**62)")
    total = off.shape[0]
    yield b"\x80\x04"
    framer = _Framer()
    yield from framer.add(b"]\x94", np.zeros(0, dtype=np.int64))
    for first in range(0, total, block):
        body, cuts = _encode_items(off[first:first + block], ln[first:first + block], first, total)
        yield from framer.add(body, cuts)
    yield from framer.add(b".", np.zeros(0, dtype=np.int64))
    yield from framer.finish()


def encode_index_pickle(offsets, lengths) -> bytes:
    return b"".join(iter_index_pickle(offsets, lengths))


# ----------------------------------------------------------------------------------------------
# Parser


def parse_index_pickle(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) as int64 arrays from index bytes. Fast path for the canonical stream;
    other legal encodings go through an opcode allow-list and a global-refusing unpickler."""
    parsed = _parse_canonical(raw)
    return parsed if parsed is not None else _parse_restricted(raw)


def _deframe(raw: bytes) -> np.ndarray | None:
    """The pickle body without PROTO and FRAME headers, copied once into a zero-padded uint8
    array (lookups a little past the end read 0), or None if the layout is unusual."""
    if len(raw) < 3 or raw[0] != 0x80 or raw[1] not in (4, 5):
        return None
    spans, pos = [], 2
    if raw[2] != _FRAME:
        spans.append((2, len(raw)))
    else:
        while pos < len(raw):  # one iteration per 64 KiB frame
            if raw[pos] != _FRAME or pos + 9 > len(raw):
                return None
            end = pos + 9 + int.from_bytes(raw[pos + 1:pos + 9], "little")
            if end > len(raw):
                return None
            spans.append((pos + 9, end))
            pos = end
    src = np.frombuffer(raw, dtype=np.uint8)
    body = np.zeros(sum(e - s for s, e in spans) + _PAD, dtype=np.uint8)
    at = 0
    for s, e in spans:
        body[at:at + e - s] = src[s:e]
        at += e - s
    return body


_OP_LEN = np.zeros(256, dtype=np.int64)  # bytes an int opcode occupies (LONG1: plus its n)
_OP_LEN[_K], _OP_LEN[_M], _OP_LEN[_J], _OP_LEN[_LONG1] = 2, 3, 5, 2
_OP_MASK = np.zeros(256, dtype=np.uint32)  # payload mask of the fixed-width int opcodes
_OP_MASK[_K], _OP_MASK[_M], _OP_MASK[_J] = 0xFF, 0xFFFF, 0xFFFFFFFF
_PAD = 1024                                 # > the longest tuple (2 LONG1 of 255 bytes + 2)


def _parse_canonical(raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    b = _deframe(raw)
    if b is None:
        return None
    n = b.shape[0] - _PAD                          # body length; b[n:] is zero padding
    head, tail = bytes(b[:3]), bytes(b[max(n - 2, 0):n])
    if n == 3 and head == b"]\x94.":
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n < 10 or head[:2] != b"]\x94" or tail[1] != _STOP:
        return None
    batched = head[2] == _MARK
    if tail[0] != (_APPENDS if batched else _APPEND):
        return None
    lo, hi = (3 if batched else 2), n - 2          # the items live in b[lo:hi]
    u16 = _sliding(b, "<u2")
    # Positions as int32 when they fit (any index under ~200M documents): half the memory.
    pos_t = np.int32 if n + _PAD < 2**31 else np.int64
    op_len = _OP_LEN.astype(pos_t)

    # Candidate tuple starts: lo, and right after every TUPLE2 MEMOIZE byte pair (skipping an
    # 'e(' batch break). A pair inside an int payload gives a false candidate; the walk below
    # steps over those, so the parse is exactly the deterministic left-to-right one.
    pair_end = np.flatnonzero(u16[lo:hi - 1] == _TUPLE2 | _MEMOIZE << 8).astype(pos_t) + pos_t(lo + 2)
    batch_break = _APPENDS | _MARK << 8
    starts = np.empty(pair_end.shape[0] + 1, dtype=pos_t)
    starts[0] = lo
    starts[1:] = pair_end + pos_t(2) * (u16[pair_end] == batch_break) if batched else pair_end
    del pair_end
    if batched:  # a pair ending exactly at hi closes the list, so it starts nothing
        starts = starts[starts < hi] if starts[-1] >= hi else starts

    def int_len(p):  # (k,) byte lengths of the int opcodes at p (0: not an int opcode)
        op_n = u16[p]
        op = op_n & 0xFF
        return op_len[op] + np.where(op == _LONG1, op_n >> 8, 0).astype(pos_t)

    len_a = int_len(starts)
    t = starts + len_a
    t += int_len(t)
    end = t + 2
    valid = (len_a > 0) & (t > starts + len_a) & (u16[t] == _TUPLE2 | _MEMOIZE << 8) & (end <= hi)
    terminal = valid & (end == hi)
    nxt = end + pos_t(2) * (u16[end] == batch_break) if batched else end
    del end, t
    # The common case needs no search: the next start is simply the next candidate.
    good = valid & ~terminal
    good[:-1] &= nxt[:-1] == starts[1:]
    good[-1] = False
    bad = np.flatnonzero(~good)
    del good

    runs, c = [], 0
    while True:  # one iteration per false candidate (rare), not per document
        k = int(np.searchsorted(bad, c))
        if k == len(bad):
            return None
        cb = int(bad[k])
        runs.append(np.arange(c, cb + 1))
        if terminal[cb]:
            break
        j = int(np.searchsorted(starts, nxt[cb]))
        if not valid[cb] or j == starts.shape[0] or starts[j] != nxt[cb]:
            return None
        c = j
    on_chain = runs[0] if len(runs) == 1 else np.concatenate(runs)
    if not batched and on_chain.shape[0] != 1:
        return None
    chain = starts[on_chain]
    return _decode_ints(b, chain), _decode_ints(b, chain + len_a[on_chain])


def _decode_ints(b: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Values of the int opcodes at positions `at` (non-negative, < 2**62, else an error)."""
    op = b[at]
    out = (_sliding(b, "<u4")[at + 1] & _OP_MASK[op]).astype(np.int64)  # K, M, J in one gather
    if (out[op == _J] >= 1 << 31).any():
        raise IndexPickleError("negative offset or length in the index")
    sel = np.flatnonzero(op == _LONG1)
    if sel.size:  # LONG1: a length byte n, then n bytes of two's complement (n <= 8 accepted)
        nbytes = b[at[sel] + 1]
        if nbytes.max() > 8:
            raise IndexPickleError("index value too large for a file offset")
        v = _sliding(b, "<u8")[at[sel] + 2] & _LONG1_KEEP[nbytes]
        if ((v & _LONG1_SIGN[nbytes]) != 0).any():
            raise IndexPickleError("negative offset or length in the index")
        if (v >= np.uint64(MAX_VALUE)).any():
            raise IndexPickleError("index value too large for a file offset")
        out[sel] = v.view(np.int64)
    return out


# Per LONG1 length n (0..8): the mask of its n payload bytes and the sign bit of the top one.
_LONG1_KEEP = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)
_LONG1_SIGN = np.array([0] + [1 << (8 * n - 1) for n in range(1, 9)], dtype=np.uint64)


class _RefusingUnpickler(pickle.Unpickler):
    """Defense in depth behind the opcode allow-list: no class or persistent object, ever."""

    def find_class(self, module, name):
        raise IndexPickleError(f"the index pickle references {module}.{name}; refused (not a list of int pairs)")

    def persistent_load(self, pid):
        raise IndexPickleError("the index pickle uses a persistent id; refused (not a list of int pairs)")


def _parse_restricted(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    stop_pos = None
    try:
        for opcode, _arg, pos in pickletools.genops(raw):
            if opcode.name not in _ALLOWED_OPCODES:
                raise IndexPickleError(f"opcode {opcode.name} at byte {pos} is not allowed in an index "
                                       "(it must be a list of int pairs); refused")
            if opcode.name == "STOP":
                stop_pos = pos
    except IndexPickleError:
        raise
    except Exception as e:  # pickletools raises ValueError and friends on truncated streams
        raise IndexPickleError(f"not a valid pickle: {e}") from None
    if stop_pos is None:
        raise IndexPickleError("not a valid pickle: no STOP opcode")
    if stop_pos + 1 != len(raw):
        raise IndexPickleError(f"{len(raw) - stop_pos - 1} trailing bytes after the index pickle")
    try:
        obj = _RefusingUnpickler(io.BytesIO(raw)).load()
    except IndexPickleError:
        raise
    except Exception as e:
        raise IndexPickleError(f"not a valid pickle: {e}") from None
    if not isinstance(obj, list):
        raise IndexPickleError(f"the index is a {type(obj).__name__}, expected a list of (offset, length) pairs")
    for i, item in enumerate(obj):
        if not (type(item) is tuple and len(item) == 2 and type(item[0]) is int and type(item[1]) is int):
            raise IndexPickleError(f"index entry {i} is {item!r:.80}, expected an (offset, length) int pair")
    arr = np.array(obj, dtype=object).reshape(-1, 2)
    if arr.size and (arr.min() < 0 or arr.max() >= MAX_VALUE):
        raise IndexPickleError("index values must be non-negative file offsets")
    arr = arr.astype(np.int64)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])
