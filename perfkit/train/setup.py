"""Building a run from its config: checks that need no process group, then the parts, then the loop.

Every check in `distributed.read_env`, `make_run_plan` and `check_data` runs on every rank on its own
(the files are the same for all), so bad input stops all ranks with the same message before any
collective; nothing waits for a rank that already exited.
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


def check_data(cfg: Config, chunk_tokens: int = 1 << 26) -> None:
    """Every token id of the train and val files must be < $.model.vocab_size (an out-of-range id
    would crash the embedding lookup mid-run, on the GPU with a device-side assert).

    Skipped for a file whose token width cannot hold an id >= vocab_size; otherwise a chunked max
    over the memory map (about a second per GB from the page cache)."""
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


def configure_backends(cfg: Config, env: Env) -> None:
    """Process-wide numeric flags, set before anything is built."""
    if env.device.type == "cuda" and cfg.parallel.mixed_precision == "bf16":
        # the few fp32 matmuls outside the bf16 compute may use TF32 (an fp32 run stays exact fp32)
        torch.backends.cuda.matmul.allow_tf32 = True


def build_train_parts(cfg: Config, env: Env, plan: Plan, loader=None):
    """Model, optimizer, schedule, data, loss and non-finite guard of one rank (the process group
    must exist). The trainer and `perfkit bench` both build through here, so the benchmark times
    exactly what training runs. `loader`: a stand-in for the .pbin TrainLoader (the bench's
    synthetic batches); then no validation loader is built."""
    from perfkit.data.loader import build_train_loader, build_val_loader
    from perfkit.train.faults import NonFiniteGuard
    from perfkit.train.loop import TrainParts
    from perfkit.train.optimizer import build_optimizer
    from perfkit.train.parallelize import build_loss_fn, build_model
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
                      val_loader=val_loader, loss_fn=build_loss_fn(cfg.parallel),
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
            run_folder.create(cfg.run.root, exp_id)
            run_folder.save_resolved_config(run_dir, resolved)
            for section, values in resolved.items():  # the resolved config, one line per section
                print(f"config {section}: {json.dumps(values)}")
            print(f"perfkit train: run folder {run_dir}  (tensorboard --logdir {run_dir / 'tensorboard'})")
            print(f"perfkit train: {plan.world_size} rank(s) on {env.device.type}, {plan.parameters:,} parameters, "
                  f"{plan.max_steps} steps x {plan.tokens_per_step:,} tokens, grad accumulation "
                  f"{plan.grad_accum_steps}, {precision}, compile {'on' if cfg.parallel.compile else 'off'}", flush=True)

        parts = build_train_parts(cfg, env, plan)
        parts.checkpointer = Checkpointer(
            cfg.checkpoint, run_dir, model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler,
            loader=parts.loader, progress=parts.progress, model_config=cfg.model, config=resolved,
            faults=parts.guard)
        parts.checkpointer.restore()  # resume / warm start; mutates parts in place
        device_name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None
        metrics = MetricsLogger(cfg.metrics, run_dir, enabled=env.is_main, max_steps=plan.max_steps)
        try:
            with PreemptionGuard() as preemption:
                parts.preemption = preemption
                return loop.train(parts, plan, cfg.training, env, metrics, cfg.metrics.log_every,
                                  peak_flops(device_name))
        finally:
            metrics.close()
            parts.loader.close()
    finally:
        distributed.shutdown()
