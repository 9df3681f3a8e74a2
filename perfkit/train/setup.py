"""Building a run from its config: checks that need no process group, then the parts, then the loop.

Every check in `distributed.read_env`, `open_datasets`, `make_run_plan` and `check_data` runs on every
rank on its own,
so bad input stops all ranks with the same message before any collective. Where the ranks do not
see the same files or config (one node's copy missing or different), train_cmd.py has them agree on the
outcome through torchrun's store (`distributed.agree_on_setup`), so nothing waits for a rank that
already exited.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perfkit.checkpoint import Checkpointer
from perfkit.checkpoint.layout import CheckpointError, latest_checkpoint, resolve_checkpoint
from perfkit.checkpoint.hf_files import is_hf_folder
from perfkit.config import Config
from perfkit.data.loader import build_train_loader, build_val_loader, check_val_windows
from perfkit.data.manifests import check_data_manifests
from perfkit.data.windows import WindowDataset, pbin_paths
from perfkit.errors import UserError
from perfkit.metrics import MetricsLogger, check_wandb_installed, peak_flops
from perfkit.model import flops_per_token, parameter_count
from perfkit.train import bits_per_byte, distributed, float8, loop, resume_settings, run_folder
from perfkit.train.distributed import Env
from perfkit.train.faults import NonFiniteGuard
from perfkit.train.heartbeat import Heartbeat
from perfkit.train.loop import TrainParts
from perfkit.train.optimizer import build_optimizer
from perfkit.train.parallelize import build_model
from perfkit.train.plan import Plan, make_plan
from perfkit.train.preemption import PreemptionGuard
from perfkit.train.schedules import build_scheduler


@dataclass(frozen=True)
class Datasets:
    """The run's window datasets, opened once: the plan, the data checks and the loaders share them."""

    train: WindowDataset
    val: WindowDataset | None


def open_datasets(cfg: Config, world_size: int = 1) -> Datasets:
    """Open $.data.train and $.data.val once each (every .pbin's header and index checked, its
    tokens memory-mapped). The loaders' dataset checks (a file too short for one window, mixed
    token widths, too few validation windows for the ranks) stop every rank here, before the
    process group and the run folder exist."""
    data, seq = cfg.data, cfg.model.sequence_length
    if not data.train:
        raise UserError("$.data.train is empty: list at least one .pbin file "
                        "(`perfkit demo` writes data/preprocessed/shakespeare_train.pbin)")
    try:
        pbin_paths(data.train, "$.data.train")
    except UserError as e:
        demo = any("shakespeare_" in p for p in data.train)
        raise UserError(f"{e}{' (`perfkit demo` writes the demo data)' if demo else ''}") from None
    opened = {}
    for key, paths, weights in (("$.data.train", data.train, data.train_weights), ("$.data.val", data.val, None)):
        if not paths:
            continue
        try:
            opened[key] = WindowDataset(pbin_paths(paths, key), seq, reuse_last_target=data.reuse_last_target,
                                        weights=weights, seed=data.seed, config_key=key)
        except UserError as e:
            raise UserError(str(e) if str(e).startswith(key) else f"{key}: {e}") from None
    val = opened.get("$.data.val")
    if val is not None:
        check_val_windows(val, world_size)
    return Datasets(train=opened["$.data.train"], val=val)


def make_run_plan(cfg: Config, env: Env, datasets: Datasets) -> Plan:
    """The plan from the config, the world size and the train windows (no tokens are read)."""
    return make_plan(cfg, env.world_size, datasets.train.num_samples, flops_per_token=flops_per_token(cfg.model),
                     parameters=parameter_count(cfg.model),
                     non_embedding_parameters=parameter_count(cfg.model, non_embedding=True))


def check_data(cfg: Config, datasets: Datasets, chunk_tokens: int = 1 << 26) -> None:
    """Every token id of the train and val files must be < $.model.vocab_size (an out-of-range id
    would crash the embedding lookup mid-run, on the GPU with a device-side assert).

    Skipped for a file whose token width cannot hold an id >= vocab_size; otherwise a chunked max
    over the memory map the datasets already hold (about a second per GB from the page cache).
    First the files' manifests, where they have one (data/manifests.py): a tokenizer larger than the
    model, or train and val packed with different tokenizers, is refused naming the files."""
    vocab = cfg.model.vocab_size
    files = {key: [f.path for f in ds.files] for key, ds in (("$.data.train", datasets.train),
                                                            ("$.data.val", datasets.val)) if ds is not None}
    check_data_manifests(vocab, files, warn=_warn_once)
    for key, ds in (("$.data.train", datasets.train), ("$.data.val", datasets.val)):
        for f in ds.files if ds is not None else ():
            if (1 << (8 * f.token_width)) <= vocab or f.num_tokens == 0:
                continue
            tokens = f.tokens  # (T,) memory map
            top = max(int(np.max(tokens[i:i + chunk_tokens])) for i in range(0, f.num_tokens, chunk_tokens))
            if top >= vocab:
                raise UserError(f"{key}: {f.path} holds token id {top}, beyond $.model.vocab_size ({vocab}); "
                                f"was it packed with another tokenizer?")


def _warn_once(message: str) -> None:
    """A setup warning, printed by the first rank only (every rank runs the same checks)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"perfkit train: warning: {message}", file=sys.stderr, flush=True)


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
        raise UserError(f"$.run.root {str(root)!r} {what}; it must be a folder")
    if cfg.run.experiment_id:
        run_dir = root / cfg.run.experiment_id
        for p in (run_dir, run_dir / "checkpoints"):
            if p.exists() and not p.is_dir():
                raise UserError(f"$.run.experiment_id: {p} exists and is not a folder")

    resume, warm = (cfg.checkpoint.resume or "none").strip(), (cfg.checkpoint.warm_start or "").strip()
    if cfg.run.experiment_id and resume == "none":
        # a fresh start in a folder with checkpoints would replace them step by step and prune
        # the rest (keep_last): the earlier run would be lost without anyone asking for it
        newest = latest_checkpoint(root / cfg.run.experiment_id)
        if newest is not None:
            raise UserError(f"$.run.experiment_id: run folder {root / cfg.run.experiment_id} already holds "
                             f"checkpoints (newest {newest.name}) that a fresh run would overwrite; continue "
                             f"it with --checkpoint.resume=auto, or choose another $.run.experiment_id")
    try:
        if resume not in ("none", "auto"):
            resolve_checkpoint(resume)
        if warm and not Path(warm).is_file() and not is_hf_folder(warm):  # an export, an HF folder
            resolve_checkpoint(warm)
    except CheckpointError as e:
        key = "$.checkpoint.warm_start" if warm else "$.checkpoint.resume"
        hint = "" if warm or Path(resume).exists() else ' (it takes "none", "auto" or a checkpoint or run folder)'
        raise UserError(f"{key}: {e}{hint}") from None


def _reduce_note(cfg: Config, plan: Plan) -> str:
    """' (last micro batch reduce)' under accumulation: when gradients are reduce-scattered."""
    return f" ({cfg.parallel.reduce_gradients.replace('_', ' ')} reduce)" if plan.grad_accum_steps > 1 else ""


def configure_backends(cfg: Config, env: Env) -> None:
    """Process-wide numeric flags, set before anything is built."""
    if env.device.type == "cuda" and cfg.parallel.mixed_precision == "bf16":
        # the few fp32 matmuls outside the bf16 compute may use TF32 (an fp32 run stays exact fp32);
        # the fp32_precision API (torch >= 2.9): the old allow_tf32 flag warns, and mixing the two
        # raises when either is read later (Inductor reads fp32_precision)
        torch.backends.cuda.matmul.fp32_precision = "tf32"


def build_train_parts(cfg: Config, env: Env, plan: Plan, loader=None, datasets: Datasets | None = None):
    """Model, optimizer, schedule, data, loss and non-finite guard of one rank (the process group
    must exist). The trainer and `perfkit bench` both build through here, so the benchmark times
    exactly what training runs. `loader`: a stand-in for the .pbin TrainLoader (the bench's
    synthetic batches); then no validation loader is built. `datasets`: those setup opened
    (None: opened here)."""
    configure_backends(cfg, env)
    model = build_model(cfg.model, cfg.parallel, env.device, cfg.run.seed)
    optimizer = build_optimizer(model, cfg.optimizer, env.device)
    float8.register_scale_precompute(model, optimizer, cfg.parallel)  # tensorwise: scales after each update
    scheduler = build_scheduler(cfg.scheduler, cfg.optimizer, optimizer, plan.max_steps)
    loader_args = dict(seq_len=cfg.model.sequence_length, micro_batch_size=cfg.training.micro_batch_size,
                       rank=env.rank, world_size=env.world_size, device=env.device)
    val_loader = None
    if loader is None:
        datasets = datasets or open_datasets(cfg, env.world_size)
        loader = build_train_loader(cfg.data, dataset=datasets.train, **loader_args)
        val_loader = build_val_loader(cfg.data, dataset=datasets.val, **loader_args)
    return TrainParts(model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
                      val_loader=val_loader,
                      guard=NonFiniteGuard(cfg.training.on_nonfinite),
                      reduce_every_micro_batch=cfg.parallel.reduce_gradients == "every_micro_batch")


def check_metrics(cfg: Config, datasets: Datasets):
    """W&B installed when enabled, and how val/bpb is computed: (ValBytes or None, its start line).
    Before the process group, like the data checks (bits_per_byte.py reads the val manifests)."""
    check_wandb_installed(cfg.metrics)
    return bits_per_byte.resolve(datasets.val, cfg.metrics.bpb_tokenizer, cfg.model.vocab_size)


def run(cfg: Config, env: Env, plan: Plan, resolved: dict, datasets: Datasets | None = None,
        val_bytes=None) -> int:
    """Create the process group, build everything, train; always tears the group down.
    `val_bytes`: check_metrics's (ValBytes or None, start line)."""
    distributed.init(env, cfg.parallel)
    lock = None  # the run folder's flock (rank 0), held until the run ends
    # from here a signal exits at once until the first step completes (nothing to save before it);
    # a progress line every 30 s until then (building, restoring and compiling can take minutes)
    preemption, heartbeat = PreemptionGuard(armed=False), Heartbeat(enabled=env.is_main)
    try:
        exp_id = cfg.run.experiment_id or run_folder.new_experiment_id(resolved)
        exp_id = distributed.broadcast_object(exp_id)  # rank 0's timestamp for everyone
        run_dir = Path(cfg.run.root) / exp_id
        resolved = {**resolved, "run": {**resolved["run"], "experiment_id": exp_id}}
        lock = _lock_run_folder(env, run_dir)  # before anything reads or writes the folder
        precision = ("bf16 params / fp32 reduce" if env.device.type == "cuda" and cfg.parallel.mixed_precision == "bf16"
                     else "fp32" + (" (bf16 applies on CUDA only)" if cfg.parallel.mixed_precision == "bf16" else ""))
        if env.is_main:
            for section, values in resolved.items():  # the resolved config, one line per section
                print(f"config {section}: {json.dumps(values)}", file=sys.stderr)  # stderr: the run's log
            print(f"perfkit train: run folder {run_dir}  (tensorboard --logdir {run_dir / 'tensorboard'})",
                  file=sys.stderr)
            print(f"perfkit train: {plan.world_size} rank(s) on {env.device.type}, {plan.parameters:,} parameters, "
                  f"{plan.max_steps} steps x {plan.tokens_per_step:,} tokens, grad accumulation "
                  f"{plan.grad_accum_steps}{_reduce_note(cfg, plan)}, {precision}, "
                  f"compile {'on' if cfg.parallel.compile else 'off'}",
                  file=sys.stderr, flush=True)
            if val_bytes is not None and val_bytes[1]:
                print(f"perfkit train: {val_bytes[1]}", file=sys.stderr, flush=True)

        heartbeat.phase("building the model")
        parts = build_train_parts(cfg, env, plan, datasets=datasets)
        parts.heartbeat = heartbeat
        if val_bytes is not None and val_bytes[0] is not None:
            parts.val_bytes = val_bytes[0]
            table = parts.val_bytes.token_bytes
            parts.val_token_bytes = None if table is None else torch.from_numpy(table).to(env.device)
        try:  # the loader is closed whatever fails from here on
            parts.checkpointer = Checkpointer(
                cfg.checkpoint, run_dir, model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler,
                loader=parts.loader, progress=parts.progress, model_config=cfg.model, config=resolved,
                faults=parts.guard, data_files={"$.data.train": cfg.data.train, "$.data.val": cfg.data.val},
                settings_check=lambda saved: resume_settings.check(saved, resolved, _log_main))
            heartbeat.phase("restoring the checkpoint")
            if parts.checkpointer.restore() is not None and not cfg.checkpoint.warm_start:  # mutates parts
                # the restored optimizer/scheduler carry the checkpoint's settings: the config wins
                resume_settings.apply(parts.optimizer, parts.scheduler, cfg)
            # written only now: a refused resume (other model, damaged checkpoint) must leave the
            # run folder's config.json describing the checkpoints that are in it
            _write_run_folder(env, run_dir, resolved)
            device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None
            metrics = loop.open_metrics(cfg.metrics, run_dir, env, plan.max_steps, parts.progress.step, resolved)
            rc = 1  # what W&B is told if the loop raises
            try:
                parts.preemption = preemption
                rc = loop.train(parts, plan, cfg.training, env, metrics, cfg.metrics.log_every,
                                peak_flops(device_name))
                return rc
            finally:
                metrics.close(exit_code=rc)
        finally:
            parts.loader.close()
    finally:
        heartbeat.stop()
        preemption.close()
        if lock is not None:
            lock.release()
        distributed.shutdown()


def _log_main(message: str) -> None:  # called on rank 0 only
    print(message, file=sys.stderr, flush=True)


def _lock_run_folder(env: Env, run_dir: Path):
    """Rank 0 takes the run folder's flock (run_folder.RunLock); every rank gets the outcome, so a
    refused run stops all its ranks with the same line and none waits in a collective."""
    lock, problem = None, None
    if env.is_main:
        try:
            lock = run_folder.RunLock(run_dir).acquire()
            if lock.warning:
                print(f"perfkit train: {lock.warning}", file=sys.stderr, flush=True)
        except run_folder.RunFolderBusy as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot lock the run folder {run_dir}: {e.strerror or e}"
    problem = distributed.broadcast_object(problem)
    if problem:
        raise UserError(problem)
    return lock


def _write_run_folder(env: Env, run_dir: Path, resolved: dict) -> None:
    """Rank 0 creates the run folder and writes config.json; a failure (disk full, permissions)
    is handed to every rank so that none is left waiting in a collective."""
    problem = None
    if env.is_main:
        try:
            run_folder.create(run_dir.parent, run_dir.name)
            run_folder.save_resolved_config(run_dir, resolved)
        except OSError as e:
            problem = f"cannot write the run folder {run_dir}: {e.strerror or e}"
    problem = distributed.broadcast_object(problem)
    if problem:
        raise UserError(problem)
