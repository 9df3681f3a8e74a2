"""Timing the training step honestly: warm-up (compilation, autotuning, first allocations) outside
the timing, a device synchronize at every timer boundary, and per-step times kept so the spread is
reported, not only the mean.

Timer boundaries: synchronize, read the clock, run one optimizer step, synchronize, read the clock.
One synchronize per step costs the launch latency of the next step's first kernels (microseconds
against steps of milliseconds); in exchange every step's time is the time its own work took.
The data wait is the loader's own counter (seconds next_batch blocked on the prefetch queue), read at
the same boundaries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from perfkit.metrics import host_peak_rss_gib


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CPU ops and gloo collectives are already synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    warmup_s: float                    # wall time of the warm-up steps (compile and autotune included)
    step_times_s: list[float]          # one per timed step
    wait_times_s: list[float]          # data-wait seconds inside each timed step
    loss_last: float                   # this rank's loss of the last timed step (a sanity value)
    peak_allocated_gib: float | None   # CUDA caching allocator peaks over warm-up + timed steps
    peak_reserved_gib: float | None
    host_peak_rss_gib: float           # this process's peak resident memory (the number on CPU)

    @property
    def data_wait_frac(self) -> float:
        return sum(self.wait_times_s) / max(sum(self.step_times_s), 1e-12)


def reset_memory_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measure(parts, warmup: int, steps: int) -> Measurement:
    """Run `warmup` untimed then `steps` timed optimizer steps of `parts` (a BenchParts).

    Raises perfkit.train.faults.NonFiniteError (stop mode) when a loss or gradient norm was not
    finite: throughput of a diverged run is not reported."""
    if steps < 1:
        raise ValueError("--steps must be >= 1")
    device = parts.env.device
    reset_memory_peaks(device)
    loader = parts.loader

    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        parts.step()
    synchronize(device)
    warmup_s = time.perf_counter() - start

    step_times, waits = [], []
    t_prev, w_prev = time.perf_counter(), loader.time_waiting_s
    result = None
    for _ in range(steps):
        result = parts.step()
        synchronize(device)
        t_now, w_now = time.perf_counter(), loader.time_waiting_s
        step_times.append(t_now - t_prev)
        waits.append(w_now - w_prev)
        t_prev, w_prev = t_now, w_now

    loss = float(result.loss.item())  # after the last synchronize: no extra wait
    if parts.guard is not None:
        parts.guard.poll()  # stop mode: NonFiniteError names the first bad step
    cuda = device.type == "cuda"
    return Measurement(
        warmup_s=warmup_s, step_times_s=step_times, wait_times_s=waits, loss_last=loss,
        peak_allocated_gib=torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        host_peak_rss_gib=host_peak_rss_gib())
