"""The run folder `<run.root>/<experiment_id>/`: resolved config, TensorBoard events,
metrics.jsonl and checkpoints/ of one run.

The experiment id is `<UTC timestamp>_<8 hex of the config hash>` unless $.run.experiment_id sets
it; rank 0 chooses it and broadcasts it, so all ranks (and nodes) write into the same folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from perfkit.atomic import write_atomic


# What a run *is* excludes how it is launched and observed: the checkpoint policy (resume=auto is
# typically added only on the requeue), logging intervals, the folder names, and derived values
# such as the world size (a run may resume on another number of ranks). Two launches that differ
# only there continue the same run, so `checkpoint.resume=auto` finds it by this hash.
_NOT_IDENTITY = {"checkpoint": None, "metrics": None, "derived": None,
                 "run": ("root", "experiment_id", "device")}


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, values in config.items():
        if section in _NOT_IDENTITY and _NOT_IDENTITY[section] is None:
            continue
        if section in _NOT_IDENTITY and isinstance(values, dict):
            values = {k: v for k, v in values.items() if k not in _NOT_IDENTITY[section]}
        out[section] = values
    return out


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(run_identity(config), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def new_experiment_id(config: dict[str, Any], now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y-%m-%d__%H-%M-%S}_{config_hash(config)}"


def create(root: str | Path, experiment_id: str) -> Path:
    run_dir = Path(root) / experiment_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_resolved_config(run_dir: Path, resolved: dict[str, Any]) -> Path:
    path = run_dir / "config.json"
    # atomic: a resumed run replaces the file, and a crash mid-write must not leave half of it
    write_atomic(path, (json.dumps(resolved, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return path
