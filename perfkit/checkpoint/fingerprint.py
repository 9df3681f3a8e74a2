"""Fingerprints of a run's .pbin files, so that a resume on other data is noticed.

A checkpoint stores, per file of $.data.train and $.data.val (in config order), its size and
SHA-256 digests of three parts of the .pbin layout:

    header   bytes 0..11 (data-segment length, token width)
    tokens   the data segment: the whole of it up to SAMPLE_BLOCKS * BLOCK bytes, else SAMPLE_BLOCKS
             blocks of BLOCK bytes at evenly spaced offsets (first and last block included)
    index    the document-index pickle after the data segment, sampled the same way

so a fingerprint reads at most 8 MiB per file, a terabyte file included. A change that keeps the
size and falls between the sampled blocks of a large file goes unseen; any change to a file
smaller than 4 MiB per part is seen. The path is recorded but not compared: moving the data to
another folder is not a change.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from perfkit.checkpoint.layout import CheckpointError

BLOCK = 1 << 16          # 64 KiB
SAMPLE_BLOCKS = 64       # per part: at most 4 MiB read
_HEADER = 12


def _digest(f, start: int, length: int) -> str:
    h = hashlib.sha256(length.to_bytes(8, "little"))
    if length <= SAMPLE_BLOCKS * BLOCK:
        offsets, size = [start], length
    else:
        span = length - BLOCK
        offsets, size = [start + span * i // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)], BLOCK
    for off in offsets:
        f.seek(off)
        h.update(f.read(size))
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """{"path", "bytes", "header", "tokens", "index"} of one .pbin (see the module docstring)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(_HEADER)
        data_len = int.from_bytes(header[:8], "little") if len(header) == _HEADER else 0
        data_len = min(data_len, max(size - _HEADER, 0))  # a damaged header still fingerprints
        return {"path": str(path), "bytes": size, "header": hashlib.sha256(header).hexdigest(),
                "tokens": _digest(f, _HEADER, data_len),
                "index": _digest(f, _HEADER + data_len, max(size - _HEADER - data_len, 0))}


def data_fingerprints(files: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Config key ("$.data.train") -> the fingerprints of its files, in order."""
    return {key: [file_fingerprint(p) for p in paths] for key, paths in files.items()}


_PARTS = (("header", "the header (token width or data length) differs"), ("tokens", "the token bytes differ"),
          ("index", "the document index differs"))


def differences(saved: dict[str, list[dict]], current: dict[str, list[dict]]) -> list[str]:
    """One phrase per differing file, e.g. "$.data.train[0] b.pbin (checkpoint: a.pbin): the token
    bytes differ"; empty when the data is the same."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, []), current.get(key, [])
        if len(old) != len(new):
            out.append(f"{key} lists {len(new)} file(s), the checkpoint's run had {len(old)} "
                       f"({', '.join(f['path'] for f in old) or 'none'})")
            continue
        for i, (a, b) in enumerate(zip(old, new)):
            where = f"{key}[{i}] {b['path']}" + (f" (checkpoint: {a['path']})" if a["path"] != b["path"] else "")
            if a["bytes"] != b["bytes"]:
                out.append(f"{where}: {b['bytes']} bytes, the checkpoint's file had {a['bytes']}")
                continue
            changed = [name for part, name in _PARTS if a.get(part) != b.get(part)]
            if changed:
                out.append(f"{where}: {' and '.join(changed)} (same size)")
    return out


def check_resume(saved_file: Path, current: Callable[[], dict], *, allow: bool, log: Callable[[str], None]) -> None:
    """Compare the checkpoint's data_fingerprint.json with `current()`; a difference raises
    CheckpointError naming each file and what differs, or with `allow` is logged in one line."""
    try:
        saved = json.loads(saved_file.read_text())
    except FileNotFoundError:
        log(f"checkpoint: {saved_file.parent} holds no data fingerprint (an older perfkit wrote it): "
            "the data files cannot be compared with the ones it was trained on")
        return
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{saved_file} unreadable: {e}") from None
    try:
        diffs = differences(saved, current())
    except OSError as e:
        raise CheckpointError(f"cannot fingerprint the data files: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{saved_file} is malformed ({e!r})") from None
    if diffs and not allow:
        raise CheckpointError(f"checkpoint {saved_file.parent} was trained on other data: " + "; ".join(diffs)
                              + "; resuming would continue on data it never saw in this order (set "
                              "--checkpoint.allow_data_change=true to resume anyway)")
    if diffs:
        log("checkpoint: WARNING: resuming on changed data ($.checkpoint.allow_data_change): " + "; ".join(diffs))
