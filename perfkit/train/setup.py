"""Building a run from its config: checks that need no process group, then the parts, then the loop.

Every check in `distributed.read_env`, `make_run_plan` and `check_data` runs on every rank on its own,
so bad input stops all ranks with the same message before any collective. Where the ranks do not
see the same files or config (one node's copy missing or different), main.py has them agree on the
outcome through torchrun's store (`distributed.agree_on_setup`), so nothing waits for a rank that
already exited.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from perfkit.config import Config, ConfigError
from perfkit.data.pbin import read_pbin
from perfkit.data.windows import num_windows, pbin_paths
from perfkit.train import distributed
from perfkit.train.distributed import Env
from perfkit.train.plan import Plan, make_plan

# Errors that mean "bad input": reported in one line, without a traceback.
SETUP_ERRORS = (ConfigError, ValueError, FileNotFoundError)


def make_run_plan(cfg: Config, env: Env) -> Plan:
    """The plan from the config, the world size and the .pbin headers (no tokens are read)."""
    from perfkit.model import flops_per_token, parameter_count

    if not cfg.data.train:
        raise ValueError("$.data.train is empty: list at least one .pbin file "
                         "(`perfkit demo` writes data/preprocessed/shakespeare_train.pbin)")
    try:
        paths = pbin_paths(cfg.data.train, "$.data.train")
    except ValueError as e:
        demo = any("shakespeare_" in p for p in cfg.data.train)
        raise ValueError(f"{e}{' (`perfkit demo` writes the demo data)' if demo else ''}") from None
    seq = cfg.model.sequence_length
    samples = sum(num_windows(read_pbin(p).num_tokens, seq, cfg.data.reuse_last_target) for p in paths)
    return make_plan(cfg, env.world_size, samples, flops_per_token=flops_per_token(cfg.model),
                     parameters=parameter_count(cfg.model),
                     non_embedding_parameters=parameter_count(cfg.model, non_embedding=True))


def check_data(cfg: Config, chunk_tokens: int = 1 << 26, world_size: int = 1) -> None:
    """Every token id of the train and val files must be < $.model.vocab_size (an out-of-range id
    would crash the embedding lookup mid-run, on the GPU with a device-side assert).

    Skipped for a file whose token width cannot hold an id >= vocab_size; otherwise a chunked max
    over the memory map (about a second per GB from the page cache).

    Also opens the window index space of train and val the way the loaders will (a file too short
    for one window, mixed token widths, too few validation windows for the ranks), so that these
    errors stop every rank here, before the process group and the run folder exist."""
    _check_windows(cfg, world_size)
    vocab = cfg.model.vocab_size
    for key, paths in (("$.data.train", cfg.data.train), ("$.data.val", cfg.data.val)):
        for p in pbin_paths(paths, key):
            f = read_pbin(p)
            if (1 << (8 * f.token_width)) <= vocab or f.num_tokens == 0:
                continue
            top = max(int(np.max(f.tokens[i:i + chunk_tokens])) for i in range(0, f.num_tokens, chunk_tokens))
            if top >= vocab:
                raise ValueError(f"{key}: {p} holds token id {top}, beyond $.model.vocab_size ({vocab}); "
                                 f"was it packed with another tokenizer?")


def _check_windows(cfg: Config, world_size: int) -> None:
    """The loaders' own dataset checks, run early (headers only: no token is read)."""
    from perfkit.data.windows import WindowDataset

    seq, data = cfg.model.sequence_length, cfg.data
    for key, paths, weights in (("$.data.train", data.train, data.train_weights), ("$.data.val", data.val, None)):
        if not paths:
            continue
        try:
            ds = WindowDataset(pbin_paths(paths, key), seq, reuse_last_target=data.reuse_last_target,
                               weights=weights, seed=data.seed, config_key=key)
        except ValueError as e:
            raise ValueError(str(e) if str(e).startswith(key) else f"{key}: {e}") from None
        if key == "$.data.val" and ds.num_samples < world_size:
            raise ValueError(f"$.data.val: {ds.num_samples} validation windows of {seq + 1} tokens for "
                             f"{world_size} ranks; every rank needs at least one")


def check_outputs(cfg: Config) -> None:
    """Paths the run will write or load, checked before the process group exists: $.run.root
    must be (or become) a folder, and an explicit resume / warm-start path must exist. A
    rank-0-only failure later would leave the other ranks waiting in a collective."""
    root = Path(cfg.run.root)
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the nearest existing ancestor decides whether mkdir can work
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == root else f"cannot be created: {probe} is a file"
        raise ValueError(f"$.run.root {str(root)!r} {what}; it must be a folder")
    if cfg.run.experiment_id:
        run_dir = root / cfg.run.experiment_id
        for p in (run_dir, run_dir / "checkpoints"):
            if p.exists() and not p.is_dir():
                raise ValueError(f"$.run.experiment_id: {p} exists and is not a folder")
    from perfkit.checkpoint.layout import CheckpointError, latest_checkpoint, resolve_checkpoint

    resume, warm = (cfg.checkpoint.resume or "none").strip(), (cfg.checkpoint.warm_start or "").strip()
    if cfg.run.experiment_id and resume == "none":
        # a fresh start in a folder with checkpoints would replace them step by step and prune
        # the rest (keep_last): the earlier run would be lost without anyone asking for it
        newest = latest_checkpoint(root / cfg.run.experiment_id)
        if newest is not None:
            raise ValueError(f"$.run.experiment_id: run folder {root / cfg.run.experiment_id} already holds "
                             f"checkpoints (newest {newest.name}) that a fresh run would overwrite; continue "
                             f"it with --checkpoint.resume=auto, or choose another $.run.experiment_id")
    try:
        if resume not in ("none", "auto"):
            resolve_checkpoint(resume)
        if warm and not Path(warm).is_file():
            resolve_checkpoint(warm)
    except CheckpointError as e:
        key = "$.checkpoint.warm_start" if warm else "$.checkpoint.resume"
        hint = "" if warm or Path(resume).exists() else ' (it takes "none", "auto" or a checkpoint or run folder)'
        raise ValueError(f"{key}: {e}{hint}") from None


def configure_backends(cfg: Config, env: Env) -> None:
    """Process-wide numeric flags, set before anything is built."""
    if env.device.type == "cuda" and cfg.parallel.mixed_precision == "bf16":
        # the few fp32 matmuls outside the bf16 compute may use TF32 (an fp32 run stays exact fp32);
        # the fp32_precision API (torch >= 2.9): the old allow_tf32 flag warns, and mixing the two
        # raises when either is read later (Inductor reads fp32_precision)
        torch.backends.cuda.matmul.fp32_precision = "tf32"


def build_train_parts(cfg: Config, env: Env, plan: Plan, loader=None):
    """Model, optimizer, schedule, data, loss and non-finite guard of one rank (the process group
    must exist). The trainer and `perfkit bench` both build through here, so the benchmark times
    exactly what training runs. `loader`: a stand-in for the .pbin TrainLoader (the bench's
    synthetic batches); then no validation loader is built."""
    from perfkit.data.loader import build_train_loader, build_val_loader
    from perfkit.train.faults import NonFiniteGuard
    from perfkit.train.loop import TrainParts
    from perfkit.train.optimizer import build_optimizer
    from perfkit.train.parallelize import build_model
    from perfkit.train.schedules import build_scheduler

    configure_backends(cfg, env)
    model = build_model(cfg.model, cfg.parallel, env.device, cfg.run.seed)
    optimizer = build_optimizer(model, cfg.optimizer, env.device)
    scheduler = build_scheduler(cfg.scheduler, cfg.optimizer, optimizer, plan.max_steps)
    loader_args = dict(seq_len=cfg.model.sequence_length, micro_batch_size=cfg.training.micro_batch_size,
                       rank=env.rank, world_size=env.world_size, device=env.device)
    val_loader = None
    if loader is None:
        loader = build_train_loader(cfg.data, **loader_args)
        val_loader = build_val_loader(cfg.data, **loader_args)
    return TrainParts(model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
                      val_loader=val_loader,
                      guard=NonFiniteGuard(cfg.training.on_nonfinite))


def run(cfg: Config, env: Env, plan: Plan, resolved: dict) -> int:
    """Create the process group, build everything, train; always tears the group down."""
    from perfkit.checkpoint import Checkpointer
    from perfkit.metrics import MetricsLogger, peak_flops
    from perfkit.train import loop, run_folder
    from perfkit.train.preemption import PreemptionGuard

    distributed.init(env, cfg.parallel)
    try:
        exp_id = cfg.run.experiment_id or run_folder.new_experiment_id(resolved)
        exp_id = distributed.broadcast_object(exp_id)  # rank 0's timestamp for everyone
        run_dir = Path(cfg.run.root) / exp_id
        resolved = {**resolved, "run": {**resolved["run"], "experiment_id": exp_id}}
        precision = ("bf16 params / fp32 reduce" if env.device.type == "cuda" and cfg.parallel.mixed_precision == "bf16"
                     else "fp32" + (" (bf16 applies on CUDA only)" if cfg.parallel.mixed_precision == "bf16" else ""))
        if env.is_main:
            for section, values in resolved.items():  # the resolved config, one line per section
                print(f"config {section}: {json.dumps(values)}")
            print(f"perfkit train: run folder {run_dir}  (tensorboard --logdir {run_dir / 'tensorboard'})")
            print(f"perfkit train: {plan.world_size} rank(s) on {env.device.type}, {plan.parameters:,} parameters, "
                  f"{plan.max_steps} steps x {plan.tokens_per_step:,} tokens, grad accumulation "
                  f"{plan.grad_accum_steps}, {precision}, compile {'on' if cfg.parallel.compile else 'off'}", flush=True)

        parts = build_train_parts(cfg, env, plan)
        try:  # the loader is closed whatever fails from here on
            parts.checkpointer = Checkpointer(
                cfg.checkpoint, run_dir, model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler,
                loader=parts.loader, progress=parts.progress, model_config=cfg.model, config=resolved,
                faults=parts.guard)
            parts.checkpointer.restore()  # resume / warm start; mutates parts in place
            # written only now: a refused resume (other model, damaged checkpoint) must leave the
            # run folder's config.json describing the checkpoints that are in it
            _write_run_folder(env, run_dir, resolved)
            device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None
            metrics = MetricsLogger(cfg.metrics, run_dir, enabled=env.is_main, max_steps=plan.max_steps,
                                    start_step=parts.progress.step)
            try:
                with PreemptionGuard() as preemption:
                    parts.preemption = preemption
                    return loop.train(parts, plan, cfg.training, env, metrics, cfg.metrics.log_every,
                                      peak_flops(device_name))
            finally:
                metrics.close()
        finally:
            parts.loader.close()
    finally:
        distributed.shutdown()


def _write_run_folder(env: Env, run_dir: Path, resolved: dict) -> None:
    """Rank 0 creates the run folder and writes config.json; a failure (disk full, permissions)
    is handed to every rank so that none is left waiting in a collective."""
    from perfkit.train import run_folder

    problem = None
    if env.is_main:
        try:
            run_folder.create(run_dir.parent, run_dir.name)
            run_folder.save_resolved_config(run_dir, resolved)
        except OSError as e:
            problem = f"cannot write the run folder {run_dir}: {e.strerror or e}"
    problem = distributed.broadcast_object(problem)
    if problem:
        raise ValueError(problem)
