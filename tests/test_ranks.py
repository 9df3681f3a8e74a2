"""Rank / world-size / is-initialized live in one leaf module (perfkit/ranks.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASKS = re.compile(r"\bdist(ributed)?\.(is_initialized|get_rank|get_world_size)\(")


def test_helpers_work_without_a_process_group():
    from perfkit import ranks

    assert not ranks.is_distributed()
    assert (ranks.rank(), ranks.world_size()) == (0, 1)
    assert ranks.gather_objects({"a": 1}) == [{"a": 1}]


def test_only_ranks_py_asks_torch_distributed_for_rank_or_world_size():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for folder in ("perfkit", "kernels", "bench")
                 for p in sorted((ROOT / folder).rglob("*.py")) if p.name != "ranks.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if ASKS.search(line)]
    assert not offenders, offenders
