"""The run's numbers, derived from the config and the world size before anything is built:
batch geometry, tokens per step, the training target (the seed's number conversions, in
perfkit.train.steps) and FLOPs per token. Printed by --dry-run and saved with the resolved config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from perfkit.config import Config
from perfkit.train import steps
from perfkit.errors import UserError


class PlanError(UserError):
    """The batch geometry or training target cannot work (names the config keys)."""


@dataclass(frozen=True)
class Plan:
    world_size: int
    micro_batch_size: int          # samples per rank per forward
    grad_accum_steps: int
    global_batch_size: int         # samples per optimizer step, all ranks
    sequence_length: int
    tokens_per_step: int           # target tokens per optimizer step, all ranks
    max_steps: int                 # optimizer steps this run trains for
    target_tokens: int             # max_steps * tokens_per_step
    train_samples: int             # windows in one epoch of $.data.train
    epochs: float                  # target samples / train samples
    flops_per_token: float         # 6 N_non_embedding + 12 L H d S (docs/architecture.md)
    parameters: int
    non_embedding_parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


def batch_geometry(cfg: Config, world_size: int) -> tuple[int, int]:
    """(grad_accum_steps, global_batch_size). global_batch_size > 0 fixes the global batch and
    derives accumulation; it must be a multiple of micro_batch_size * world_size."""
    t = cfg.training
    per_pass = t.micro_batch_size * world_size
    if t.global_batch_size == 0:
        return t.grad_accum_steps, per_pass * t.grad_accum_steps
    if t.global_batch_size % per_pass:
        raise PlanError(f"$.training.global_batch_size ({t.global_batch_size}) is not divisible by "
                        f"$.training.micro_batch_size ({t.micro_batch_size}) x world size ({world_size}) "
                        f"= {per_pass}")
    accum = t.global_batch_size // per_pass
    if t.grad_accum_steps not in (1, accum):
        raise PlanError(f"$.training.grad_accum_steps ({t.grad_accum_steps}) contradicts "
                        f"$.training.global_batch_size ({t.global_batch_size}), which gives {accum} on "
                        f"{world_size} ranks; set only one of them")
    return accum, t.global_batch_size


def make_plan(cfg: Config, world_size: int, train_samples: int, flops_per_token: float = 0.0,
              parameters: int = 0, non_embedding_parameters: int = 0) -> Plan:
    """Resolve the target: max_steps, else target_tokens, else one epoch of the data (the seed's
    num_tokens_from_packed_mem_map_dataset_continuous -> num_steps_from_num_tokens)."""
    t, seq = cfg.training, cfg.model.sequence_length
    accum, global_batch = batch_geometry(cfg, world_size)
    geometry = dict(seq_len=seq, micro_batch_size=t.micro_batch_size, grad_accum=accum, world_size=world_size)
    per_step = steps.tokens_per_step(**geometry)
    if train_samples < t.micro_batch_size * world_size:
        raise PlanError(f"$.data.train has {train_samples} windows of {seq + 1} tokens, fewer than one micro-batch "
                        f"per rank ($.training.micro_batch_size {t.micro_batch_size} x world size {world_size})")
    if t.max_steps > 0:
        max_steps = t.max_steps
    elif t.target_tokens > 0:
        max_steps = steps.steps_from_tokens(t.target_tokens, **geometry)
        if t.enforce_tokens_per_step_consistency and max_steps * per_step != t.target_tokens:
            raise PlanError(f"$.training.target_tokens ({t.target_tokens}) is not a whole number of steps of "
                            f"{per_step} tokens (micro_batch_size x grad_accum x world_size x sequence_length); "
                            f"use {max_steps * per_step} or {(max_steps + 1) * per_step}, or set "
                            f"$.training.enforce_tokens_per_step_consistency = false")
        if max_steps == 0:
            raise PlanError(f"$.training.target_tokens ({t.target_tokens}) is less than one step "
                            f"({per_step} tokens)")
    else:
        try:
            max_steps = steps.training_target(train_samples, source="$.data.train", **geometry).num_steps
        except steps.DataTooSmallError as e:
            raise PlanError(str(e)) from None
    return Plan(world_size=world_size, micro_batch_size=t.micro_batch_size, grad_accum_steps=accum,
                global_batch_size=global_batch, sequence_length=seq, tokens_per_step=per_step,
                max_steps=max_steps, target_tokens=max_steps * per_step, train_samples=train_samples,
                epochs=round(max_steps * global_batch / train_samples, 4),
                flops_per_token=float(flops_per_token), parameters=int(parameters),
                non_embedding_parameters=int(non_embedding_parameters))
