"""Atomic file output: a reader sees the old file or the complete new one, never a torn one.

The content goes to a hidden temporary file in the destination's folder (same filesystem, so the
rename is atomic), is fsynced, renamed over the destination, and the folder entry is fsynced too
(so the rename itself survives a power loss). On any error, or a KeyboardInterrupt, the temporary
file is removed and the destination is untouched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in `folder` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write; on a clean exit it is fsynced and renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, content: bytes | Iterable[bytes]) -> None:
    """Write `content` (bytes, or an iterable of byte pieces streamed in order) atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for piece in ([content] if isinstance(content, (bytes, bytearray, memoryview)) else content):
            f.write(piece)


def replace_folder(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the complete folder `new` at `dest` (same filesystem), replacing what was there: the old
    folder is renamed aside, `new` renamed in, the parent fsynced, then the old one removed. A crash
    leaves either the old folder at `dest` or the new one, and at most a leftover `DEST.replaced`
    (the checkpoint layout's cleanup knows that name)."""
    new, dest = Path(new), Path(dest)
    old = dest.with_name(dest.name + ".replaced") if dest.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
    os.rename(new, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
