"""Process group and device setup: torchrun (any number of nodes) or a plain single process.

Every run, even `python -m perfkit.train` in one process, gets a process group, so the model is
always an FSDP2 module and one code path covers 1..N ranks (a world of one uses an in-memory store,
no port). NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from perfkit import process_exit, ranks
from perfkit.config import ParallelConfig, RunConfig
from perfkit.errors import UserError


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
            raise UserError("$.run.device = \"cuda\" but CUDA is not available (use \"cpu\" or \"auto\")")
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Env(rank=rank, world_size=world, local_rank=local, device=device)


def agree_on_setup(problem: tuple[int, str] | None, fingerprint: dict | None = None,
                   timeout: timedelta = timedelta(minutes=30)) -> tuple[int, str] | None:
    """Every rank's setup outcome, exchanged before the process group exists; returns the problem
    that stops the run (exit code, message: the same on every rank) or None to go on.

    The setup checks run on every rank on its own, but not every bad input is the same on every
    rank: a .pbin missing or truncated on one node, a run folder that is not on a shared
    filesystem, a config file that differs between nodes. A rank that exits on its own there
    leaves the others waiting in init_process_group for it (30 minutes by default, not seconds).
    So under torchrun each rank publishes its outcome in the launcher's store (the one
    init_process_group uses next), waits for everyone's, and all ranks stop with the first
    failing rank's message. `fingerprint` (the resolved config with the derived plan) must also
    match rank 0's: ranks that read other overrides or files (other batch geometry, step counts,
    resume settings) would fail or hang mid-run instead.

    Only under torchrun (TORCHELASTIC_USE_AGENT_STORE): there the store lives in the launcher
    agent, not in a worker that may be about to exit. Other launches keep the old behaviour."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return problem
    rank = int(os.environ["RANK"])
    # one namespace per launch attempt: a torchrun restart must not read the previous attempt's keys
    attempt = f"perfkit/setup/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                           timeout=timeout)
    store = dist.PrefixStore(attempt, client)
    mine = {"problem": list(problem) if problem else None, "plan": fingerprint}
    store.set(f"outcome/{rank}", json.dumps(mine))
    keys = [f"outcome/{r}" for r in range(world)]
    store.wait(keys)
    outcomes = [json.loads(v) for v in store.multi_get(keys)]

    failed = [(r, o["problem"]) for r, o in enumerate(outcomes) if o["problem"]]
    decision = None
    if failed:
        first, (code, msg) = failed[0]
        same_everywhere = len(failed) == world and all(p[1] == msg for _, p in failed)
        decision = (int(code), msg if same_everywhere else f"rank {first}: {msg}")
    else:
        ref = outcomes[0]["plan"]
        for r, o in enumerate(outcomes):
            if o["plan"] != ref:
                a, b = _flat(ref), _flat(o["plan"])
                diff = "; ".join(f"{k} = {a.get(k)} on rank 0, {b.get(k)} on rank {r}"
                                 for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                decision = (2, f"ranks disagree on the resolved config ({diff}); every node needs the "
                               f"same config, overrides and .pbin files")
                break
    if decision is not None:
        # every rank takes the same decision; nobody exits before all have read the outcomes, or
        # the launcher that hosts the store could go away under a rank that is still reading
        store.set(f"read/{rank}", "1")
        store.wait([f"read/{r}" for r in range(world)])
    return decision


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def init(env: Env, par: ParallelConfig) -> None:
    """Set the device and create the default process group (idempotent)."""
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if ranks.is_distributed():
        return
    backend = par.backend
    if backend == "auto":
        backend = "nccl" if env.device.type == "cuda" else "gloo"
    if backend == "nccl" and env.device.type != "cuda":
        raise UserError("$.parallel.backend = \"nccl\" needs a CUDA device; use \"gloo\" or \"auto\" on CPU")
    kwargs: dict[str, Any] = {"backend": backend}
    if env.device.type == "cuda":
        kwargs["device_id"] = env.device  # binds NCCL to this GPU up front (no lazy init on first collective)
    if "RANK" not in os.environ and env.world_size == 1:
        # plain `python -m perfkit.train`: a world of one needs no rendezvous
        kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
    dist.init_process_group(**kwargs)
    process_exit.note_process_group()  # its threads outlive destroy_process_group: see process_exit


def shutdown() -> None:
    if ranks.is_distributed():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank src's Python object on every rank (run ids, decisions made once)."""
    if ranks.world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Average of a device scalar over ranks (an async-free all-reduce; read it on logging steps only)."""
    if ranks.world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl" else dist.ReduceOp.SUM)
        if dist.get_backend() != "nccl":
            t /= ranks.world_size()  # gloo has no AVG
    return t
