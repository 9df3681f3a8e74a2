"""The real training step of a config, built for timing: the trainer's own builders, without its loop.

A benchmark that re-implemented the model setup or the step would measure something else than what
`perfkit train` runs. So the parts come from the trainer's own `perfkit.train.setup.build_train_parts`
(backend flags, per-block compile + FSDP2 + mixed precision, compiled loss, optimizer, schedule,
.pbin loader, non-finite guard) and each step is the trainer's `train_step`; left out is only what
is not training throughput: evaluation, checkpoints, metrics files.

Synthetic data (`--synthetic`): random token ids of the configured shape (int64 (B, S) inputs and
targets), made once on the device and cycled, so no data file is needed and no time waits for data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import torch

from perfkit.config import Config
from perfkit.model import flops_per_token, parameter_count
from perfkit.train import setup
from perfkit.train.distributed import Env
from perfkit.train.plan import Plan, batch_geometry, make_plan
from perfkit.train.step import train_step


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
    if not synthetic:
        return setup.make_run_plan(cfg, env, setup.open_datasets(cfg, env.world_size))
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
    train: Any                # perfkit.train.loop.TrainParts, built by the trainer's own builder
    steps_done: int = 0

    @property
    def model(self) -> torch.nn.Module:
        return self.train.model

    @property
    def loader(self):         # TrainLoader or SyntheticBatches: next_batch(), time_waiting_s, close()
        return self.train.loader

    @property
    def guard(self):          # perfkit.train.faults.NonFiniteGuard, as the trainer uses it
        return self.train.guard

    def step(self):
        """One optimizer step exactly as perfkit.train.loop runs it (no host sync inside)."""
        t = self.train
        self.steps_done += 1
        return train_step(t.model, t.optimizer, t.scheduler, t.loader.next_batch,
                          grad_accum=self.plan.grad_accum_steps, grad_clip=self.cfg.training.grad_clip,
                          guard=t.guard, step_number=self.steps_done,
                          reduce_every_micro_batch=t.reduce_every_micro_batch)

    def close(self) -> None:
        self.loader.close()


def build_parts(cfg: Config, env: Env, plan: Plan, synthetic: bool) -> BenchParts:
    """Model, loss, optimizer, schedule and data of one rank (the process group must exist)."""
    loader = None
    if synthetic:
        loader = SyntheticBatches(cfg.model.vocab_size, cfg.training.micro_batch_size,
                                  cfg.model.sequence_length, env.device, env.rank)
    return BenchParts(cfg=cfg, env=env, plan=plan, train=setup.build_train_parts(cfg, env, plan, loader=loader))
