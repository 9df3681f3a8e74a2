""".pbin files (Modalities' packed layout): read them safely and fast, write their header and index.

Layout (docs/architecture.md): bytes 0..7 data-segment length in bytes (u64 LE); bytes 8..11 token width in
bytes (u32 LE); the data segment (every document's tokens + one EOD token, little-endian); then
the document index: `pickle.dumps([(byte_offset, byte_length), ...], protocol=4)`, offsets relative
to the data segment.

Reading never unpickles with the stock loader: the index is parsed by a vectorized numpy parser of
the exact byte stream CPython's pickler writes for a list of int 2-tuples (see index_pickle.py), and
anything else falls back to an opcode allow-list plus an Unpickler that refuses every global. The
token segment is a zero-copy memory map.
"""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import numpy as np

from perfkit.atomic import write_atomic
from perfkit.formats.index_pickle import (IndexPickleError, encode_index_pickle, iter_index_pickle,
                                      parse_index_pickle)
from perfkit.errors import UserError

HEADER_SIZE = 12          # 8 bytes data length + 4 bytes token width
VALID_WIDTHS = (1, 2, 4)

__all__ = [
    "HEADER_SIZE", "PbinError", "PbinFile", "encode_header", "encode_index_pickle",
    "iter_index_pickle", "read_pbin", "token_dtype", "token_width_for_vocab", "write_pbin",
]


class PbinError(UserError):
    """A .pbin file (or its index) breaks the format; the message names the file."""


def token_width_for_vocab(vocab_size: int) -> int:
    """Bytes per token for a vocabulary: ceil(log2(vocab) / 8), 3 rounded up to 4 (Modalities' rule).

    Integer arithmetic instead of math.log2 so that sizes next to a power of two are exact:
    ceil(log2(v)) == (v - 1).bit_length() for v >= 1.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    width = max(1, -(-(vocab_size - 1).bit_length() // 8))
    if width == 3:
        width = 4
    if width not in VALID_WIDTHS:
        raise ValueError(f"vocab_size {vocab_size} needs {width} bytes per token; .pbin allows 1, 2 or 4")
    return width


def token_dtype(width: int) -> np.dtype:
    """The little-endian unsigned dtype of a token width (1 -> u1, 2 -> <u2, 4 -> <u4)."""
    if width not in VALID_WIDTHS:
        raise ValueError(f"token width must be 1, 2 or 4 bytes, got {width}")
    return np.dtype({1: "u1", 2: "<u2", 4: "<u4"}[width])


def encode_header(data_len_bytes: int, token_width: int) -> bytes:
    """The 12-byte header: data-segment length (u64 LE) and token width (u32 LE)."""
    token_dtype(token_width)  # validates the width
    if data_len_bytes < 0 or data_len_bytes % token_width:
        raise ValueError(f"data length {data_len_bytes} is not a non-negative multiple of width {token_width}")
    return int(data_len_bytes).to_bytes(8, "little") + int(token_width).to_bytes(4, "little")


class PbinFile:
    """A parsed .pbin: header fields, the memory-mapped tokens and the checked document index.

    tokens:      np.memmap, shape (num_tokens,), dtype token_dtype(token_width); read-only, zero-copy.
    doc_offsets: np.int64, shape (num_docs,), byte offsets into the data segment (as stored).
    doc_lengths: np.int64, shape (num_docs,), byte lengths (EOD included, as stored).
    """

    def __init__(self, path: Path, token_width: int, data_len: int, tokens: np.ndarray,
                 doc_offsets: np.ndarray, doc_lengths: np.ndarray, index_bytes: int):
        self.path = path
        self.token_width = token_width
        self.data_len = data_len
        self.tokens = tokens
        self.doc_offsets = doc_offsets
        self.doc_lengths = doc_lengths
        self.index_bytes = index_bytes

    @property
    def num_tokens(self) -> int:
        return self.data_len // self.token_width

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return token_dtype(self.token_width)

    def doc_tokens(self, i: int) -> np.ndarray:
        """Document i's tokens (EOD included) as a view of the memory map."""
        n = self.num_docs
        if not -n <= i < n:
            raise IndexError(f"{self.path}: document {i} out of range (file has {n} documents)")
        w = self.token_width
        start = int(self.doc_offsets[i]) // w
        return self.tokens[start:start + int(self.doc_lengths[i]) // w]

    def __repr__(self) -> str:
        return (f"PbinFile({str(self.path)!r}, token_width={self.token_width}, "
                f"num_tokens={self.num_tokens}, num_docs={self.num_docs})")


def read_pbin(path: str | os.PathLike) -> PbinFile:
    """Open a .pbin (perfkit's or Modalities'), check it completely and map its tokens."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a directory, or a FIFO that would block the open
            raise PbinError(f"{path}: not a regular file")
        size = st.st_size
        with open(path, "rb") as f:
            header = f.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                raise PbinError(f"{path}: {size} bytes is shorter than the {HEADER_SIZE}-byte .pbin header")
            data_len = int.from_bytes(header[:8], "little")
            width = int.from_bytes(header[8:12], "little")
            if width not in VALID_WIDTHS:
                raise PbinError(f"{path}: header token width is {width}; expected 1, 2 or 4 bytes"
                                + ("" if width < 256 else " (is it a .pbin file at all?)"))
            if data_len > size - HEADER_SIZE:
                raise PbinError(f"{path}: header says the data segment has {data_len} bytes but only "
                                f"{size - HEADER_SIZE} bytes follow the header (truncated file?)")
            if data_len % width:
                raise PbinError(f"{path}: data segment length {data_len} is not a multiple of the "
                                f"token width {width}")
            f.seek(HEADER_SIZE + data_len)
            index_raw = f.read()
    except OSError as e:
        raise PbinError(f"{path}: cannot read: {e.strerror or e}") from e
    offsets, lengths, index_bytes = _parse_and_check_index(path, index_raw, data_len, width)

    dtype = token_dtype(width)
    if data_len:
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(data_len // width,))
    else:  # mmap cannot map zero bytes
        tokens = np.zeros(0, dtype=dtype)
    return PbinFile(path, width, data_len, tokens, offsets, lengths, index_bytes)


def _parse_and_check_index(path: Path, index_raw: bytes, data_len: int, width: int):
    """(offsets, lengths, index byte count) of a file's index, validated against its data segment."""
    if not index_raw:
        raise PbinError(f"{path}: no document index after the {data_len}-byte data segment")
    try:
        offsets, lengths = parse_index_pickle(index_raw)
    except IndexPickleError as e:
        raise PbinError(f"{path}: document index (at byte {HEADER_SIZE + data_len}): {e}") from None
    check_index(path, offsets, lengths, data_len, width)
    offsets.flags.writeable = False   # shared by every PbinFile of this file version
    lengths.flags.writeable = False
    return offsets, lengths, len(index_raw)


def check_index(path, offsets: np.ndarray, lengths: np.ndarray, data_len: int, width: int) -> None:
    """Every (offset, length) must lie inside the data segment and be aligned to the width."""
    bad = (offsets < 0) | (lengths < 0) | (offsets % width != 0) | (lengths % width != 0)
    # offsets + lengths cannot overflow: the parser caps both at 2**62.
    bad |= offsets + lengths > data_len
    if bad.any():
        i = int(np.argmax(bad))
        raise PbinError(f"{path}: document {i} has (offset {int(offsets[i])}, length {int(lengths[i])}) "
                        f"bytes, outside the {data_len}-byte data segment or not aligned to the "
                        f"{width}-byte token width")


def write_pbin(path: str | os.PathLike, tokens: np.ndarray, doc_lengths_tokens: np.ndarray,
               token_width: int) -> None:
    """Write a whole .pbin in one go, atomically (small files, tests, tools).

    tokens: (num_tokens,) ints, every document's tokens with its EOD, concatenated.
    doc_lengths_tokens: (num_docs,) tokens per document; they must sum to num_tokens.
    The big-corpus path is perfkit.prep.pack_cmd, which writes in parallel.
    """
    path = Path(path)
    dtype = token_dtype(token_width)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or int(tokens.max()) >= 1 << (8 * token_width)):
        raise ValueError(f"token ids do not fit {token_width} byte(s)")
    lengths = np.asarray(doc_lengths_tokens, dtype=np.int64) * token_width
    if int(lengths.sum()) != tokens.size * token_width:
        raise ValueError("doc_lengths_tokens must sum to the number of tokens")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths.size else lengths
    data = tokens.astype(dtype).tobytes()
    write_atomic(path, itertools.chain([encode_header(len(data), token_width), data],
                                       iter_index_pickle(offsets, lengths)))
