"""The run folder `<run.root>/<experiment_id>/`: resolved config, TensorBoard events,
metrics.jsonl and checkpoints/ of one run.

The experiment id is `<UTC timestamp>_<8 hex of the config hash>` unless $.run.experiment_id sets
it; rank 0 chooses it and broadcasts it, so all ranks (and nodes) write into the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from perfkit.errors import UserError
from perfkit.atomic import write_atomic


# What a run *is* excludes how it is launched and observed: the checkpoint policy (resume=auto is
# typically added only on the requeue), logging intervals, the folder names, and derived values
# such as the world size (a run may resume on another number of ranks). Two launches that differ
# only there continue the same run, so `checkpoint.resume=auto` finds it by this hash.
_NOT_IDENTITY = {"checkpoint": None, "metrics": None, "derived": None,
                 "run": ("root", "experiment_id", "device")}


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, values in config.items():
        if section in _NOT_IDENTITY and _NOT_IDENTITY[section] is None:
            continue
        if section in _NOT_IDENTITY and isinstance(values, dict):
            values = {k: v for k, v in values.items() if k not in _NOT_IDENTITY[section]}
        out[section] = values
    return out


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(run_identity(config), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def new_experiment_id(config: dict[str, Any], now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y-%m-%d__%H-%M-%S}_{config_hash(config)}"


def create(root: str | Path, experiment_id: str) -> Path:
    run_dir = Path(root) / experiment_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_resolved_config(run_dir: Path, resolved: dict[str, Any]) -> Path:
    path = run_dir / "config.json"
    # atomic: a resumed run replaces the file, and a crash mid-write must not leave half of it
    write_atomic(path, (json.dumps(resolved, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return path


LOCK_FILE = ".lock"


class RunFolderBusy(UserError):
    """Another live run holds the run folder's lock."""


class RunLock:
    """An exclusive flock on `<run_dir>/.lock`, held by rank 0 for the run's life.

    flock belongs to the open file: the kernel drops it when the holder exits, however it dies
    (SIGKILL, OOM, node reboot on a local disk), so a stale lock file never blocks a new run. The
    file also names the holder (host, pid) for the refusal message. Only global rank 0 takes it:
    all ranks of one run, on any number of nodes, are one holder, and their run folder is one
    folder on a shared filesystem (NFS v4 implements flock with server-side locks; a filesystem
    without flock support, e.g. Lustre mounted without `flock`, gets a warning and no lock).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []
        self.warning: str | None = None

    def acquire(self) -> "RunLock":
        # the folders this lock creates (run folder first, then $.run.root's missing parents)
        self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = _read_holder(fd)
                os.close(fd)
                raise RunFolderBusy(f"run folder {self.run_dir} is in use by another run ({holder}); wait for it "
                                    f"to end, or choose another $.run.experiment_id") from None
            if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            self.warning = (f"WARNING: the filesystem of {self.run_dir} does not support flock ({e.strerror}); "
                            "nothing stops a second run from using this run folder at the same time")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock; a folder this lock created and nothing else wrote into is removed again."""
        if self._fd is None:
            return
        if self._created and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)  # e.g. a resume refused before anything was written
            for folder in self._created:
                with contextlib.suppress(OSError):  # not empty: another run's folder appeared
                    folder.rmdir()
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"host {info['host']}, pid {info['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is starting"
