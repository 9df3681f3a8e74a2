"""Compressed JSONL (.jsonl.gz, .jsonl.zst) for `perfkit pack`: decompressed to a temporary file
beside DST while the workers already tokenize the part that is there.

A gzip or zstd stream cannot be cut at byte offsets, so one thread per compressed file (at most
`readers` at a time, in source order) streams it through zlib / zstandard into a hidden file
`.DST.<pid>.<i>.jsonl` next to the output. After every ~chunk bytes it reports a boundary just past
a newline, and the pipeline turns each [previous, boundary) into the usual ReadLines task on that
file: the workers read, decode and tokenize it in parallel exactly as a plain JSONL, so the
output is byte-identical to packing the decompressed file. Decompression (zlib and zstd release
the GIL) runs many times faster than the tokenizer, so it overlaps with the work
instead of preceding it. Memory: one 64 KiB input block and at most 4 MiB of output per
thread, whatever the compression ratio (a "bomb" included). Disk: the
decompressed size of every compressed source, until the pack ends (the files are removed then,
also on failure).

Why a file and not pipes: the workers keep reading by pread, tokens and texts never cross a
pipe (pack_messages.py), and a slow worker never stalls the decompressor.

A truncated or corrupt stream is an error whatever --on-bad-line says: `path:line: truncated gzip
stream` (line = the line being decompressed when the stream ended), exit 1, no output.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import deque
from dataclasses import dataclass

import zstandard  # a dependency: no zstd in Python's standard library before 3.14

from perfkit.prep.sources import GZIP, Source

# Compressed bytes read at a time, and the most decompressed bytes produced (and held) at once:
# memory stays bounded for any input, a deflate or zstd "bomb" (GBs from a few KB) included.
READ_BLOCK = 64 << 10
OUT_BLOCK = 4 << 20

@dataclass(frozen=True)
class Boundary:
    """Decompressed bytes [start, end) of source `src` are on disk and end at a line boundary
    (or at the end of the stream: last=True)."""

    src: int
    start: int
    end: int
    last: bool


@dataclass(frozen=True)
class StreamFailed:
    src: int
    message: str    # the whole `path:line: reason` line


class TruncatedStream(Exception):
    """The file ends in the middle of a gzip member or zstd frame."""


STREAM_ERRORS = (TruncatedStream, zlib.error, zstandard.ZstdError)   # what a broken file raises


def iter_decompressed(path: str, fmt: str):
    """Yield the decompressed bytes of a gzip / zstd file (several concatenated members or frames
    too), at most OUT_BLOCK bytes per piece. Raises TruncatedStream after the last piece of a
    stream that ends mid-member / mid-frame, zlib.error / ZstdError where it is corrupt."""
    with open(path, "rb") as f:
        yield from (_gzip_pieces(f) if fmt == GZIP else _zstd_pieces(f))


def _gzip_pieces(f):
    # wbits 31: gzip header and CRC-32 trailer checked. With max_length, the input zlib has not
    # used yet waits in unconsumed_tail; a full output piece may leave more output pending.
    d, started = zlib.decompressobj(wbits=31), False
    while block := f.read(READ_BLOCK):
        while True:
            out = d.decompress(block, OUT_BLOCK)
            started = True
            if out:
                yield out
            if d.eof:  # next member, if anything follows
                block, d, started = d.unused_data, zlib.decompressobj(wbits=31), False
                if not block:
                    break
                continue
            block = d.unconsumed_tail
            if not block and len(out) < OUT_BLOCK:
                break
    if started and not d.eof:
        raise TruncatedStream()


def _zstd_pieces(f):
    # zstandard's decompressobj returns a whole block's output at once (unbounded); its stream
    # reader bounds it but stops silently at a truncated frame, hence the header walk at the end.
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=READ_BLOCK, read_across_frames=True,
                                                        closefd=False)
    while out := reader.read(OUT_BLOCK):
        yield out
    if not zstd_frames_complete(f):
        raise TruncatedStream()


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


def zstd_frames_complete(f) -> bool:
    """Does the zstd file end exactly where its last frame ends? Walks the frame and block headers
    (RFC 8878: 3 bytes per block of up to 128 KiB), seeking over the contents: cheap."""
    size, pos = os.fstat(f.fileno()).st_size, 0
    while pos < size:
        f.seek(pos)
        head = f.read(5)
        if len(head) < 4:
            return False
        magic = int.from_bytes(head[:4], "little")
        if magic in _SKIPPABLE:
            f.seek(pos + 4)
            length = f.read(4)
            if len(length) < 4:
                return False
            pos += 8 + int.from_bytes(length, "little")
            continue
        if magic != _ZSTD_MAGIC or len(head) < 5:
            return False
        fhd = head[4]  # Frame_Header_Descriptor
        single = (fhd >> 5) & 1
        pos += 5 + (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
        while True:
            f.seek(pos)
            block = f.read(3)
            if len(block) < 3:
                return False
            header = int.from_bytes(block, "little")
            block_type, block_size = (header >> 1) & 3, header >> 3
            pos += 3 + (1 if block_type == 1 else block_size)  # an RLE block stores one byte
            if header & 1:  # Last_Block
                break
        pos += 4 * ((fhd >> 2) & 1)  # Content_Checksum
    return pos == size


class Decompressors:
    """Decompress `sources` (index -> Source, compressed ones only) into `targets` (index -> path)
    with up to `readers` threads, in index order. Events (Boundary / StreamFailed) are appended to
    `events` and announced by one byte on `wake_fd`, so the pipeline's wait() sees them."""

    def __init__(self, sources: dict[int, Source], targets: dict[int, str], chunk_bytes: int,
                 readers: int):
        self.sources, self.targets, self.chunk = sources, targets, chunk_bytes
        self.events: deque = deque()
        self._order = deque(sorted(sources))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.threads = [threading.Thread(target=self._run, daemon=True, name="perfkit-pack-decompress")
                        for _ in range(max(1, min(readers, len(sources))))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """Stop the threads (they finish their current block) and close the wake pipe."""
        self._stop.set()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=5)
        # A thread still stuck in a write (a hung disk) keeps its pipe end: closing it under the
        # thread could hand the number to another file, which its next wake-up byte would hit.
        fds = [self.wake_r] + ([self._wake_w] if not any(t.is_alive() for t in self.threads) else [])
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def drain_wake(self) -> None:
        try:
            os.read(self.wake_r, 1 << 16)
        except BlockingIOError:
            pass

    def _post(self, event) -> None:
        self.events.append(event)
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe already holds a wake-up byte (or the pack is closing)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._order:
                    return
                i = self._order.popleft()
            self._one(i)

    def _one(self, i: int) -> None:
        src = self.sources[i]
        kind = "gzip" if src.format == GZIP else "zstd"
        written = cut = lines = 0
        try:
            fd = os.open(self.targets[i], os.O_WRONLY | os.O_TRUNC)
        except OSError as e:
            self._post(StreamFailed(i, f"{self.targets[i]}: cannot write the decompressed copy: {e.strerror or e}"))
            return
        try:
            for piece in iter_decompressed(str(src.path), src.format):
                if self._stop.is_set():
                    return
                view = memoryview(piece)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                lines += piece.count(b"\n")
                written += len(piece)
                if written - cut >= self.chunk:
                    nl = piece.rfind(b"\n")
                    if nl >= 0:  # a line that is still going on waits for its newline
                        end = written - len(piece) + nl + 1
                        if end > cut:
                            self._post(Boundary(i, cut, end, False))
                            cut = end
            self._post(Boundary(i, cut, written, True))
        except TruncatedStream:
            self._post(StreamFailed(i, f"{src.path}:{lines + 1}: truncated {kind} stream "
                                       "(the file ends in the middle of compressed data)"))
        except (zlib.error, zstandard.ZstdError) as e:
            self._post(StreamFailed(i, f"{src.path}:{lines + 1}: corrupt {kind} stream ({e})"))
        except OSError as e:
            where = self.targets[i] if e.errno == 28 else src.path  # ENOSPC: the copy's disk
            self._post(StreamFailed(i, f"{where}: {e.strerror or e} while decompressing {src.path}"))
        finally:
            os.close(fd)
