"""Shared pytest fixtures (keep this file small: fixtures only)."""

import json
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(records, name="c.jsonl", newline="\\n", raw_lines=None) -> Path.

    records are dicts (json.dumps'ed, non-ASCII kept) or bytes/str written verbatim as one line.
    """
    def write(records, name="c.jsonl", newline="\n", final_newline=True):
        lines = []
        for r in records:
            if isinstance(r, bytes):
                lines.append(r)
            elif isinstance(r, str):
                lines.append(r.encode("utf-8"))
            else:
                lines.append(json.dumps(r, ensure_ascii=False).encode("utf-8"))
        body = newline.encode().join(lines) + (newline.encode() if final_newline and lines else b"")
        path = Path(tmp_path) / name
        path.write_bytes(body)
        return path
    return write
