"""The parallel pack pipeline: drive the workers over the plan, assign offsets in order, finish the file.

The plan (pack_plan.py) numbers the tasks of every source in (source order, task order).

Flow per chunk (the messages are in pack_messages.py, which also says why they cannot deadlock):
    main: ReadLines / ReadEntries / ReadRows  -> worker reads + tokenizes, keeps the tokens
    worker: Counted                -> main, in chunk order, gives it the next data offset
    main: WriteTokens              -> worker pwrite()s into the temporary .pbin, answers Written
Memory is bounded by MAX_OUTSTANDING chunks per worker (assigned and not yet written), whatever
the corpus size; the main process keeps only per-document token counts (8 bytes per document)
for the index it writes at the end. The temporary file (created and removed by pack.py) is
fsynced and renamed only when complete; any failure or Ctrl-C stops the workers.
With --shuffle-docs the documents are permuted after tokenization (pack_shuffle.py).
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
from perfkit.prep.pack_messages import Counted, Failed, ReadRows, Stop, Task, WriteTokens, Written
from perfkit.prep.pack_plan import TaskPlan, plan_byte_chunks, plan_index_chunks  # noqa: F401 (re-exported)
from perfkit.prep.pack_shuffle import shuffle_documents
from perfkit.prep import signals
from perfkit.prep.forking import frozen_heap
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
    finished_path: str = ""   # the complete output, before commit_output (pack_cmd) renames it
    text_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    source_documents: list[int] = field(default_factory=list)   # per source, in command-line order
    source_tokens: list[int] = field(default_factory=list)
    source_skipped: list[int] = field(default_factory=list)
    source_labels: list[str] = field(default_factory=list)
    tokenizer_label: str = ""
    token_width: int = 0
    eod_id: int = -1


class _Progress:
    def __init__(self, total_bytes: int | None, enabled: bool, sources: int = 1):
        self.total, self.enabled = total_bytes, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = self.last = time.monotonic()
        self.sources, self.current = sources, 0

    def update(self, st: PackStats, force: bool = False) -> None:
        now = time.monotonic()
        every = PROGRESS_EVERY_S if self.tty else 10.0
        if not self.enabled or (not force and now - self.last < every):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        rate = st.bytes_in / dt
        of = f"/{self.total / 1e6:,.1f}" if self.total is not None else ""
        eta = ((self.total - st.bytes_in) / rate if rate > 0 else float("nan")) if self.total is not None else None
        files = f"file {self.current + 1}/{self.sources}  " if self.sources > 1 else ""
        msg = (f"pack: {files}{st.documents:,} docs  {st.bytes_in / 1e6:,.1f}{of} MB  "
               f"{rate / 1e6:,.1f} MB/s  {st.tokens / dt / 1e6:,.2f}M tok/s"
               + (f"  ETA {eta:,.0f}s" if eta is not None else ""))
        # On a terminal one line is rewritten in place (padded so a shorter line leaves no residue).
        print(("\r" + msg.ljust(100)) if self.tty else msg, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _mp_context():
    # fork shares the already-built tokenizer with the workers (no per-worker load); elsewhere spawn.
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def run_pack(job: PackJob, plan: TaskPlan, dst: Path, tokenizer, workers: int, *, labels: list[str],
             index: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
             shuffle: tuple[int, str] | None = None) -> PackStats:
    """Tokenize the plan's tasks with `workers` processes into job.tmp_dst (then shuffled into the
    second temporary file under `shuffle`): the complete file is at stats.finished_path, for
    pack_cmd's commit_output to rename to dst (named here in messages only).

    labels: each source's path as given (messages). index: the raw index's (offsets, lengths)
    when the tasks are ReadEntries (--index); forked workers share it, spawned ones get a copy.
    shuffle: (seed, second temporary path): the documents are permuted into that file."""
    n_src = len(labels)
    stats = PackStats(source_documents=[0] * n_src, source_tokens=[0] * n_src, source_skipped=[0] * n_src)
    t0 = time.monotonic()
    ctx = _mp_context()
    if plan.complete:
        workers = max(1, min(workers, len(plan.tasks) or 1))
    procs, conns = [], []
    meter = _Progress(plan.known_bytes(), progress, n_src)
    try:
        # a signal now is acted on after the loop, with every worker in procs; the workers never
        # collect (finalize) the parent's objects (forking.py)
        with signals.MAIN.held(), frozen_heap():
            for _ in range(workers):
                parent, child = ctx.Pipe(duplex=True)
                inherited = tokenizer if ctx.get_start_method() == "fork" else None
                p = ctx.Process(target=worker_main, args=(child, job, inherited, index), daemon=True,
                                name="perfkit-pack-worker")
                p.start()
                child.close()
                procs.append(p)
                conns.append(parent)
        if plan.decompressors is not None:
            plan.decompressors.start()   # after the fork: no worker inherits a running thread
        doc_tokens = _drive(job, plan, procs, conns, stats, meter, labels, index, str(dst))
        for c in conns:
            c.send(Stop())
        for p in procs:
            p.join(timeout=30)
        try:
            final = job.tmp_dst
            if shuffle is not None:
                doc_tokens = [shuffle_documents(job.tmp_dst, shuffle[1], doc_tokens, job.token_width,
                                                shuffle[0], threads=workers)]
                final = shuffle[1]
            _finish_file(final, job.token_width, doc_tokens, stats)
        except OSError as e:  # disk full or an I/O error on the output's filesystem
            raise PackFailed(f"{dst}: cannot write the output: {e.strerror or e}; nothing was written") from None
        stats.finished_path = final  # complete; pack_cmd.commit_output renames it to dst beside its manifest
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


def _drive(job: PackJob, plan: TaskPlan, procs, conns, stats: PackStats, meter: _Progress, labels: list[str],
           index: tuple[np.ndarray, np.ndarray] | None, dst_label: str) -> list[np.ndarray]:
    """The main loop: dispatch, collect counts in order, hand out offsets. Returns the per-chunk
    (num_docs,) token counts in input order."""
    n_workers = len(procs)
    tasks = plan.tasks                         # grows while compressed sources are decompressed
    owner: dict[int, int] = {}                 # chunk id -> worker index
    outstanding = [set() for _ in range(n_workers)]
    counted: dict[int, Counted] = {}           # arrived out of order, waiting for their turn
    doc_tokens: list[np.ndarray] = []
    lines_before = [0] * len(labels)           # lines (rows) of each source already counted
    next_task = next_in_order = written = 0
    data_offset = 0
    report = BadLineReport(job.stop_at_first_bad, stats.skipped)
    sentinel_of = {p.sentinel: i for i, p in enumerate(procs)}
    conn_of = {id(c): i for i, c in enumerate(conns)}
    wake = [plan.decompressors.wake_r] if plan.decompressors is not None else []

    def send(w: int, msg) -> None:
        try:
            conns[w].send(msg)
        except OSError:  # broken pipe: the worker is gone
            raise _worker_died(procs[w]) from None

    failures: dict[int, Failed] = {}           # chunk id -> its failure, raised in input order
    failed_workers: set[int] = set()           # sent a Failed and exited: no more tasks, exit expected

    while not (plan.complete and written == len(tasks)):
        plan.advance()
        for w in range(n_workers):  # keep every worker busy, within its memory bound
            while not failures and next_task < len(tasks) and len(outstanding[w]) < MAX_OUTSTANDING:
                send(w, tasks[next_task])
                owner[next_task] = w
                outstanding[w].add(next_task)
                next_task += 1
        live = [w for w in range(n_workers) if w not in failed_workers]
        ready = wait([conns[w] for w in live] + [procs[w].sentinel for w in live] + wake, timeout=PROGRESS_EVERY_S)
        # messages before exits: a worker that fails sends Failed (naming the file and row) and
        # exits at once; read in the other order, its error came out as "died (exit code 0)"
        for obj in sorted(ready, key=lambda o: o in sentinel_of):
            if wake and obj == wake[0]:
                plan.decompressors.drain_wake()
                continue
            if obj in sentinel_of:
                w = sentinel_of[obj]
                if w in failed_workers or conns[w].poll():  # unread messages (or the EOF after them) first
                    continue
                raise _worker_died(procs[w])
            w = conn_of[id(obj)]
            if w in failed_workers:
                continue
            try:
                msg = obj.recv()
            except (EOFError, OSError):
                raise _worker_died(procs[w]) from None
            if isinstance(msg, Failed):
                if msg.output_write:  # pwrite into the output failed: the problem is DST's disk, not SRC
                    raise PackFailed(f"{dst_label}: cannot write the output: {msg.detail}; nothing was written")
                if not next_in_order <= msg.cid < len(tasks):  # at start-up, or on a chunk already in order
                    raise _chunk_failed(msg, labels[plan.task_src[msg.cid]] if 0 <= msg.cid < len(tasks) else labels[0])
                # chunks before this one may fail too (two workers reading one damaged row group):
                # the first failure in input order is the one to report, so wait for those chunks
                failures[msg.cid] = msg
                failed_workers.add(w)
            elif isinstance(msg, Written):
                outstanding[w].discard(msg.cid)
                written += 1
                continue
            else:
                counted[msg.cid] = msg
            while next_in_order in counted or next_in_order in failures:  # strictly in input order
                if next_in_order in failures:
                    raise _chunk_failed(failures[next_in_order], labels[plan.task_src[next_in_order]])
                res = counted.pop(next_in_order)
                task, src = tasks[next_in_order], plan.task_src[next_in_order]
                meter.current = src
                for line_idx, reason in res.bad:
                    report.add(_where(labels[src], index, lines_before[src] + line_idx, task, line_idx), reason)
                n_tok = int(res.doc_tokens.sum())
                if not failures:  # with a failure pending nothing is written (its worker is gone)
                    send(owner[next_in_order], WriteTokens(next_in_order, data_offset))
                data_offset += n_tok * job.token_width
                doc_tokens.append(res.doc_tokens)
                n_docs = int(res.doc_tokens.shape[0])
                stats.documents += n_docs
                stats.tokens += n_tok
                stats.lines += res.num_lines
                stats.bytes_in += res.num_bytes
                stats.text_bytes += res.text_bytes
                stats.source_documents[src] += n_docs
                stats.source_tokens[src] += n_tok
                stats.source_skipped[src] += len(res.bad)
                lines_before[src] += res.num_lines
                next_in_order += 1
        meter.update(stats)
    return doc_tokens


def _chunk_failed(msg: Failed, label: str) -> PackFailed:
    if msg.complete:  # the message names its file and row itself
        return PackFailed(msg.detail)
    return PackFailed(f"{label}: pack worker failed on chunk {msg.cid}: {msg.detail}")


def _where(label: str, index, line0: int, task: Task, line_idx: int) -> str:
    """line0: the bad line's (row's) 0-based number within its source."""
    if isinstance(task, ReadRows):
        return f"{label}:row {line0 + 1}"
    if index is not None:
        off = int(index[0][task.first + line_idx])
        return f"{label}: index entry {line0 + 1} (byte offset {off})"
    return f"{label}:{line0 + 1}"


def _describe_exit(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _finish_file(path: str, width: int, doc_tokens: list[np.ndarray], stats: PackStats) -> None:
    """Header + index pickle after the data segment, then fsync (covers the workers' writes too:
    fsync flushes the file, not the descriptor)."""
    lengths = (np.concatenate(doc_tokens) if doc_tokens else np.zeros(0, np.int64)) * width
    offsets = np.cumsum(lengths) - lengths
    data_len = stats.tokens * width
    fd = os.open(path, os.O_WRONLY)
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
