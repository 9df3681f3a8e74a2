"""Training metrics: one console line, TensorBoard scalars, a metrics.jsonl record and (optionally)
a Weights & Biases log per record (perfkit/metrics_wandb.py).

Only rank 0 writes (pass enabled=False elsewhere). The console line goes to stderr, the stream of
the whole run's log (checkpoint and preemption lines too), so a redirected log keeps their order.
Every record has the same keys; values that cannot be known are None in JSON, "n/a" on the
console and absent from TensorBoard and W&B (MFU on a GPU whose peak is not in the table is never
guessed). W&B never fails a run: its problems are warnings (see metrics_wandb.py).

Throughput numbers (docs/architecture.md): tokens/s per GPU is the headline; TFLOP/s per GPU =
tokens/s per GPU * FLOPs per token; MFU = TFLOP/s / dense bf16 peak of the GPU.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from perfkit.atomic import write_atomic
from perfkit.config import MetricsConfig
from perfkit.metrics_wandb import WandbWriter, check_wandb_installed  # noqa: F401 - for the trainer

# Dense bf16 peak FLOP/s by GPU name (NVIDIA datasheets: the sparsity figures halved); checked in
# order, so the more specific names come first.
_PEAK_BF16 = (
    ("H200 NVL", 835e12),   # the PCIe card (600 W): 1,671 sparse -> 835 dense, below the SXM part
    ("H200", 989e12),   # SXM, also GH200
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),   # SXM: torch names it "NVIDIA H100 80GB HBM3"
    ("A100", 312e12),
)


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a GPU from its torch name (e.g. "NVIDIA H100 80GB HBM3"), None if unknown."""
    if not device_name:
        return None
    name = device_name.upper()
    for key, peak in _PEAK_BF16:
        if key in name:
            return peak
    return None


def throughput(tokens_per_s_per_gpu: float, flops_per_token: float, peak: float | None) -> tuple[float, float | None]:
    """(TFLOP/s per GPU, MFU in [0, 1] or None when the peak is unknown)."""
    flops = tokens_per_s_per_gpu * flops_per_token
    return flops / 1e12, (flops / peak if peak else None)


def host_peak_rss_gib() -> float:
    """This process's peak resident memory (the CPU stand-in for CUDA peak allocated)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


class MetricsWriteError(RuntimeError):
    """metrics.jsonl or the TensorBoard events could not be written (disk full, quota, I/O error):
    the message names the file, the reason and the free space on its filesystem."""


def _write_failed(path: Path, e: BaseException) -> MetricsWriteError:
    text = str(e).strip()
    reason = getattr(e, "strerror", None) or (text.splitlines()[0] if text else type(e).__name__)
    try:
        usage = shutil.disk_usage(path if path.is_dir() else path.parent)
        free = f"; {usage.free / 2**20:,.0f} MiB free on its filesystem"
    except OSError:
        free = ""
    return MetricsWriteError(f"writing {path} failed ({reason}{free})")


def _append_whole(fd: int, data: bytes) -> None:
    """Append `data` to the file, or leave the file as it was: a failed or short write (disk full)
    is cut back to the old end, so metrics.jsonl never ends in a torn JSON line."""
    end = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        try:
            os.ftruncate(fd, end)
        except OSError:
            pass  # the half line is set aside as unparsable by the next resume (set_aside_records_after)
        raise


# Console line layout: (key, label, format). A None value prints "n/a".
_CONSOLE = (
    ("loss", "loss", "{:.4f}"), ("lr", "lr", "{:.2e}"), ("grad_norm", "gnorm", "{:.3f}"),
    ("tokens_per_s_per_gpu", "tok/s/gpu", "{:,.0f}"), ("tflops_per_gpu", "TFLOP/s", "{:.3g}"),
    ("mfu", "MFU", "{:.1%}"), ("peak_mem_gib", "mem GiB", "{:.2f}"),
    ("data_wait_frac", "data wait", "{:.1%}"), ("tokens_seen", "tokens", "{:,}"),
)

# TensorBoard tags of the record keys.
_TB_TAGS = {
    "loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_seen": "train/tokens_seen",
    "tokens_per_s_per_gpu": "perf/tokens_per_s_per_gpu", "tflops_per_gpu": "perf/tflops_per_gpu",
    "mfu": "perf/mfu", "peak_mem_gib": "perf/peak_mem_gib", "data_wait_frac": "perf/data_wait_frac",
    "val_loss": "val/loss", "val_bpb": "val/bpb", "nonfinite_skips": "train/nonfinite_skips",
}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's TensorBoard tags -> finite numbers (what TensorBoard and W&B receive)."""
    return {_TB_TAGS[k]: v for k, v in record.items()
            if k in _TB_TAGS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class MetricsLogger:
    """Console line, TensorBoard scalars and metrics.jsonl of one run folder (rank 0 only).

    start_step: the step the run starts from (0 fresh, the checkpoint's step on resume; None: just
    append, as for a tool writing into a run folder). Records
    after it in an existing metrics.jsonl belong to a run that is being replaced (the steps after
    the checkpoint a crash lost, or an earlier run in the same folder): they are moved to
    metrics.superseded.jsonl, so the file always tells one history, and TensorBoard purges its
    events from start_step + 1 on (SummaryWriter's purge_step). Nothing is deleted.
    """

    def __init__(self, cfg: MetricsConfig, run_dir: str | Path, *, enabled: bool = True, max_steps: int = 0,
                 start_step: int | None = None, run_config: dict[str, Any] | None = None):
        self.cfg = cfg
        self.enabled = enabled
        self.max_steps = max_steps
        self.run_dir = Path(run_dir)
        self._tb = None
        self._jsonl = None
        self._wandb = None
        if not enabled:
            return
        if cfg.tensorboard:
            purge = start_step + 1 if start_step is not None and self.tensorboard_dir.exists() else None
            try:
                self._tb = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=purge)
            except OSError as e:
                raise _write_failed(self.tensorboard_dir, e) from None
        if cfg.jsonl:
            path = self.jsonl_path
            try:
                if start_step is not None:
                    set_aside_records_after(path, start_step)
                self._jsonl = open(path, "ab", buffering=0)  # whole lines through _append_whole
            except OSError as e:
                self.close(quiet=True)
                raise _write_failed(path, e) from None
        if cfg.wandb:  # last: a failed TensorBoard or jsonl open above leaves no W&B run behind
            name = cfg.wandb_name or self.run_dir.name  # the experiment id
            self._wandb = WandbWriter(cfg, self.run_dir, run_config or {}, name)

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    def log(self, step: int, record: dict[str, Any], *, kind: str = "train") -> None:
        """Write one record (plain Python numbers, already read from the device) everywhere.

        A write that fails raises MetricsWriteError (file, reason, free space) and closes the
        logger: the trainer stops every rank on it (perfkit/train/loop.py)."""
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **record}
        print(self.format_line(record), file=sys.stderr, flush=True)
        if self._tb is not None:
            try:
                for tag, value in scalars(record).items():
                    self._tb.add_scalar(tag, value, step)
                self._tb.flush()  # TensorBoard's writer thread re-raises its write error here
            except OSError as e:
                self.close(quiet=True)
                raise _write_failed(self.tensorboard_dir, e) from None
        if self._jsonl is not None:
            try:
                _append_whole(self._jsonl.fileno(), (json.dumps(record, allow_nan=True) + "\n").encode("utf-8"))
            except OSError as e:
                self.close(quiet=True)
                raise _write_failed(self.jsonl_path, e) from None
        if self._wandb is not None:
            self._wandb.log(step, scalars(record))  # a queue hand-over: never waits, never raises

    def format_line(self, record: dict[str, Any]) -> str:
        total = f"/{self.max_steps}" if self.max_steps else ""
        parts = [f"step {record['step']}{total}"]
        if record.get("kind") == "val":
            bpb = record.get("val_bpb")
            return f"{parts[0]} | val loss {record['val_loss']:.4f}" + (f" | val bpb {bpb:.4f}" if bpb is not None else "")
        for key, label, fmt in _CONSOLE:
            if key not in record:
                continue
            value = record[key]
            parts.append(f"{label} {'n/a' if value is None else fmt.format(value)}")
        return " | ".join(parts)

    def close(self, quiet: bool = False, exit_code: int | None = None) -> None:
        """Flush and close; quiet: after a failed write, ignore further errors (already reported).
        exit_code: the run's (W&B marks a run with a non-zero one as failed); default 1 when quiet, else 0."""
        tb, jsonl, self._tb, self._jsonl = self._tb, self._jsonl, None, None
        wandb, self._wandb = self._wandb, None
        if wandb is not None:
            code = exit_code if exit_code is not None else int(quiet)
            wandb.close(exit_code=code, **({"timeout": 10.0} if quiet else {}))  # bounded; W&B problems are warnings
        try:
            if tb is not None:
                tb.close()
        except OSError as e:
            if not quiet:
                raise _write_failed(self.tensorboard_dir, e) from None
        finally:
            if jsonl is not None:
                jsonl.close()



def set_aside_records_after(path: Path, step: int) -> int:
    """Move the records of `path` (metrics.jsonl) with a step after `step`, and lines that do not
    parse (a crash mid-write), to metrics.superseded.jsonl beside it; returns how many moved.
    The moved lines are appended and flushed to disk before the file is rewritten atomically, so
    a crash in between duplicates lines at worst and never loses one."""
    if not path.is_file():
        return 0
    keep, later = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            kept = int(record["step"]) <= step
        except (ValueError, KeyError, TypeError):
            kept = False
        (keep if kept else later).append(line + "\n")
    if not later:
        return 0

    with open(path.with_name("metrics.superseded.jsonl"), "a", encoding="utf-8") as f:
        f.writelines(later)
        f.flush()
        os.fsync(f.fileno())
    write_atomic(path, "".join(keep).encode("utf-8"))
    return len(later)
