"""`--profile`: torch.profiler over a few training steps after the timed ones.

Profiling slows the host side of a step, so it never overlaps the timed steps: it runs after them,
on the same warmed-up parts. One profiler warm-up step (its events are discarded), then `steps`
recorded steps. Written per rank into the run folder:
  trace_<variant>_rank<r>.json          Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing)
  memory_<variant>_rank<r>.pickle       CUDA memory snapshot with --memory-snapshot
                                        (drag into pytorch.org/memory_viz)
The returned summary lists the top operations: on CUDA the device-side events (kernels, copies,
memsets) by self device time - what the GPU spent its time on; on CPU the operators by self CPU time.
Self times partition the total, so the shares add up to at most 100%.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType

from perfkit.bench.train_measure import synchronize

# Device-side event types whose self time is GPU time (kineto profiler).
_DEVICE_TYPES = (DeviceType.CUDA,)


def _is_annotation(evt) -> bool:
    # ProfilerStep#N and record_function ranges are annotations, not work
    return bool(getattr(evt, "is_user_annotation", False)) or evt.key.startswith("ProfilerStep#")


def top_operations(averages, on_device: bool, steps: int, limit: int = 15) -> tuple[list[dict], float]:
    """([{name, calls_per_step, self_ms_per_step, share}], total self ms per step) from
    profiler key averages. Share = this entry's self time / all entries' self time."""
    rows = []
    for evt in averages:
        if _is_annotation(evt):
            continue
        if on_device:
            if evt.device_type not in _DEVICE_TYPES:
                continue
            self_us = evt.self_device_time_total
        else:
            if evt.device_type != DeviceType.CPU:
                continue
            self_us = evt.self_cpu_time_total
        if self_us > 0:
            rows.append((evt.key, evt.count, self_us))
    total_us = sum(r[2] for r in rows)
    rows.sort(key=lambda r: r[2], reverse=True)
    top = [{"name": name, "calls_per_step": count / steps, "self_ms_per_step": us / 1e3 / steps,
            "share": us / total_us} for name, count, us in rows[:limit]]
    return top, total_us / 1e3 / steps


def format_top_operations(top: list[dict], on_device: bool, total_ms: float, wall_ms: float) -> str:
    kind = "device (kernels, copies)" if on_device else "CPU (operators)"
    lines = [f"top operations by self {kind} time, per step "
             f"(sum of all self times {total_ms:.2f} ms vs {wall_ms:.2f} ms wall per profiled step):",
             f"  {'share':>6} {'ms/step':>9} {'calls':>7}  name"]
    for r in top:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        lines.append(f"  {r['share']:6.1%} {r['self_ms_per_step']:9.3f} {r['calls_per_step']:7.1f}  {name}")
    return "\n".join(lines)


def profile_steps(parts, steps: int, run_dir: Path, variant: str, memory_snapshot: bool = False,
                  limit: int = 15) -> dict[str, Any]:
    """Profile `steps` optimizer steps of `parts` (a BenchParts); returns the summary for the record."""
    device, rank = parts.env.device, parts.env.rank
    on_device = device.type == "cuda"
    trace_path = run_dir / f"trace_{variant}_rank{rank}.json"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_device:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    snapshot_path = None
    if memory_snapshot and on_device:
        torch.cuda.memory._record_memory_history(max_entries=100_000)

    schedule = torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule,
                                on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path))) as prof:
        parts.step()  # the profiler's own warm-up step
        synchronize(device)
        prof.step()
        start = time.perf_counter()
        for _ in range(steps):
            parts.step()
            synchronize(device)  # clean step boundaries in the trace
            prof.step()
        wall_ms = (time.perf_counter() - start) * 1e3 / steps  # includes profiler overhead

    if memory_snapshot and on_device:
        snapshot_path = run_dir / f"memory_{variant}_rank{rank}.pickle"
        torch.cuda.memory._dump_snapshot(str(snapshot_path))
        torch.cuda.memory._record_memory_history(enabled=None)
    top, total_ms = top_operations(prof.key_averages(), on_device, steps, limit)
    return {"steps": steps, "by": "self_device_time" if on_device else "self_cpu_time",
            "trace": str(trace_path), "memory_snapshot": str(snapshot_path) if snapshot_path else None,
            "wall_ms_per_step": wall_ms, "self_ms_per_step": total_ms, "top_ops": top,
            "table": format_top_operations(top, on_device, total_ms, wall_ms)}
