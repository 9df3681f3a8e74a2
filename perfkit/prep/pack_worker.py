"""The pack worker process: read a chunk of a source itself, tokenize it, write it in place.

A chunk is a byte range of a JSONL file (or of the decompressed copy of a .gz / .zst source,
prep/decompress.py), raw-index entries (--index), or rows of a parquet row group
(prep/parquet_source.py).

The messages it exchanges with the main process are in pack_messages.py (tokens never cross a
pipe). The main process learns the chunk's size first, assigns offsets in input order, and each
worker pwrite()s its own tokens into the shared temporary output file: no single reader or writer.
"""

from __future__ import annotations

import os
import signal
import traceback
from dataclasses import dataclass

import numpy as np

from perfkit.errors import UserError
from perfkit.prep.jsonl import LineChunk, TextExtractor, extract_texts, read_line_chunk
from perfkit.prep import signals
from perfkit.prep.pack_messages import Counted, Failed, ReadLines, ReadRows, Stop, WriteTokens, Written
from perfkit.prep.parquet_source import ParquetSourceError, RowGroupReader
from perfkit.formats.pbin import HEADER_SIZE, token_dtype
from perfkit.prep.tokenizer import TokenizerSpec, resolve_tokenizer


@dataclass(frozen=True)
class WorkerSource:
    """One source as a worker reads it."""

    path: str               # the file to read: the source itself, or its decompressed copy
    size: int | None        # bytes; None for a copy still being written (its chunks end at a line end)


@dataclass(frozen=True)
class PackJob:
    """Everything a worker needs (picklable for spawn-started workers)."""

    sources: tuple[WorkerSource, ...]   # in command-line order; tasks name them by position
    tmp_dst: str
    tokenizer: TokenizerSpec
    key_path: tuple[str, ...]
    eod_id: int
    token_width: int
    stop_at_first_bad: bool


class TokenOverflowError(UserError):
    pass


def tokenize_texts(texts: list[str], encode_batch, eod_id: int, width: int,
                   eod_unless_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, doc_tokens): every text's ids followed by eod_id, concatenated, in the token dtype.

    encode_batch: texts -> ((N,) uint32 ids, (len(texts),) int64 lengths) (the tokenizer's
    worker_encoder). eod_unless_last: a document whose ids already end with eod_id gets no second
    one (Modalities' rule; for the tokenizers that can produce the EOD id from text).
    tokens: (sum(doc_tokens),) little-endian uint of `width` bytes; doc_tokens: (len(texts),) int64.
    """
    ids, lengths = encode_batch(texts)
    ends = np.cumsum(lengths)                       # (D,) where each document's ids end
    needs_eod = np.ones(len(texts), dtype=bool)
    if eod_unless_last and ids.size:
        needs_eod = (lengths == 0) | (ids[np.maximum(ends - 1, 0)] != eod_id)
    tokens = np.insert(ids, ends[needs_eod], np.uint32(eod_id))
    doc_tokens = lengths + needs_eod
    limit = 1 << (8 * width)
    top = int(tokens.max()) if tokens.size else 0
    if top >= limit:
        raise TokenOverflowError(f"token id {top} does not fit the {width}-byte token width "
                                 f"(max {limit - 1}); use a wider --token-width")
    return tokens.astype(token_dtype(width), copy=False), doc_tokens


def read_entries_chunk(fd: int, offsets: np.ndarray, lengths: np.ndarray, file_size: int) -> LineChunk:
    """Lines named by raw-index entries, read with one pread of their span when it is compact."""
    lo = int(offsets.min()) if offsets.size else 0
    hi = int((offsets + lengths).max()) if offsets.size else 0
    if hi - lo <= 2 * int(lengths.sum()) + (1 << 16):
        body = os.pread(fd, hi - lo, lo)
        starts = offsets - lo
    else:  # scattered entries: read each (still one syscall per line, never per token)
        parts = [os.pread(fd, int(n), int(o)) for o, n in zip(offsets, lengths)]
        body = b"".join(parts)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        lo = 0
    chunk = LineChunk(body, lo, starts.astype(np.int64), lengths.astype(np.int64),
                      unterminated_last=bool(lengths.size) and hi == file_size, contiguous=False)
    return chunk


def utf8_bytes(texts: list[str]) -> int:
    """UTF-8 bytes of the texts (one C call per document). Every text encodes: msgspec refuses a
    JSON escape of a lone surrogate (a malformed line) and arrow strings are UTF-8."""
    return sum(len(t.encode("utf-8")) for t in texts)


class OutputWriteError(OSError):
    """Writing the output failed (disk full, quota, I/O error): the message names the output."""


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def worker_main(conn, job: PackJob, tokenizer=None, index: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Worker loop. `tokenizer` is inherited when forked (spawned workers resolve their own);
    `index` is the raw index's (offsets, lengths) under --index (ReadEntries names a slice of it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signals.release()  # held since the fork (perfkit/prep/signals.py)
    cid = -1
    try:
        tok = tokenizer or resolve_tokenizer(job.tokenizer)
        encode_batch = tok.worker_encoder()
        extractor = TextExtractor(job.key_path)
        rows = RowGroupReader(".".join(job.key_path))
        src_fds: dict[int, int] = {}   # source position -> descriptor, opened on first use
        dst_fd = os.open(job.tmp_dst, os.O_WRONLY)
        pending: dict[int, np.ndarray] = {}  # chunk id -> tokens awaiting their offset
        inbox: list = []
        while True:
            if not inbox:
                inbox.append(conn.recv())
            while conn.poll():  # writes first: they free memory and unblock the main process
                inbox.append(conn.recv())
            inbox.sort(key=lambda m: not isinstance(m, WriteTokens))
            msg = inbox.pop(0)
            if isinstance(msg, Stop):
                break
            cid = msg.cid
            if isinstance(msg, WriteTokens):
                tokens = pending.pop(cid)
                try:
                    pwrite_all(dst_fd, memoryview(tokens.view(np.uint8)), HEADER_SIZE + msg.data_offset)
                except OSError as e:  # the output's disk, not the input: say so
                    raise OutputWriteError(e.errno, e.strerror or str(e)) from e
                conn.send(Written(cid))
                continue
            src_index = getattr(msg, "src", 0)   # ReadEntries (--index): the one source
            source = job.sources[src_index]
            if isinstance(msg, ReadRows):
                texts, bad, text_bytes = rows.read(source.path, msg.row_group, msg.row_start, msg.row_stop,
                                                   msg.file_row)
                num_lines, covered = msg.row_stop - msg.row_start, text_bytes
            else:
                if src_index not in src_fds:
                    src_fds[src_index] = os.open(source.path, os.O_RDONLY)
                fd = src_fds[src_index]
                if isinstance(msg, ReadLines):
                    size = msg.end if source.size is None else source.size
                    chunk = read_line_chunk(fd, msg.start, msg.end, size)
                    covered = min(msg.end, size) - msg.start
                else:  # ReadEntries
                    offsets, lengths = index[0][msg.first:msg.stop], index[1][msg.first:msg.stop]
                    chunk = read_entries_chunk(fd, offsets, lengths, source.size)
                    covered = int(lengths.sum())
                texts, _good, bad = extract_texts(chunk, extractor, job.stop_at_first_bad)
                num_lines = chunk.num_lines
                text_bytes = utf8_bytes(texts)
            if bad and job.stop_at_first_bad:
                tokens, doc_tokens = np.zeros(0, token_dtype(job.token_width)), np.zeros(0, np.int64)
            else:
                tokens, doc_tokens = tokenize_texts(texts, encode_batch, job.eod_id, job.token_width,
                                                     tok.eod_unless_last)
            pending[cid] = tokens
            conn.send(Counted(cid, num_lines, covered, doc_tokens, bad, text_bytes))
        os.close(dst_fd)
        for fd in src_fds.values():
            os.close(fd)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the main process is gone or stopping us: nothing to report to
    except BaseException as e:
        try:
            complete = isinstance(e, ParquetSourceError)   # names its file and row itself
            detail = (e.strerror if isinstance(e, OutputWriteError) else
                      str(e) if isinstance(e, (TokenOverflowError, OSError, ParquetSourceError))
                      else traceback.format_exc())
            conn.send(Failed(cid, detail, isinstance(e, OutputWriteError), complete))
        except (OSError, EOFError):
            pass
