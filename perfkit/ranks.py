"""Rank, world size and "is there a process group": the one place that asks torch.distributed.

Every helper works without a process group (a plain single process is rank 0 of a world of 1),
so callers need no `is_initialized()` checks of their own. Imports nothing of perfkit.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank(group=None) -> int:
    return dist.get_rank(group) if is_distributed() else 0


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def gather_objects(obj: Any, group=None) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (a collective; [obj] without a group)."""
    if world_size(group) == 1:
        return [obj]
    out: list[Any] = [None] * world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
