"""A progress line every 30 s while a run has not finished its first step yet.

Building a large model, restoring a checkpoint, torch.compile and the first step can take
minutes with no other output; a run that looks hung gets killed, and one that really is stuck
(swapping, a slow filesystem) should say where it is. Rank 0 runs one daemon thread:

    beat = Heartbeat(enabled=env.is_main)   # starts the thread
    beat.phase("building the model")
    ...
    beat.phase("step 1 (torch.compile runs here)")
    ...
    beat.stop()                             # after the first step; idempotent

Each line: `perfkit train: still <phase> (<seconds> s since start, peak RSS <x> GiB)`, on stderr
(the run's log stream). The thread only reads a string and the clock; it touches no tensor.
"""

from __future__ import annotations

import sys
import threading
import time

from perfkit.metrics import host_peak_rss_gib

INTERVAL_S = 30.0


class Heartbeat:
    def __init__(self, enabled: bool = True, interval_s: float | None = None):
        self._phase = "starting"
        self._t0 = time.monotonic()
        self._done = threading.Event()
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._run, args=(interval_s or INTERVAL_S,),
                                            name="perfkit-heartbeat", daemon=True)
            self._thread.start()

    def phase(self, text: str) -> None:
        self._phase = text

    def _run(self, interval_s: float) -> None:
        while not self._done.wait(interval_s):
            print(f"perfkit train: still {self._phase} ({time.monotonic() - self._t0:.0f} s since start, "
                  f"peak RSS {host_peak_rss_gib():.2f} GiB)", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
