"""The parallel pack pipeline: plan chunks, drive the workers, assign offsets in order, finish the file.

Flow per chunk (the messages are in pack_messages.py, which also says why they cannot deadlock):
    main: ReadLines / ReadEntries  -> worker reads + tokenizes, keeps the tokens
    worker: Counted                -> main, in chunk order, gives it the next data offset
    main: WriteTokens              -> worker pwrite()s into the temporary .pbin, answers Written
Memory is bounded by MAX_OUTSTANDING chunks per worker (assigned and not yet written), whatever
the corpus size; the main process keeps only per-document token counts (8 bytes per document)
for the index it writes at the end. The temporary file (created and removed by pack.py) is
fsynced and renamed only when complete; any failure or Ctrl-C stops the workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

from perfkit.atomic import fsync_dir
from perfkit.prep.jsonl import BadLineReport
from perfkit.prep.pack_messages import (Counted, Failed, ReadEntries, ReadLines, Stop, Task, WriteTokens,
                                        Written)
from perfkit.prep.pack_worker import PackJob, pwrite_all, worker_main
from perfkit.formats.pbin import HEADER_SIZE, encode_header, iter_index_pickle

MAX_OUTSTANDING = 3          # chunks per worker: one being tokenized, one queued, one awaiting its offset
PROGRESS_EVERY_S = 0.5


class PackAborted(Exception):
    """Stopped by a signal; carries the exit code (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code


class PackFailed(Exception):
    """A worker failed or died, or a bad line under --on-bad-line error."""


@dataclass
class PackStats:
    documents: int = 0
    tokens: int = 0
    lines: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    tokenizer_label: str = ""
    token_width: int = 0
    eod_id: int = -1


def plan_byte_chunks(size: int, chunk_bytes: int) -> list[ReadLines]:
    return [ReadLines(cid, s, min(s + chunk_bytes, size))
            for cid, s in enumerate(range(0, size, chunk_bytes))]


def plan_index_chunks(lengths: np.ndarray, chunk_bytes: int) -> list[ReadEntries]:
    """Consecutive raw-index entries grouped to about chunk_bytes of JSONL each."""
    if lengths.size == 0:
        return []
    covered = np.cumsum(lengths + 1)  # JSONL bytes up to and including each entry
    targets = np.arange(chunk_bytes, int(covered[-1]) + chunk_bytes, chunk_bytes)
    cuts = np.minimum(np.searchsorted(covered, targets) + 1, lengths.size)
    bounds = np.unique(np.concatenate([[0], cuts, [lengths.size]]))
    pairs = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return [ReadEntries(cid, a, b) for cid, (a, b) in enumerate(pairs)]


class _Progress:
    def __init__(self, total_bytes: int, enabled: bool):
        self.total, self.enabled = total_bytes, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = self.last = time.monotonic()

    def update(self, st: PackStats, force: bool = False) -> None:
        now = time.monotonic()
        every = PROGRESS_EVERY_S if self.tty else 10.0
        if not self.enabled or (not force and now - self.last < every):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        rate = st.bytes_in / dt
        eta = (self.total - st.bytes_in) / rate if rate > 0 else float("nan")
        msg = (f"pack: {st.documents:,} docs  {st.bytes_in / 1e6:,.1f}/{self.total / 1e6:,.1f} MB  "
               f"{rate / 1e6:,.1f} MB/s  {st.tokens / dt / 1e6:,.2f}M tok/s  ETA {eta:,.0f}s")
        # On a terminal one line is rewritten in place (padded so a shorter line leaves no residue).
        print(("\r" + msg.ljust(100)) if self.tty else msg, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _mp_context():
    # fork shares the already-built tokenizer with the workers (no per-worker load); elsewhere spawn.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def run_pack(job: PackJob, tasks: list[Task], dst: Path, tokenizer, workers: int, *, src_label: str,
             index: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True) -> PackStats:
    """Tokenize `tasks` with `workers` processes into job.tmp_dst, then rename it to dst.

    index: the raw index's (offsets, lengths) when the tasks are ReadEntries (--index); forked
    workers share it, spawned ones get a copy."""
    stats = PackStats()
    t0 = time.monotonic()
    ctx = _mp_context()
    workers = max(1, min(workers, len(tasks) or 1))
    procs, conns = [], []
    total = int(index[1].sum()) if index is not None else sum(t.end - t.start for t in tasks)
    meter = _Progress(total, progress)
    try:
        for _ in range(workers):
            parent, child = ctx.Pipe(duplex=True)
            inherited = tokenizer if ctx.get_start_method() == "fork" else None
            p = ctx.Process(target=worker_main, args=(child, job, inherited, index), daemon=True,
                            name="perfkit-pack-worker")
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        doc_tokens = _drive(job, tasks, procs, conns, stats, meter, src_label, index, str(dst))
        for c in conns:
            c.send(Stop())
        for p in procs:
            p.join(timeout=30)
        try:
            _finish_file(job, doc_tokens, stats)
            os.replace(job.tmp_dst, dst)
            fsync_dir(dst.parent)
        except OSError as e:  # disk full or an I/O error on the output's filesystem
            raise PackFailed(f"{dst}: cannot write the output: {e.strerror or e}; nothing was written") from None
        stats.seconds = time.monotonic() - t0
        if meter.tty:
            meter.update(stats, force=True)
        meter.done()
        return stats
    except KeyboardInterrupt:
        raise PackAborted(130, "interrupted (Ctrl-C)") from None
    finally:
        _stop_workers(procs)
        for c in conns:
            c.close()


def _worker_died(p) -> PackFailed:
    p.join(timeout=1)
    return PackFailed(f"pack worker {p.pid} died ({_describe_exit(p.exitcode)}); nothing was written")


def _drive(job: PackJob, tasks: list[Task], procs, conns, stats: PackStats, meter: _Progress, src_label: str,
           index: tuple[np.ndarray, np.ndarray] | None, dst_label: str) -> list[np.ndarray]:
    """The main loop: dispatch, collect counts in order, hand out offsets. Returns the per-chunk
    (num_docs,) token counts in input order."""
    n_workers = len(procs)
    owner: dict[int, int] = {}                 # chunk id -> worker index
    outstanding = [set() for _ in range(n_workers)]
    counted: dict[int, Counted] = {}           # arrived out of order, waiting for their turn
    doc_tokens: list[np.ndarray] = []
    next_task = next_in_order = written = 0
    data_offset = 0
    report = BadLineReport(job.stop_at_first_bad, stats.skipped)
    sentinel_of = {p.sentinel: i for i, p in enumerate(procs)}
    conn_of = {id(c): i for i, c in enumerate(conns)}

    def send(w: int, msg) -> None:
        try:
            conns[w].send(msg)
        except OSError:  # broken pipe: the worker is gone
            raise _worker_died(procs[w]) from None

    while written < len(tasks):
        for w in range(n_workers):  # keep every worker busy, within its memory bound
            while next_task < len(tasks) and len(outstanding[w]) < MAX_OUTSTANDING:
                send(w, tasks[next_task])
                owner[next_task] = w
                outstanding[w].add(next_task)
                next_task += 1
        ready = wait(conns + list(sentinel_of), timeout=PROGRESS_EVERY_S)
        for obj in ready:
            if obj in sentinel_of:
                raise _worker_died(procs[sentinel_of[obj]])
            w = conn_of[id(obj)]
            try:
                msg = obj.recv()
            except (EOFError, OSError):
                raise _worker_died(procs[w]) from None
            if isinstance(msg, Failed):
                if msg.output_write:  # pwrite into the output failed: the problem is DST's disk, not SRC
                    raise PackFailed(f"{dst_label}: cannot write the output: {msg.detail}; nothing was written")
                raise PackFailed(f"{src_label}: pack worker failed on chunk {msg.cid}: {msg.detail}")
            if isinstance(msg, Written):
                outstanding[w].discard(msg.cid)
                written += 1
                continue
            counted[msg.cid] = msg
            while next_in_order in counted:  # offsets are handed out strictly in input order
                res = counted.pop(next_in_order)
                for line_idx, reason in res.bad:
                    report.add(_where(src_label, index, stats.lines + line_idx, tasks[next_in_order], line_idx),
                               reason)
                n_tok = int(res.doc_tokens.sum())
                send(owner[next_in_order], WriteTokens(next_in_order, data_offset))
                data_offset += n_tok * job.token_width
                doc_tokens.append(res.doc_tokens)
                stats.documents += int(res.doc_tokens.shape[0])
                stats.tokens += n_tok
                stats.lines += res.num_lines
                stats.bytes_in += res.num_bytes
                next_in_order += 1
        meter.update(stats)
    return doc_tokens


def _where(src_label: str, index, global_line0: int, task: Task, line_idx: int) -> str:
    if index is not None:
        off = int(index[0][task.first + line_idx])
        return f"{src_label}: index entry {global_line0 + 1} (byte offset {off})"
    return f"{src_label}:{global_line0 + 1}"


def _describe_exit(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _finish_file(job: PackJob, doc_tokens: list[np.ndarray], stats: PackStats) -> None:
    """Header + index pickle after the data segment, then fsync (covers the workers' writes too:
    fsync flushes the file, not the descriptor)."""
    width = job.token_width
    lengths = (np.concatenate(doc_tokens) if doc_tokens else np.zeros(0, np.int64)) * width
    offsets = np.cumsum(lengths) - lengths
    data_len = stats.tokens * width
    fd = os.open(job.tmp_dst, os.O_WRONLY)
    try:
        os.ftruncate(fd, HEADER_SIZE + data_len)  # a zero-document corpus wrote nothing at all
        pos = HEADER_SIZE + data_len
        for piece in iter_index_pickle(offsets, lengths):
            pwrite_all(fd, memoryview(piece), pos)
            pos += len(piece)
        os.pwrite(fd, encode_header(data_len, width), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _stop_workers(procs) -> None:
    """Terminate whatever still runs, escalating to SIGKILL after a short grace period."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(timeout=1.0)
