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


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
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
    path.write_text(json.dumps(resolved, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
