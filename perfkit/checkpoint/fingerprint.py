"""Fingerprints of a run's .pbin files, so that a resume on other data is noticed.

A checkpoint stores, per file of $.data.train and $.data.val (in config order), the file's
fingerprint (formats/pbin_fingerprint.py: its size and digests of a bounded sample of its header,
tokens and index; at most 8 MiB read per file). The path is recorded but not compared: moving the
data to another folder is not a change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from perfkit.checkpoint.layout import CheckpointError
from perfkit.formats.pbin_fingerprint import BLOCK, SAMPLE_BLOCKS, file_fingerprint  # noqa: F401 (re-exported)

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
