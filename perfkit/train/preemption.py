"""Preemption: turn SIGTERM/SIGINT into "save at the next step boundary, then exit".

Exit codes (documented in docs and `perfkit train --help`): the shell convention 128 + signal,
so a scheduler sees the same code as for an unhandled signal but the checkpoint is on disk:
    143  SIGTERM received; all ranks saved a checkpoint at the step boundary and exited
    130  SIGINT (Ctrl-C) received; same
Before the first step of this process has completed (model build, checkpoint restore, compile,
the first step itself) there is nothing new to save: a signal then exits at once with the same
code, saying so, instead of waiting minutes for a step boundary (torchrun would SIGKILL the
worker after its grace period anyway). The trainer creates the guard with `armed=False` right after the
process group, and the loop calls `arm()` after the first step.
A second signal while the first is pending (or while saving) exits at once with the same code,
without saving: the escape hatch when a save hangs. A repeat of the *same* signal within
`duplicate_window_s` (1 s) of the first is not a second request but the same one delivered twice
(a scheduler that signals every process and torchrun forwarding its own copy): it is ignored, so
the save still happens.

Under torchrun, a SIGTERM to the launcher is forwarded to every worker (which save and exit 143),
but the launcher itself then exits 1 and kills workers that take longer than its grace period
(30 s by default): keep checkpoints small enough to save within it, or signal the workers
directly (e.g. `srun --signal`/`scancel --signal=TERM` reach every task).

The flag has to be agreed on: a signal reaches ranks at different moments, and a rank that
leaves the loop alone would hang the others in their next collective. `should_stop()` therefore
takes the max of the local flags with an all-reduce on a CPU (gloo) group at every step boundary:
a few tens of microseconds on the host, and no host-device synchronization.

    guard = PreemptionGuard()            # all ranks, after init_process_group; installs handlers
    ...
    if guard.should_stop():               # every rank, once per optimizer step
        ckpt.save(progress.step)
        return guard.exit_code
    ...
    guard.close()                         # restores the previous handlers (also a context manager)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from perfkit import ranks

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class PreemptionGuard:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
                 group: dist.ProcessGroup | None = None, check_every: int = 1,
                 duplicate_window_s: float = 1.0, armed: bool = True):
        """`group`: a gloo group for the agreement (None: one is created when the default group
        is not gloo). `check_every` > 1 agrees only every so many steps (for very short steps).
        `armed=False`: a signal exits at once until `arm()` (the trainer's "before the first step")."""
        self.received: int | None = None   # the first signal number seen by this rank
        self.check_every = max(1, check_every)
        self.duplicate_window_s = duplicate_window_s
        self._received_at = 0.0            # time.monotonic() of the first signal
        self.armed = armed                 # False until the trainer's first step: a signal exits at once
        self._calls = 0
        self._previous: dict[int, object] = {}
        self._group = group
        self._flag = torch.zeros(1, dtype=torch.int32)   # host memory: gloo reduces it on the CPU
        self._flag_host = self._flag.numpy()               # a view of it, read without a Tensor call
        if ranks.is_distributed() and group is None:
            # all ranks must create the group together: doing it here, in the constructor every
            # rank runs, keeps the agreement call itself free of set-up
            if dist.get_backend() != "gloo":
                self._group = dist.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)

    @property
    def exit_code(self) -> int:
        """128 + the signal number agreed on (143 SIGTERM, 130 SIGINT); 0 when no signal came."""
        if self.received is None:
            return 0
        return EXIT_CODES.get(self.received, 128 + int(self.received))

    def arm(self) -> None:
        """From now on a signal means "save at the next step boundary" (called after the first step)."""
        self.armed = True

    def _handle(self, signum, frame) -> None:
        if not self.armed:
            print(f"preemption: {signal.Signals(signum).name} received before the first step completed; nothing "
                  "to save yet, exiting now", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES.get(signum, 128 + signum))
        if self.received == signum and time.monotonic() - self._received_at < self.duplicate_window_s:
            return  # the same request delivered twice (e.g. by the scheduler and by torchrun)
        if self.received is not None:
            # second signal: the user or scheduler insists; do not wait for a save
            print(f"preemption: second signal {signal.Signals(signum).name}, exiting now", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES.get(signum, 128 + signum))
        self.received, self._received_at = signum, time.monotonic()
        print(f"preemption: {signal.Signals(signum).name} received, saving at the next step boundary "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        """True on every rank when any rank got a signal. Collective when distributed."""
        self._calls += 1
        if self._calls % self.check_every:
            return False
        local = 0 if self.received is None else int(self.received)
        if not ranks.is_distributed():
            return local != 0
        self._flag_host[0] = local
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        agreed = int(self._flag_host[0])
        if agreed and self.received is None:
            self.received = agreed  # another rank got it: exit with the same code
        return agreed != 0

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def __enter__(self) -> "PreemptionGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
