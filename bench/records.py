"""What every benchmark record carries besides its numbers: the machine, the software, the code.

A number without the GPU, the torch/triton versions and the git commit that produced it cannot be
compared with anything later, so each record gets `environment()`; `append_jsonl` writes it as one
line (the file is an append-only log: rows from many runs and machines live side by side).
torch and triton are imported inside the functions that read them: `perfkit bench pack` is torch-free.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

# The repository root of the installed code (bench/ sits beside perfkit/ in the checkout), so the
# commit is that of the code that ran, not of whatever folder the command was started in.
_REPO = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = _REPO) -> tuple[str | None, bool | None]:
    """(commit hash, whether tracked files differ from it); (None, None) outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(dirty)


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo) and how many cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"


def device_name(device) -> str:
    import torch  # lazily: the pack and loader suites record results without importing torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:  # CPU-only installs may lack triton; the record says so
        return None
    return triton.__version__


def environment(device) -> dict[str, Any]:
    import torch

    commit, dirty = git_commit()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """Median with the 20th and 80th percentiles (linear interpolation between samples)."""
    p20, p50, p80 = np.percentile(np.asarray(values, dtype=np.float64), [20, 50, 80])
    return {"median": float(p50), "p20": float(p20), "p80": float(p80)}


def json_path_problem(path: str | Path | None) -> str | None:
    """Why --json PATH cannot be appended to (checked before a benchmark spends minutes), or None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return f"--json {path} is a folder; name the .jsonl file to append to"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"--json {path}: {folder} is a file, not a folder"
    return None


def append_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=False) + "\n")  # NaN is not JSON; a bad number must fail here
    return path
