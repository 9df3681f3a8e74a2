"""Weights & Biases, a second writer beside TensorBoard (`[metrics] wandb = true`, rank 0 only).

What it sends: the resolved config once, at init, and on every log the same scalars as TensorBoard
under the same tags (train/loss, perf/tokens_per_s_per_gpu, val/loss, val/bpb, ...) plus `step`,
which is every chart's x axis (`define_metric`). Using our step as a metric rather than W&B's own
monotonic `_step` lets a resumed run log the steps after its checkpoint again (W&B drops a log
whose `_step` is not larger than the last one).

Resume: the W&B run id lives in `<run folder>/wandb_run_id` (written atomically before init); a
resumed run reads it and calls `wandb.init(id=..., resume="allow")`, so it continues the same W&B
run, and creates it if the first attempt never reached W&B. Offline (`WANDB_MODE=offline`) the run
is written under `$WANDB_DIR/wandb/`, by default `<run folder>/wandb/`, for a later `wandb sync`.

Why a thread: `wandb.log` serializes the record and hands it over a socket to the wandb-core
service process that `wandb.init` starts; that process does the network uploads in the background.
A log call is therefore usually fast, but `wandb.init` waits for the server (up to its
`init_timeout`, 90 s by default) and a log call can block when the service process falls behind.
Every wandb call runs on one daemon thread fed by a bounded queue: the training thread only does a
`put_nowait` on logging steps (no wait, ever; when the queue is full the record is dropped for W&B
with one warning, TensorBoard and metrics.jsonl still have it). W&B that cannot be reached, or
that raises in init or log, is one warning line and never a failed run. The thread also keeps
wandb away from the main thread's signal handlers (perfkit/train/preemption.py).

wandb is an optional dependency (`pip install 'perfkit[wandb]'`), imported only on that thread and
only when enabled; `check_wandb_installed` finds a missing one before the first step.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from perfkit.atomic import write_atomic
from perfkit.config import MetricsConfig
from perfkit.errors import UserError, print_line

RUN_ID_FILE = "wandb_run_id"
_QUEUE_RECORDS = 10_000          # ~ a day of log_every=10 steps at 1 step/s before anything is dropped
_CLOSE_TIMEOUT_S = 120.0         # finish() uploads what is left; a run never waits longer for W&B
_CLOSE_BEFORE_INIT_S = 15.0      # ... and waits this long for an init still waiting for the server
_RUN_ID = re.compile(r"[a-z0-9]{8,64}")
_STOP = object()


def install_hint() -> str:
    return "pip install 'perfkit[wandb]' (from a checkout: pip install -e '.[wandb]')"


def check_wandb_installed(cfg: MetricsConfig) -> None:
    """With $.metrics.wandb = true, wandb must be importable; checked without importing it."""
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise UserError(f"$.metrics.wandb = true but the wandb package is not installed: {install_hint()}, "
                        f"or set --metrics.wandb=false")


def run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder: the stored one, else a new one stored atomically
    (8 bytes of randomness as 16 lowercase hex digits, a valid W&B id)."""
    path = run_dir / RUN_ID_FILE
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        stored = ""
    if _RUN_ID.fullmatch(stored):
        return stored
    new = secrets.token_hex(8)
    write_atomic(path, (new + "\n").encode("ascii"))
    return new


def _warn(text: str) -> None:
    print_line(f"perfkit train: WARNING: W&B: {text}")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class WandbWriter:
    """One W&B run fed from a queue by a daemon thread (see the module note)."""

    def __init__(self, cfg: MetricsConfig, run_dir: str | Path, run_config: dict[str, Any], name: str):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.name = name
        self.run_config = run_config
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_RECORDS)
        self._dropped = 0
        self._exit_code = 0                     # set by close() before it queues _STOP
        self._initialized = threading.Event()  # init returned (a run, or a warning)
        self._thread = threading.Thread(target=self._work, name="perfkit-wandb", daemon=True)
        self._thread.start()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Hand one record to the W&B thread; never waits (a full queue drops it, warned once)."""
        if not self._thread.is_alive():
            return  # init failed or the thread ended: already warned
        try:
            self._queue.put_nowait({"step": step, **scalars})
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1:
                _warn(f"{_QUEUE_RECORDS:,} records are waiting for W&B; records are dropped for W&B until it "
                      f"catches up (TensorBoard and metrics.jsonl keep them)")

    def close(self, timeout: float = _CLOSE_TIMEOUT_S, exit_code: int = 0) -> None:
        """Let the thread log what is queued and finish the W&B run with the run's exit code (143 after
        SIGTERM: W&B shows it as not finished cleanly), waiting at most `timeout` s."""
        if not self._thread.is_alive():
            return
        self._exit_code = exit_code  # read by the thread after it takes _STOP from the queue
        if not self._initialized.is_set():  # e.g. W&B unreachable: init retries until its init_timeout
            timeout = min(timeout, _CLOSE_BEFORE_INIT_S)
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            what = "uploading" if self._initialized.is_set() else "waiting for the server in init"
            _warn(f"still {what} after {timeout:.0f} s; the run ends without waiting (its files are under "
                  f"{self._wandb_dir()}/wandb/: `wandb sync` uploads them)")

    def _wandb_dir(self) -> str:
        return os.environ.get("WANDB_DIR") or str(self.run_dir)

    # ---- the W&B thread ---------------------------------------------------------------------
    def _work(self) -> None:
        run = self._init()
        self._initialized.set()
        failed = run is None
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if failed:
                continue  # keep draining: the training thread never blocks on a full queue
            try:
                run.log(item)
            except Exception as e:  # noqa: BLE001 - any W&B failure is a warning, never a failed run
                _warn(f"log failed ({_reason(e)}); W&B logging stops, training continues")
                failed = True
        if run is not None:
            try:
                run.finish(exit_code=self._exit_code)
            except Exception as e:  # noqa: BLE001
                _warn(f"finishing the run failed ({_reason(e)})")

    def _init(self):
        cfg = self.cfg
        try:
            import wandb  # the optional dependency, only here (perfkit[wandb])

            rid = run_id(self.run_dir)
            run = wandb.init(
                project=cfg.wandb_project, entity=cfg.wandb_entity or None, name=self.name,
                tags=list(cfg.wandb_tags) or None, config=self.run_config, id=rid, resume="allow",
                dir=self._wandb_dir(),
                # console="off": wandb would otherwise wrap stderr, where every rank writes its lines
                settings=wandb.Settings(console="off"))
            run.define_metric("step")
            run.define_metric("*", step_metric="step")  # our step is the x axis (see the module note)
            return run
        except Exception as e:  # noqa: BLE001 - unreachable, refused, misconfigured: a warning
            _warn(f"init failed ({_reason(e)}); training continues without W&B")
            return None
