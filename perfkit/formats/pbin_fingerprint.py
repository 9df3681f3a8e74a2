"""A cheap fingerprint of a .pbin: its size and SHA-256 digests of a bounded sample of its parts.

    header   bytes 0..11 (data-segment length, token width)
    tokens   the data segment: the whole of it up to SAMPLE_BLOCKS * BLOCK bytes, else SAMPLE_BLOCKS
             blocks of BLOCK bytes at evenly spaced offsets (first and last block included)
    index    the document-index pickle after the data segment, sampled the same way

so a fingerprint reads at most 8 MiB per file, a terabyte file included. A change that keeps the
size and falls between the sampled blocks of a large file goes unseen; any change to a file
smaller than 4 MiB per part is seen. Checkpoints store it per data file (checkpoint/fingerprint.py);
the .pbin manifest stores it to know that it still describes the .pbin beside it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 16          # 64 KiB
SAMPLE_BLOCKS = 64       # per part: at most 4 MiB read
HEADER_BYTES = 12


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
        header = f.read(HEADER_BYTES)
        data_len = int.from_bytes(header[:8], "little") if len(header) == HEADER_BYTES else 0
        data_len = min(data_len, max(size - HEADER_BYTES, 0))  # a damaged header still fingerprints
        return {"path": str(path), "bytes": size, "header": hashlib.sha256(header).hexdigest(),
                "tokens": _digest(f, HEADER_BYTES, data_len),
                "index": _digest(f, HEADER_BYTES + data_len, max(size - HEADER_BYTES - data_len, 0))}
