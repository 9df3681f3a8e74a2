"""The messages between `perfkit pack`'s main process and its workers: one small type per kind.

One duplex pipe per worker. Main -> worker:
    ReadLines(cid, start, end, src)  a byte range of JSONL source src (or of the decompressed copy of
                                     a .gz / .zst source): read and tokenize its lines
    ReadRows(cid, src, row_group, row_start, row_stop, file_row)
                                     rows of a parquet source's row group (prep/parquet_source.py)
    ReadEntries(cid, first, stop)    raw-index entries [first, stop) (--index); the worker holds
                                     the index itself, so the message is a few integers
    WriteTokens(cid, data_offset)    chunk cid's tokens go to this offset of the data segment
    Stop()
Worker -> main:
    Counted(cid, num_lines, num_bytes, doc_tokens, bad, text_bytes)   tokens held until their offset arrives
    Written(cid)
    Failed(cid, detail, output_write, complete)

Why it cannot deadlock: every main -> worker message is a few integers (well under 1 KiB pickled)
and a worker has at most MAX_OUTSTANDING chunks assigned and unwritten, each costing one task and
one write message, so what main has sent and a worker not yet read stays a few hundred bytes: it
always fits the pipe's buffer and main never blocks in send(). Main reads whatever a worker sends
(a Counted can be large: 8 bytes per document) whenever it is ready, so a worker blocked in send()
is always drained. Before, the task message carried the index's offset arrays (16 bytes per
line), and main and both workers ended up blocked sending to each other (issue 12, item 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReadLines:
    cid: int
    start: int     # byte offsets into the JSONL; the chunk owns the lines that start in [start, end)
    end: int
    src: int = 0   # the source's position on the command line (PackJob.sources)


@dataclass(frozen=True)
class ReadRows:
    cid: int
    src: int
    row_group: int
    row_start: int     # rows [row_start, row_stop) of the row group
    row_stop: int
    file_row: int      # the file's row number of row_start (0-based), for `path:row N` messages


@dataclass(frozen=True)
class ReadEntries:
    cid: int
    first: int     # raw-index entry numbers [first, stop)
    stop: int


@dataclass(frozen=True)
class WriteTokens:
    cid: int
    data_offset: int   # bytes from the start of the data segment


@dataclass(frozen=True)
class Stop:
    pass


@dataclass
class Counted:
    cid: int
    num_lines: int                 # lines (or index entries) the chunk covered
    num_bytes: int                 # JSONL bytes it covered (progress)
    doc_tokens: np.ndarray         # (num_docs,) int64 tokens per document, EOD included
    bad: list[tuple[int, str]]     # (line index within the chunk, reason), in order
    text_bytes: int = 0            # UTF-8 bytes of the packed documents' texts (bits per byte)


@dataclass(frozen=True)
class Written:
    cid: int


@dataclass(frozen=True)
class Failed:
    cid: int
    detail: str            # one line for expected errors, a traceback for a bug
    output_write: bool     # True: writing the output failed (its disk), not reading the input
    complete: bool = False  # detail is the whole user-facing line (`path:row N: reason`)


Task = ReadLines | ReadEntries | ReadRows
