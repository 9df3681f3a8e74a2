"""Checkpointer across processes: FSDP2 on 2 gloo ranks, resharding 2 -> 1 and 1 -> 2, preemption.

Each scenario is a fresh `torchrun` launch of this file (the worker half below), so a resume
really starts from nothing but the files on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
pytestmark = pytest.mark.slow


def _torchrun(nproc: int, *args, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", str(HERE), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_two_ranks_exact_resume_and_reshard(tmp_path):
    _torchrun(2, "straight", tmp_path / "a", 6)
    _torchrun(2, "straight", tmp_path / "b", 3)          # saves step 3 (every_steps=3)
    _torchrun(2, "resume", tmp_path / "b", 3)            # resumes at 3, runs to 6
    a, b = _read(tmp_path / "a" / "losses.json"), _read(tmp_path / "b" / "losses.json")
    for rank in ("0", "1"):
        assert a[rank][3:] == b[rank], f"rank {rank}: resumed losses differ from the straight run"
    # 2 -> 1 rank: the one rank holds exactly the full weights and optimizer moments of step 6
    _torchrun(1, "dump", tmp_path / "b", 0)
    full = _read(tmp_path / "b" / "full_1rank.json")
    assert full["step"] == 6
    assert full["digest"] == _read(tmp_path / "b" / "digest_step6.json")["digest"]
    # 1 -> 2 ranks: the same digest after resharding back out
    _torchrun(2, "dump", tmp_path / "b", 0)
    assert _read(tmp_path / "b" / "full_2rank.json")["digest"] == full["digest"]


def test_sigterm_on_one_rank_saves_on_all_and_exits_143(tmp_path):
    r = _torchrun(2, "preempt", tmp_path, 50, check=False)
    assert r.returncode != 0
    codes = _read(tmp_path / "exit.json")
    assert codes == {"0": 143, "1": 143}, codes
    from perfkit.checkpoint import latest_checkpoint
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_00000002"  # the boundary right after the signal


def test_a_save_failing_on_one_rank_fails_on_all_without_a_hang(tmp_path):
    """Rank 1's disk is full at the step-6 save: both ranks stop with the same one-line error
    naming rank 1, the half-written step 6 is removed, step 3 stays the newest complete one."""
    r = _torchrun(2, "diskfull", tmp_path, 6, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    errors = _read(tmp_path / "errors.json")
    assert errors["0"] == errors["1"], errors
    message = errors["0"]
    assert "saving checkpoint step 6" in message and "rank 1: OSError: [Errno 28] No space left" in message
    assert "the last complete checkpoint" in message and "step_00000003, is intact" in message
    from perfkit.checkpoint import latest_checkpoint
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert not list((tmp_path / "checkpoints").glob("step_00000006*"))


# ---------------------------------------------------------------- worker (runs under torchrun)

def _worker(mode: str, run_dir: Path, steps: int) -> int:
    import hashlib
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from perfkit.checkpoint import Checkpointer
    from perfkit.config import CheckpointConfig
    from perfkit.train.preemption import PreemptionGuard
    sys.path.insert(0, str(HERE.parent))
    from test_checkpoint import TINY, TinyNet

    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    from perfkit import process_exit
    process_exit.note_process_group()  # the trainer's own init does this (distributed.init)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = TinyNet()
    mesh = init_device_mesh("cpu", (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(100 + rank)  # per-rank dropout streams, as a trainer would have
    progress = SimpleNamespace(step=0, tokens_seen=0, nonfinite_skips=0)
    cfg = CheckpointConfig(every_steps=3, keep_last=5, resume="auto" if mode in ("resume", "dump") else "none")
    ckpt = Checkpointer(cfg, run_dir, model=model, optimizer=opt, progress=progress, model_config=TINY)
    guard = PreemptionGuard() if mode == "preempt" else None
    ckpt.restore()
    if mode == "diskfull" and rank == 1:  # this rank's small files fail from the step-6 save on
        import errno

        import perfkit.checkpoint.checkpointer as checkpointer
        real_save = torch.save

        def full_disk(obj, f, *args, **kwargs):
            if "step_00000006" in str(f):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(obj, f, *args, **kwargs)

        checkpointer.torch.save = full_disk  # the module's torch is the torch module itself

    def digest() -> str:
        msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        h = hashlib.sha256()
        for sd in (msd, osd.get("state", {})):  # full on rank 0 only
            for k, v in sorted(_flat(sd).items()):
                h.update(k.encode() + (v.numpy().tobytes() if torch.is_tensor(v) else repr(v).encode()))
        return h.hexdigest()

    if mode == "dump":
        d = digest()
        if rank == 0:
            (run_dir / f"full_{world}rank.json").write_text(json.dumps({"step": progress.step, "digest": d}))
        _shutdown()
        return 0

    losses = []
    end = progress.step + steps
    code = 0
    while progress.step < end:
        g = torch.Generator().manual_seed(1000 * (progress.step + 1) + rank)
        batch = torch.randint(0, 64, (4, 9), generator=g)
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress.step += 1
        losses.append(loss.item())
        if mode == "preempt" and rank == 1 and progress.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # only rank 1 is told, mid-step
        if guard is not None and guard.should_stop():
            ckpt.save(progress.step)
            code = guard.exit_code
            break
        if mode == "diskfull":
            from perfkit.checkpoint.layout import CheckpointError
            try:
                ckpt.maybe_save(progress.step)
            except CheckpointError as e:
                out = [None] * world
                dist.all_gather_object(out, str(e))
                if rank == 0:
                    (run_dir / "errors.json").write_text(json.dumps({str(r): m for r, m in enumerate(out)}))
                break
            continue
        ckpt.maybe_save(progress.step)
    if mode == "diskfull":
        _shutdown()
        return 0
    d = digest() if progress.step == 6 else None
    out = [None] * world
    dist.all_gather_object(out, {"losses": losses, "code": code})
    if rank == 0:
        name = "exit.json" if mode == "preempt" else "losses.json"
        payload = {str(r): (o["code"] if mode == "preempt" else o["losses"]) for r, o in enumerate(out)}
        (run_dir / name).write_text(json.dumps(payload))
        if d is not None:
            (run_dir / "digest_step6.json").write_text(json.dumps({"digest": d}))
    _shutdown()
    return code


def _shutdown():
    import torch.distributed as dist
    dist.barrier()  # every rank is done talking; exit_process() then leaves without finalization


def _flat(sd, prefix=""):
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    from perfkit.process_exit import exit_process
    exit_process(_worker(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
