"""Shared pytest fixtures (keep this file small: fixtures only)."""

import json
import os
from pathlib import Path

import pytest
import torch

import isolation

# Triton reads TRITON_INTERPRET when it is first imported, and any test module may import it first
# (torchao does, for test_float8): set it before all of them, so the interpreted kernel tests work
# in any order. Without CUDA nothing else runs Triton code; the CPU ops run the reference.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


def pytest_runtest_protocol(item, nextitem):
    """Modules marked `isolated` (transformers) run in a child pytest; see tests/isolation.py."""
    return isolation.run_isolated(item)


def pytest_runtest_logreport(report):
    if isolation.in_child():
        isolation.record_child_report(report)

