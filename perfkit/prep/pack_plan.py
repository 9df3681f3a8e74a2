"""The work of one `perfkit pack`: tasks in (source order, task order), numbered 0, 1, ... (the
chunk ids that fix the output order).

A plain JSONL source is cut into byte ranges (or raw-index entries under --index) and a parquet
source into row slices up front, from its size or footer. A compressed source's tasks appear while
it is being decompressed (prep/decompress.py): each line-aligned boundary its thread reports is one
ReadLines task on the decompressed copy. Sources are planned strictly in order, so a source's
tasks are numbered only once every earlier source is fully planned.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from perfkit.prep.decompress import Boundary, Decompressors, StreamFailed
from perfkit.prep.pack_messages import ReadEntries, ReadLines, ReadRows, Task
from perfkit.prep.parquet_source import RowSlice
from perfkit.errors import UserError


class StreamError(UserError):
    """A compressed source is truncated or corrupt: `path:line: reason`."""


def plan_byte_chunks(size: int, chunk_bytes: int, src: int = 0, cid0: int = 0) -> list[ReadLines]:
    return [ReadLines(cid0 + k, s, min(s + chunk_bytes, size), src)
            for k, s in enumerate(range(0, size, chunk_bytes))]


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


@dataclass
class PlannedSource:
    """label: the path as given (messages); exactly one of the others says how to cut it."""

    label: str
    size: int = 0                            # plain JSONL: bytes
    index_lengths: np.ndarray | None = None  # --index: the raw index's line lengths
    row_slices: list[RowSlice] | None = None  # parquet
    streamed: bool = False                   # .gz / .zst: boundaries from the decompressor


class TaskPlan:
    def __init__(self, sources: list[PlannedSource], chunk_bytes: int,
                 decompressors: Decompressors | None = None):
        self.sources, self.chunk, self.decompressors = sources, chunk_bytes, decompressors
        self.tasks: list[Task] = []
        self.task_src: list[int] = []
        self._next_src = 0
        self._boundaries: dict[int, deque[Boundary]] = defaultdict(deque)
        self.advance()

    @property
    def complete(self) -> bool:
        return self._next_src == len(self.sources)

    @property
    def streaming(self) -> bool:
        return any(s.streamed for s in self.sources)

    def known_bytes(self) -> int | None:
        """Input bytes of the whole plan (progress), None while a compressed source's size is unknown."""
        if self.streaming:
            return None
        return sum(s.size if s.index_lengths is None else int(s.index_lengths.sum())
                   for s in self.sources if s.row_slices is None) + \
            sum(r.est_bytes for s in self.sources if s.row_slices for r in s.row_slices)

    def _add(self, src: int, tasks: list[Task]) -> None:
        self.tasks += tasks
        self.task_src += [src] * len(tasks)

    def advance(self) -> None:
        """Plan whatever can be planned now. Raises StreamError for a broken compressed source."""
        if self.decompressors is not None:
            events = self.decompressors.events
            while events:
                ev = events.popleft()
                if isinstance(ev, StreamFailed):
                    raise StreamError(ev.message)
                self._boundaries[ev.src].append(ev)
        while not self.complete:
            i, s = self._next_src, self.sources[self._next_src]
            cid0 = len(self.tasks)
            if s.streamed:
                pending, last = self._boundaries[i], False
                while pending:
                    b = pending.popleft()
                    if b.end > b.start:
                        self._add(i, [ReadLines(len(self.tasks), b.start, b.end, i)])
                    last = b.last
                if not last:
                    return      # more of this source is still being decompressed
            elif s.row_slices is not None:
                self._add(i, [ReadRows(cid0 + k, i, r.row_group, r.row_start, r.row_stop, r.file_row)
                              for k, r in enumerate(s.row_slices)])
            elif s.index_lengths is not None:
                self._add(i, plan_index_chunks(s.index_lengths, self.chunk))
            else:
                self._add(i, plan_byte_chunks(s.size, self.chunk, i, cid0))
            self._next_src += 1
