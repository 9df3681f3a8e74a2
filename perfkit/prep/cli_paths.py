"""Input and output path checks shared by `perfkit pack` and `perfkit index`.

They run before any work starts so that a wrong path costs nothing and the message names the path
and the problem in one line (not an errno text naming the hidden temporary file, after the work).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from perfkit.errors import UserError


def check_input_file(path: str | os.PathLike, what: str = "") -> Path:
    """A regular, readable file, or ValueError `PATH: reason` (what: e.g. 'raw index ')."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what}file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path}: is a directory, not a {what}file")
    if not stat.S_ISREG(st.st_mode):
        # Workers read byte ranges with pread: a pipe, socket or device cannot be cut that way
        # (and opening a FIFO with no writer would hang).
        raise UserError(f"{path}: not a regular file (a pipe or device); write it to a file first")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what}file: {e.strerror or e}") from None
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(dst: str | os.PathLike, force: bool, inputs: list) -> Path:
    """Refuse an output that would destroy an input, is a directory, lies under a file, or exists
    without force. Creates nothing (see output_folder). Raises ValueError `DST: reason`."""
    dst = Path(dst)
    for src in inputs:
        # Checked before --force: the input is read while the output is written, and replacing
        # it at the end would destroy the corpus (or index) the user just packed.
        if src and dst.exists() and _same_file(dst, Path(src)):
            raise UserError(f"{dst}: the output is the input file {src}; choose another output path")
    if dst.is_dir():
        raise UserError(f"{dst}: is a directory; give the output file's path")
    if dst.exists() and not force:
        raise UserError(f"{dst} exists; pass --force to overwrite it")
    folder = dst.parent
    while not folder.exists() and folder != folder.parent:  # the nearest existing ancestor
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{dst}: cannot create the output folder: {folder} is a file")
    return dst


@contextmanager
def output_folder(dst: Path) -> Iterator[None]:
    """Create DST's folder (as `mkdir -p`) for the body; if the body fails, remove the folders
    this created again (when still empty), so a failed run leaves nothing behind."""
    missing = []
    folder = dst.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{dst}: cannot create the output folder {dst.parent}: {e.strerror or e}") from None
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:     # not empty (someone else's files) or already gone: keep it
                break
        raise
