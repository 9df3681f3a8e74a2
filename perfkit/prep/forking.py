"""Forking worker processes from a process whose heap may hold objects a child must never finalize.

A forked child inherits every Python object of its parent, garbage included: reference cycles the
parent's collector has not reached yet. When the child's collector finalizes one that wraps threads
of the parent, the child can hang for good. Seen: `perfkit pack` called in a process that had built
an FSDP2 model earlier (a test session) - the forked worker's collector freed the leftover gloo
ProcessGroup, whose destructor waits on worker threads that exist only in the parent, and the pack
never finished (torch 2.11: pthread_cond_broadcast in ~ProcessGroupGloo).

`frozen_heap()` puts every object that exists when it is entered into the collector's permanent
generation (gc.freeze): a child forked inside the block never collects any of them, only what it
allocates itself. On exit the parent's objects become collectable again (gc.unfreeze). It costs
nothing per object and never copies pages. Spawned children (macOS, Windows) start from a fresh
heap and need none of this.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
