"""Process group and device setup: torchrun (any number of nodes) or a plain single process.

Every run, even `python -m perfkit.train` in one process, gets a process group, so the model is
always an FSDP2 module and one code path covers 1..N ranks (a world of one uses an in-memory store,
no port). NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from perfkit.config import ParallelConfig, RunConfig


@dataclass(frozen=True)
class Env:
    """Where this process sits: read from torchrun's environment before any collective."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env(run: RunConfig) -> Env:
    """Rank, world size and device from torchrun's variables (defaults: one process).

    Raises ValueError naming $.run.device when CUDA was asked for and is not there.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = run.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("$.run.device = \"cuda\" but CUDA is not available (use \"cpu\" or \"auto\")")
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Env(rank=rank, world_size=world, local_rank=local, device=device)


def init(env: Env, par: ParallelConfig) -> None:
    """Set the device and create the default process group (idempotent)."""
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if dist.is_initialized():
        return
    backend = par.backend
    if backend == "auto":
        backend = "nccl" if env.device.type == "cuda" else "gloo"
    if backend == "nccl" and env.device.type != "cuda":
        raise ValueError("$.parallel.backend = \"nccl\" needs a CUDA device; use \"gloo\" or \"auto\" on CPU")
    kwargs: dict[str, Any] = {"backend": backend}
    if env.device.type == "cuda":
        kwargs["device_id"] = env.device  # binds NCCL to this GPU up front (no lazy init on first collective)
    if "RANK" not in os.environ and env.world_size == 1:
        # plain `python -m perfkit.train`: a world of one needs no rendezvous
        kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
    dist.init_process_group(**kwargs)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank src's Python object on every rank (run ids, decisions made once)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Average of a device scalar over ranks (an async-free all-reduce; read it on logging steps only)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl" else dist.ReduceOp.SUM)
        if dist.get_backend() != "nccl":
            t /= dist.get_world_size()  # gloo has no AVG
    return t
