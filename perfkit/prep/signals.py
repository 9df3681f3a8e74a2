"""SIGTERM and SIGINT in the main process of `perfkit pack` and `perfkit index`.

pack turns both signals into an exception that unwinds (workers stopped, temporary files removed,
exit 143/130). Two moments must not be cut by it:
- starting the workers: a forked worker inherits the raising handler and keeps it until
  worker_main replaces it, so a signal then (pack's own cleanup terminating it, a Ctrl-C to the
  process group) raised inside the worker's start-up and printed tracebacks (3 of 40 runs
  signalled as the workers started);
- committing the output: renaming the .pbin and writing its manifest. Cut between the two, a
  .pbin without its manifest was left while the message said "no output written".

`held()` covers such a block twice over. The OS signal mask of this thread is blocked, which a
forked or spawned worker inherits: a signal sent to the worker waits until worker_main has set its
own handlers and calls `release()`. And the main process's handler only notes a signal that comes
during the block (Python runs handlers in the main thread, whichever thread the OS delivered the
signal to - a tokenizer's thread pool, say - so the mask alone does not hold it back here); at the
end of the block it acts on it. After `MAIN.committed` is set the output is complete: a signal is
then only noted (`MAIN.late`), and pack says that it came after the output was written.
`perfkit index` keeps its whole run `deferred()` and checks between chunks (index_cmd.py).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Callable

HELD = frozenset({signal.SIGTERM, signal.SIGINT})


class MainSignals:
    def __init__(self):
        self.act: Callable[[int], None] | None = None   # raises: what a signal does outside deferred()
        self.holding = 0
        self.pending: int | None = None   # came during deferred(): acted on by check() or at its end
        self.committed: Path | None = None
        self.late: int | None = None      # came after the commit: the output is complete

    def install(self, act: Callable[[int], None]) -> dict:
        """Handle SIGTERM and SIGINT with `act(signum)` (it raises); returns the previous handlers."""
        self.act, self.holding, self.pending, self.committed, self.late = act, 0, None, None, None
        return {s: signal.signal(s, self._handle) for s in HELD}

    def _handle(self, signum, frame) -> None:
        if self.committed is not None:
            self.late = self.late or signum
        elif self.holding:
            self.pending = self.pending or signum
        else:
            self.act(signum)

    @contextlib.contextmanager
    def deferred(self):
        """A block in which a signal is only noted; `check()` acts on it at points the block
        chooses, and the end of the block acts on what is left. Threads and processes started in
        it still receive signals (no OS mask): `perfkit index`, whose executor's own code an
        exception raised by the handler left unable to shut down (a hang)."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
            if not self.holding:
                self.check()

    @contextlib.contextmanager
    def held(self):
        """deferred(), plus this thread's OS mask blocked: a worker forked or spawned in the block
        inherits the mask, so a signal sent to it waits for its release() (see the module note)."""
        with self.deferred():
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
            try:
                yield
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one the OS held comes in now, noted

    def check(self) -> None:
        """Act on a noted signal now (after the commit it is only reported: `late`)."""
        if self.pending is None:
            return
        signum, self.pending = self.pending, None
        if self.committed is not None:
            self.late = self.late or signum
        elif self.act is not None:
            self.act(signum)


MAIN = MainSignals()  # a process has one set of handlers


def release() -> None:
    """In a worker, once its own handlers are set: what the OS held since the fork comes in now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
