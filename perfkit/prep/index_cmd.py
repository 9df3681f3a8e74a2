"""`perfkit index`: the Modalities raw index (.idx) of a JSONL file, and its reader.

The raw index is `pickle.dumps([(byte_offset, byte_length), ...])` with one entry per good line,
the newline excluded (a '\\r' before it stays in the line, as in Modalities' create_raw_index).
Every line is validated the way `perfkit pack` reads it (UTF-8, a JSON object, a string text
field), with the same bad-line policy; lines are checked in parallel, one byte-range chunk per task.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import numpy as np

from perfkit.errors import UserError
from perfkit.atomic import write_atomic
from perfkit.prep import signals
from perfkit.prep.cli_paths import check_input_file, check_output_path, output_folder
from perfkit.prep.forking import frozen_heap
from perfkit.prep.jsonl import BadLineReport, TextExtractor, extract_texts, parse_text_key, read_line_chunk
from perfkit.formats.index_pickle import IndexPickleError, iter_index_pickle, parse_index_pickle

CHUNK_BYTES = 1 << 20


def read_raw_index(path: str | os.PathLike, src_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, lengths) int64 of a raw index, parsed without unpickling; entries checked
    against the JSONL size when given."""
    path = Path(path)
    check_input_file(path, "raw index ")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the raw index: {e.strerror or e}") from None
    try:
        offsets, lengths = parse_index_pickle(raw)
    except IndexPickleError as e:
        raise UserError(f"{path}: not a raw index: {e}") from None
    if src_size is not None and offsets.size:
        bad = offsets + lengths > src_size
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(f"{path}: entry {i} (offset {int(offsets[i])}, length {int(lengths[i])}) "
                             f"runs past the end of the {src_size}-byte JSONL; is it the index of another file?")
    return offsets, lengths


# Worker state, set once per pool process by _init (fork or spawn).
_STATE: dict = {}


def _init(src: str, size: int, key_path: tuple[str, ...], stop_at_first_bad: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler inherited through fork
    _STATE.update(fd=os.open(src, os.O_RDONLY), size=size, extractor=TextExtractor(key_path),
                  stop=stop_at_first_bad)


def _index_chunk(bounds: tuple[int, int]):
    """(absolute offsets, lengths) of the good lines of a chunk, lines covered, [(line idx, reason)]."""
    chunk = read_line_chunk(_STATE["fd"], bounds[0], bounds[1], _STATE["size"])
    _texts, good, bad = extract_texts(chunk, _STATE["extractor"], _STATE["stop"])
    return chunk.starts[good] + chunk.base, chunk.lengths[good], chunk.num_lines, bad


def build_raw_index(src: Path, key_path: tuple[str, ...], workers: int, on_bad_line: str,
                    skipped: dict[str, int], check: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and lengths of the good lines, chunks validated in parallel and collected in order.

    A ProcessPoolExecutor with a bounded window of submitted chunks, not multiprocessing.Pool:
    stopping a Pool early means Pool.terminate(), which can block forever joining workers (seen
    here about once in 40 runs that stopped at a bad line). Here an error cancels the chunks not
    yet started and waits only for the few in flight (1 MiB each, milliseconds).
    `check()`, called between chunks, raises when a signal has come (signals.MAIN.check)."""
    size = src.stat().st_size
    tasks = iter([(s, min(s + CHUNK_BYTES, size)) for s in range(0, size, CHUNK_BYTES)])
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = max(1, min(workers, -(-size // CHUNK_BYTES) or 1))
    offsets, lengths, lines_before = [], [], 0
    report = BadLineReport(on_bad_line == "error", skipped)
    # frozen for the pool's whole life: it may fork a worker at any submit (forking.py says why)
    with frozen_heap(), ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                            initargs=(str(src), size, key_path, on_bad_line == "error")) as pool:
        pending = deque(pool.submit(_index_chunk, t) for t in itertools.islice(tasks, 2 * workers))
        try:
            while pending:
                while not wait([pending[0]], timeout=STOP_POLL_S).done:  # the next chunk in file order
                    if check is not None:
                        check()
                if check is not None:
                    check()
                off, ln, n_lines, bad = pending.popleft().result()
                pending.extend(pool.submit(_index_chunk, t) for t in itertools.islice(tasks, 1))
                for i, reason in bad:
                    report.add(f"{src}:{lines_before + i + 1}", reason)
                offsets.append(off)
                lengths.append(ln)
                lines_before += n_lines
        except BaseException:
            for future in pending:  # not started yet: dropped; the pool's exit waits for the rest
                future.cancel()
            raise
    if not offsets:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(offsets), np.concatenate(lengths)


STOP_POLL_S = 0.1  # how soon a recorded signal is acted on while a chunk is being validated


class Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="perfkit index", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="JSONL file")
    p.add_argument("-o", "--output", dest="dst", help="the .idx to write (default: SRC with .idx)")
    p.add_argument("--text-key", default="text", help="key or dotted path of the text field to validate")
    p.add_argument("--on-bad-line", choices=("error", "skip"), default="error")
    p.add_argument("--workers", type=int, default=None, help="processes, at most the usable CPUs (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = p.parse_args(argv)
    src = Path(args.src)
    dst = Path(args.dst) if args.dst else src.with_suffix(".idx")
    t0 = time.monotonic()
    skipped: dict[str, int] = {}
    # SIGTERM and Ctrl-C are noted and acted on between chunks (signals.MAIN.deferred): raised
    # wherever they landed, inside ProcessPoolExecutor.submit say, they left the pool unable to
    # shut down and index hung (2 of 40 runs signalled as the pool started)
    previous = signals.MAIN.install(_stop)
    try:
        with signals.MAIN.deferred():
            check_input_file(src)
            # `is None`, not `or`: --workers 0 is an error, as in pack, not the default.
            from perfkit.prep.pack_cmd import capped_workers, default_workers
            workers = default_workers() if args.workers is None else args.workers
            if workers < 1:
                raise UserError(f"--workers must be >= 1, got {workers}")
            workers = capped_workers(workers, "index")
            key_path = parse_text_key(args.text_key)
            # Built here first: a failing pool initializer would be restarted forever (a hang).
            TextExtractor(key_path)
            check_output_path(dst, args.force, [src])
            offsets, lengths = build_raw_index(src, key_path, workers, args.on_bad_line, skipped, signals.MAIN.check)
            signals.MAIN.check()  # the last point at which a signal means "no output"
            with output_folder(dst):
                try:
                    write_atomic(dst, iter_index_pickle(offsets, lengths))
                except OSError as e:  # name DST, not the hidden temporary file beside it
                    raise UserError(f"{dst}: cannot write: {e.strerror or e}") from None
            signals.MAIN.committed = dst
    except Stopped as e:
        what = "interrupted (Ctrl-C)" if e.signum == signal.SIGINT else "terminated (SIGTERM)"
        print(f"perfkit index: {what}; no output written", file=sys.stderr)
        return 128 + e.signum
    except (UserError, OSError) as e:
        print(f"perfkit index: {e}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    late = signals.MAIN.late
    if late is not None:  # arrived while the (atomic, complete) output was being written
        print(f"perfkit index: {signal.Signals(late).name} received after {dst} was written completely",
              file=sys.stderr)
        return 128 + late
    n_skip = sum(skipped.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    print(f"indexed {len(offsets):,} lines of {src} -> {dst} in {time.monotonic() - t0:.2f} s; "
          f"skipped {n_skip} lines" + (f" ({detail})" if n_skip else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
