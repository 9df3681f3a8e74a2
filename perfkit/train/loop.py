"""The training loop: steps, logging, evaluation, checkpoint and preemption hooks.

The run's mutable progress lives in one small object (`Progress`), which the checkpointer saves
and restores together with the optimizer, scheduler and loader. Host-device synchronization
happens only on logging steps (reading the loss and gradient norm), at evaluation and at
checkpoint saves.

Writing metrics is agreed like a checkpoint save: only rank 0 writes, but every rank learns the
outcome on the logging step (the all-gather of perfkit/checkpoint/checkpointer.py's
`all_ranks_succeed`), so a full disk stops all ranks together with one line (MetricsWriteError)
instead of leaving the others waiting in the next collective.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from perfkit.checkpoint import CheckpointError
from perfkit.checkpoint.checkpointer import all_ranks_succeed  # the outcome all-gather saves use too
from perfkit.config import MetricsConfig, TrainingConfig
from perfkit.metrics import MetricsLogger, MetricsWriteError, host_peak_rss_gib, throughput
from perfkit.train.distributed import Env, mean_across_ranks
from perfkit.train.evaluate import evaluate_sums
from perfkit.train.plan import Plan
from perfkit.train.step import train_step


class TrainingError(RuntimeError):
    """A failure after training started (a checkpoint save that failed): exit code 1, one line."""


@dataclass
class Progress:
    """Everything that changes from step to step besides tensors (checkpointed as a dict)."""

    step: int = 0               # optimizer steps completed
    tokens_seen: int = 0        # global target tokens trained on
    nonfinite_skips: int = 0    # steps whose update was dropped (training.on_nonfinite = "skip")

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "nonfinite_skips": self.nonfinite_skips}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.nonfinite_skips = int(state.get("nonfinite_skips", 0))


@dataclass
class TrainParts:
    """What the loop drives; built by train_cmd.py."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any                      # torch LR scheduler (state_dict / load_state_dict)
    loader: Any                         # TrainLoader: next_batch(), time_waiting_s, state_dict()
    val_loader: Any                     # finite iterable of (inputs, targets), or None
    progress: Progress = field(default_factory=Progress)
    guard: Any = None                   # perfkit.train.faults.NonFiniteGuard
    checkpointer: Any = None            # perfkit.checkpoint.Checkpointer
    preemption: Any = None              # perfkit.train.preemption.PreemptionGuard
    heartbeat: Any = None               # perfkit.train.heartbeat.Heartbeat, stopped after the first step
    val_bytes: Any = None               # perfkit.train.bits_per_byte.ValBytes: how val/bpb is computed, or None
    val_token_bytes: Any = None         # its (V,) int64 bytes-per-token table on the device (exact mode)
    reduce_every_micro_batch: bool = False  # $.parallel.reduce_gradients = "every_micro_batch"


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return host_peak_rss_gib()


def _agreed(work, what: str):
    """Run rank 0's metrics work on every rank's behalf and agree on the outcome (collective)."""
    try:
        return all_ranks_succeed(work, None)
    except CheckpointError as e:  # the checkpointer's agreement names the failing rank
        reason = str(e).replace(f"{MetricsWriteError.__name__}: ", "")
        raise MetricsWriteError(f"{what}: {reason}; training stopped, no checkpoint was attempted (the same "
                                f"disk); free space and resume with --checkpoint.resume=auto") from None


def open_metrics(cfg: MetricsConfig, run_dir, env: Env, max_steps: int, start_step: int,
                 run_config: dict | None = None) -> MetricsLogger:
    """The run's MetricsLogger (writing on rank 0 only), its opening agreed by every rank;
    `run_config`: the resolved config, for W&B."""
    return _agreed(lambda: MetricsLogger(cfg, run_dir, enabled=env.is_main, max_steps=max_steps,
                                         start_step=start_step, run_config=run_config),
                   "opening the metrics failed")


def _log(metrics: MetricsLogger, step: int, record: dict, kind: str = "train") -> None:
    _agreed(lambda: metrics.log(step, record, kind=kind), f"step {step}: metrics")


def _run_eval(parts: TrainParts, env: Env, cfg: TrainingConfig, metrics: MetricsLogger) -> float | None:
    if parts.val_loader is None:
        return None
    result = evaluate_sums(parts.model, parts.val_loader, env.device, cfg.eval_batches, parts.val_token_bytes)
    record = {"val_loss": result.loss}
    if parts.val_bytes is not None:
        record["val_bpb"] = parts.val_bytes.bits_per_byte(result)
    _log(metrics, parts.progress.step, record, kind="val")
    return result.loss


def train(parts: TrainParts, plan: Plan, cfg: TrainingConfig, env: Env, metrics: MetricsLogger,
          log_every: int, peak_flops: float | None) -> int:
    """Train until plan.max_steps; returns the process exit code (0, or the preemption code).
    Raises TrainingError for a failed checkpoint save, MetricsWriteError for a failed metrics write
    and NonFiniteError in on_nonfinite="stop" mode, on every rank alike."""
    try:
        return _train(parts, plan, cfg, env, metrics, log_every, peak_flops)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None


def _train(parts: TrainParts, plan: Plan, cfg: TrainingConfig, env: Env, metrics: MetricsLogger,
           log_every: int, peak_flops: float | None) -> int:
    progress, loader = parts.progress, parts.loader
    if parts.heartbeat is not None:
        step_text = f"in step {progress.step + 1}, the first of this process"
        parts.heartbeat.phase(f"{step_text} (compiling, with parallel.compile)")
    last_time, last_wait, last_tokens = time.perf_counter(), loader.time_waiting_s, progress.tokens_seen

    while progress.step < plan.max_steps:
        lr = parts.optimizer.param_groups[0]["lr"]  # the lr this step uses (a Python float: no sync)
        result = train_step(parts.model, parts.optimizer, parts.scheduler, loader.next_batch,
                            grad_accum=plan.grad_accum_steps, grad_clip=cfg.grad_clip, guard=parts.guard,
                            step_number=progress.step + 1,
                            reduce_every_micro_batch=parts.reduce_every_micro_batch)
        progress.step += 1
        progress.tokens_seen += plan.tokens_per_step
        step = progress.step
        last = step == plan.max_steps
        if parts.preemption is not None and not parts.preemption.armed:
            parts.preemption.arm()  # a step completed: from now on a signal saves at the step boundary
            if parts.heartbeat is not None:
                parts.heartbeat.stop()

        if step % log_every == 0 or last:
            # The only host-device syncs of the training loop: reading the loss and grad norm here.
            loss = mean_across_ranks(result.loss).item()
            grad_norm = float(result.grad_norm.item())
            if parts.guard is not None:
                parts.guard.poll(progress)  # raises NonFiniteError in "stop" mode
            now = time.perf_counter()
            elapsed = max(now - last_time, 1e-9)
            tok_s_gpu = (progress.tokens_seen - last_tokens) / elapsed / env.world_size
            tflops, mfu = throughput(tok_s_gpu, plan.flops_per_token, peak_flops)
            wait = (loader.time_waiting_s - last_wait) / elapsed
            _log(metrics, step, {
                "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s_per_gpu": tok_s_gpu,
                "tflops_per_gpu": tflops, "mfu": mfu, "peak_mem_gib": _peak_memory_gib(env.device),
                "data_wait_frac": wait, "tokens_seen": progress.tokens_seen,
                "nonfinite_skips": progress.nonfinite_skips,
            })
            last_time, last_wait, last_tokens = now, loader.time_waiting_s, progress.tokens_seen

        if (cfg.eval_every and step % cfg.eval_every == 0) or (last and parts.val_loader is not None):
            _run_eval(parts, env, cfg, metrics)
            last_time = time.perf_counter()  # evaluation time is not training throughput

        if parts.preemption is not None and parts.preemption.should_stop():
            if parts.checkpointer is not None:
                parts.checkpointer.save(step)
            return parts.preemption.exit_code
        if parts.checkpointer is not None:
            parts.checkpointer.maybe_save(step)
            last_time = time.perf_counter() if parts.checkpointer.last_saved_step == step else last_time

    if parts.checkpointer is not None:
        parts.checkpointer.maybe_save(progress.step, final=True)
    return 0
