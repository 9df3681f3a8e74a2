"""The real training step of a config, built for timing: the trainer's own builders, without its loop.

A benchmark that re-implemented the model setup or the step would measure something else than what
`perfkit train` runs. So this module calls the trainer's pieces - `build_model` (per-block compile
+ FSDP2 + mixed precision), `build_loss_fn` (compiled with the blocks), `build_optimizer`,
`build_scheduler`, the .pbin `TrainLoader`, the backend flags and `train_step` (accumulation,
clipping, the non-finite guard) - and leaves out only what is not training throughput: evaluation,
checkpoints, metrics files. perfkit.train.setup.run builds these inline, so the calls are mirrored
here; tests/test_bench_train.py fails when setup.run gains a builder or backend flag this file lacks.

Synthetic data (`--synthetic`): random token ids of the configured shape (int64 (B, S) inputs and
targets), made once on the device and cycled, so no data file is needed and no time waits for data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import torch

from perfkit.config import Config
from perfkit.train.distributed import Env
from perfkit.train.plan import Plan, batch_geometry, make_plan


class SyntheticBatches:
    """Stands in for TrainLoader: next_batch() -> (inputs, targets) int64 (B, S) on the device."""

    def __init__(self, vocab_size: int, micro_batch_size: int, seq_len: int, device: torch.device,
                 rank: int, count: int = 4):
        gen = torch.Generator().manual_seed(1234 + rank)  # different tokens per rank, like real shards
        windows = torch.randint(0, vocab_size, (count, micro_batch_size, seq_len + 1), generator=gen)
        # inputs and targets overlap by one token, as the .pbin windows do
        self._batches = [(w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)) for w in windows]
        self._next = 0
        self.time_waiting_s = 0.0  # the batches already sit on the device

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._batches[self._next % len(self._batches)]
        self._next += 1
        return batch

    def close(self) -> None:
        self._batches = []


def with_steps(cfg: Config, total_steps: int) -> Config:
    """The config with the run length fixed to what the benchmark executes (the schedule sees the
    same number of steps as a real run of that length would), evaluation off."""
    training = msgspec.structs.replace(cfg.training, max_steps=total_steps, target_tokens=0, eval_every=0)
    return msgspec.structs.replace(cfg, training=training)


def bench_plan(cfg: Config, env: Env, synthetic: bool) -> Plan:
    """The trainer's plan (batch geometry, FLOPs per token). With real data the .pbin headers are
    read (and must hold at least one micro-batch per rank); synthetic data has no epoch to count."""
    from perfkit.model import flops_per_token, parameter_count

    if not synthetic:
        from perfkit.train import setup
        return setup.make_run_plan(cfg, env)
    _, global_batch = batch_geometry(cfg, env.world_size)
    # synthetic tokens never run out: call the run exactly one "epoch" long
    return make_plan(cfg, env.world_size, train_samples=global_batch * max(1, cfg.training.max_steps),
                     flops_per_token=flops_per_token(cfg.model), parameters=parameter_count(cfg.model),
                     non_embedding_parameters=parameter_count(cfg.model, non_embedding=True))


@dataclass
class BenchParts:
    cfg: Config
    env: Env
    plan: Plan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any               # TrainLoader or SyntheticBatches: next_batch(), time_waiting_s, close()
    loss_fn: Any              # perfkit.train.parallelize.build_loss_fn: compiled when the blocks are
    guard: Any                # perfkit.train.faults.NonFiniteGuard, as the trainer uses it
    steps_done: int = 0

    def step(self):
        """One optimizer step exactly as perfkit.train.loop runs it (no host sync inside)."""
        from perfkit.train.step import train_step

        self.steps_done += 1
        return train_step(self.model, self.optimizer, self.scheduler, self.loader.next_batch, self.loss_fn,
                          grad_accum=self.plan.grad_accum_steps, grad_clip=self.cfg.training.grad_clip,
                          guard=self.guard, step_number=self.steps_done)

    def close(self) -> None:
        self.loader.close()


def configure_backends(cfg: Config, env: Env) -> None:
    """The process-wide flags perfkit.train.setup.run sets before building (same condition)."""
    if env.device.type == "cuda" and cfg.parallel.mixed_precision == "bf16":
        torch.backends.cuda.matmul.allow_tf32 = True  # only the few fp32 matmuls outside the bf16 compute


def build_parts(cfg: Config, env: Env, plan: Plan, synthetic: bool) -> BenchParts:
    """Model, loss, optimizer, schedule and data of one rank (the process group must exist)."""
    from perfkit.data.loader import build_train_loader
    from perfkit.train.faults import NonFiniteGuard
    from perfkit.train.optimizer import build_optimizer
    from perfkit.train.parallelize import build_loss_fn, build_model
    from perfkit.train.schedules import build_scheduler

    configure_backends(cfg, env)
    model = build_model(cfg.model, cfg.parallel, env.device, cfg.run.seed)
    optimizer = build_optimizer(model, cfg.optimizer, env.device)
    scheduler = build_scheduler(cfg.scheduler, cfg.optimizer, optimizer, plan.max_steps)
    if synthetic:
        loader = SyntheticBatches(cfg.model.vocab_size, cfg.training.micro_batch_size,
                                  cfg.model.sequence_length, env.device, env.rank)
    else:
        loader = build_train_loader(cfg.data, seq_len=cfg.model.sequence_length,
                                    micro_batch_size=cfg.training.micro_batch_size, rank=env.rank,
                                    world_size=env.world_size, device=env.device)
    return BenchParts(cfg=cfg, env=env, plan=plan, model=model, optimizer=optimizer, scheduler=scheduler,
                      loader=loader, loss_fn=build_loss_fn(cfg.parallel),
                      guard=NonFiniteGuard(cfg.training.on_nonfinite))
