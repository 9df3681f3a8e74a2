"""Number conversions of the seed's config (Modalities `NumberConversion`), as plain integer math.

Names: W = world size (ranks), B = micro-batch size per rank, A = gradient-accumulation steps,
S = sequence length. One optimizer step consumes W * B * A samples = W * B * A * S target tokens.

The seed computes its training target from the dataset (`num_tokens_from_packed_mem_map_dataset_continuous`):
    samples = number of windows of the dataset           (docs/architecture.md: (T - (S+1)) // S + 1)
    steps   = samples // W // B // A                       (whole steps only; the rest is dropped)
    tokens  = steps * W * B * S * A                        (the target tokens actually trained on)
and `num_steps_from_num_tokens` turns a token target back into steps with (tokens // S) // W // B // A.
Floor division chained left to right equals one floor division by the product, so the order is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.formats.pbin import read_pbin
from perfkit.data.windows import num_windows
from perfkit.errors import UserError


class DataTooSmallError(UserError):
    """The data cannot fill even one optimizer step."""


def _positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def tokens_per_step(*, seq_len: int, micro_batch_size: int, grad_accum: int, world_size: int) -> int:
    """Target tokens one optimizer step trains on: W * B * A * S."""
    _positive(seq_len=seq_len, micro_batch_size=micro_batch_size, grad_accum=grad_accum,
              world_size=world_size)
    return world_size * micro_batch_size * grad_accum * seq_len


def steps_from_samples(num_samples: int, *, micro_batch_size: int, grad_accum: int,
                       world_size: int) -> int:
    """Whole optimizer steps in `num_samples` global samples (Modalities num_steps_from_num_samples)."""
    _positive(micro_batch_size=micro_batch_size, grad_accum=grad_accum, world_size=world_size)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return num_samples // world_size // micro_batch_size // grad_accum


def steps_from_tokens(num_tokens: int, *, seq_len: int, micro_batch_size: int, grad_accum: int,
                      world_size: int) -> int:
    """Whole optimizer steps in a global token budget (Modalities num_steps_from_num_tokens)."""
    _positive(seq_len=seq_len)
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return steps_from_samples(num_tokens // seq_len, micro_batch_size=micro_batch_size,
                              grad_accum=grad_accum, world_size=world_size)


def tokens_from_steps(num_steps: int, *, seq_len: int, micro_batch_size: int, grad_accum: int,
                      world_size: int) -> int:
    """Global target tokens of `num_steps` optimizer steps (Modalities num_tokens_from_num_steps)."""
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    return num_steps * tokens_per_step(seq_len=seq_len, micro_batch_size=micro_batch_size,
                                       grad_accum=grad_accum, world_size=world_size)


def local_batches_from_samples(num_samples: int, *, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches one rank reads for `num_samples` global samples (what a resume skips per rank)."""
    _positive(micro_batch_size=micro_batch_size, world_size=world_size)
    return num_samples // world_size // micro_batch_size


@dataclass(frozen=True)
class TrainingTarget:
    """What one epoch over a dataset gives: the seed's num_target_tokens and num_target_steps."""

    num_samples: int       # windows in the dataset (one epoch)
    num_steps: int         # whole optimizer steps in one epoch
    num_tokens: int        # target tokens those steps train on (= steps * tokens_per_step)
    tokens_per_step: int


def training_target(num_samples: int, *, seq_len: int, micro_batch_size: int, grad_accum: int,
                    world_size: int, source: str = "dataset") -> TrainingTarget:
    """The seed's num_tokens_from_packed_mem_map_dataset_continuous, then num_steps_from_num_tokens.

    Raises DataTooSmallError (naming `source`) when the samples cannot fill one optimizer step.
    """
    per_step = tokens_per_step(seq_len=seq_len, micro_batch_size=micro_batch_size,
                               grad_accum=grad_accum, world_size=world_size)
    steps = steps_from_tokens(num_samples * seq_len, seq_len=seq_len, micro_batch_size=micro_batch_size,
                              grad_accum=grad_accum, world_size=world_size)
    if steps == 0:
        need = world_size * micro_batch_size * grad_accum
        raise DataTooSmallError(
            f"{source}: {num_samples} windows of {seq_len + 1} tokens, but one optimizer step needs "
            f"{need} (world_size {world_size} x micro_batch_size {micro_batch_size} x "
            f"gradient_accumulation {grad_accum}); use more data or smaller batches")
    return TrainingTarget(num_samples=num_samples, num_steps=steps, num_tokens=steps * per_step,
                          tokens_per_step=per_step)


def training_target_from_files(paths: list[str], *, seq_len: int, micro_batch_size: int,
                               grad_accum: int, world_size: int,
                               reuse_last_target: bool = True) -> TrainingTarget:
    """`training_target` of .pbin files concatenated (one epoch = the sum of their windows).

    Reads only the headers' token counts (through the validating reader), never the tokens.
    """
    if not paths:
        raise ValueError("no .pbin files given")
    samples = sum(num_windows(read_pbin(p).num_tokens, seq_len, reuse_last_target) for p in paths)
    return training_target(samples, seq_len=seq_len, micro_batch_size=micro_batch_size,
                           grad_accum=grad_accum, world_size=world_size, source=", ".join(map(str, paths)))
