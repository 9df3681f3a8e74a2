"""On-disk layout of a run's checkpoints, and the commit protocol that makes a save atomic.

    <run_dir>/checkpoints/
        step_00000100/            a committed checkpoint (the folder name carries the step)
            .metadata             DCP's index of every tensor shard
            __0_0.distcp ...      DCP shards, one file per rank (model + optimizer)
            train_state.pt        rank 0: progress, scheduler, loader (torch.load(weights_only=True))
            rng_rank00000.pt      one per rank: torch CPU/CUDA, python and numpy RNG states
            config.json           the resolved run config; model_config.json: the model section alone
            data_fingerprint.json size and sampled SHA-256 of every data file (fingerprint.py)
            manifest.json         every file above with its size and CRC32
            COMPLETE              written last, holds the SHA-256 of manifest.json
        step_00000200.partial/    a save in progress (or one that was killed): never counts

A save writes everything into `step_N.partial/`, then the manifest, then COMPLETE (each fsync'ed),
then renames the folder to `step_N/`. Discovery only accepts `step_N/` folders whose COMPLETE
marker matches their manifest, so a save killed at any instant leaves the previous checkpoint
as the newest one. Nothing here imports torch.distributed: these are plain file operations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zlib
from pathlib import Path
from perfkit.atomic import fsync_dir, replace_folder
from perfkit.errors import UserError

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
PARTIAL_SUFFIX = ".partial"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_HASHED_RUN = re.compile(r"^.+_([0-9a-f]{8})$")
_FORMAT = "perfkit-checkpoint-v1"


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, corrupt, or does not match the run that loads it."""


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    # zero-padded so that a plain `ls` sorts checkpoints by step
    return f"step_{step:08d}"


def step_of(path: str | os.PathLike) -> int | None:
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(path: str | os.PathLike) -> bool:
    """True when the folder holds a COMPLETE marker that matches its manifest (cheap: no shard reads)."""
    p = Path(path)
    try:
        marker = json.loads((p / MARKER).read_text())
        return marker.get("manifest_sha256") == _sha256(p / MANIFEST)
    except (OSError, ValueError, AttributeError):
        return False


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return [p for _, p in sorted(found) if is_complete(p)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def incomplete_after(run_dir: str | os.PathLike, latest: Path | None) -> list[Path]:
    """step_N folders newer than `latest` (or any, when None) that are not complete."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    floor = -1 if latest is None else step_of(latest)
    found = sorted((step_of(p), p) for p in root.iterdir() if p.is_dir() and (step_of(p) or -1) > floor)
    return [p for _, p in found if not is_complete(p)]


def latest_of_same_config(run_dir: str | os.PathLike) -> Path | None:
    """The most recently committed checkpoint of a sibling run folder made from the same config.

    Run folders are named `<UTC time>_<8 hex config hash>` unless run.experiment_id names them, so
    a requeued job that did not pin its experiment id gets a new folder; `resume=auto` then finds
    the run it continues by that hash. Folders named otherwise never match.
    """
    run_dir = Path(run_dir)
    m = _HASHED_RUN.match(run_dir.name)
    if not m or not run_dir.parent.is_dir():
        return None
    best, best_time = None, -1.0
    for sibling in run_dir.parent.iterdir():
        if sibling == run_dir or not sibling.is_dir() or not sibling.name.endswith("_" + m.group(1)):
            continue
        latest = latest_checkpoint(sibling)
        if latest is not None and (t := (latest / MARKER).stat().st_mtime) > best_time:
            best, best_time = latest, t
    return best


def resolve_checkpoint(path_or_run: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder (its newest complete checkpoint). Raises CheckpointError."""
    p = Path(path_or_run)
    if not p.exists():
        raise CheckpointError(f"checkpoint path {str(p)!r} does not exist")
    if p.is_file():
        raise CheckpointError(f"{str(p)!r} is a file, not a checkpoint folder; an export (perfkit export) "
                              "holds weights only: load it with checkpoint.warm_start")
    if (p / MANIFEST).exists() or (p / MARKER).exists() or p.name.endswith(PARTIAL_SUFFIX):
        if not is_complete(p):
            raise CheckpointError(f"checkpoint {str(p)!r} is incomplete (no valid {MARKER} marker: "
                                  "the save was interrupted); use an older checkpoint")
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"{str(p)!r} is neither a complete checkpoint nor a run folder "
                              f"with one (looked in {str(checkpoints_dir(p))!r})")
    return latest


def file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def data_files(folder: Path) -> list[str]:
    """Every file the manifest covers (all but the manifest and the marker), sorted so ranks agree."""
    return sorted(f.name for f in folder.iterdir() if f.is_file() and f.name not in (MANIFEST, MARKER))


def write_manifest_and_commit(partial: Path, final: Path, entries: dict[str, dict], step: int) -> None:
    """Write manifest, then COMPLETE, then rename partial -> final. Rank 0 only.

    `entries` maps file name -> {"bytes": int, "crc32": int}. A committed folder of the same step
    (a resumed run saving its resume step again) is replaced only after the new one is complete.
    """
    manifest = {"format": _FORMAT, "step": step, "files": entries}
    _write_synced(partial / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    _write_synced(partial / MARKER, json.dumps({"manifest_sha256": _sha256(partial / MANIFEST)}))
    fsync_dir(partial)
    replace_folder(partial, final)


def verify(folder: Path, names: list[str] | None = None) -> list[str]:
    """Check files against the manifest; returns problems (empty = fine).

    With `names`, only those files get their CRC recomputed (ranks split the reading); the
    presence and size of every file are always checked.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return [f"{MANIFEST} unreadable: {e}"]
    problems = []
    files = manifest.get("files", {})
    for name, meta in sorted(files.items()):
        f = folder / name
        if not f.is_file():
            problems.append(f"missing file {name}")
        elif f.stat().st_size != meta["bytes"]:
            problems.append(f"{name} has {f.stat().st_size} bytes, manifest says {meta['bytes']}")
        elif (names is None or name in names) and file_crc32(f) != meta["crc32"]:
            problems.append(f"{name} is corrupt (CRC32 differs from the manifest)")
    return problems


def manifest_files(folder: Path) -> list[str]:
    return sorted(json.loads((folder / MANIFEST).read_text()).get("files", {}))


def prune(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and leftovers of killed saves
    or deletions (partial folders of older steps, half-deleted folders). Rank 0, after a commit."""
    done = complete_checkpoints(run_dir)
    doomed = done[:-keep_last] if keep_last > 0 else []
    newest = step_of(done[-1]) if done else None
    for p in checkpoints_dir(run_dir).iterdir():
        stem, _, kind = p.name.rpartition(".")
        if kind in ("deleting", "replaced") or (kind == PARTIAL_SUFFIX[1:] and newest is not None
                                                 and (step_of(stem) or 0) <= newest):
            shutil.rmtree(p, ignore_errors=True)
    for p in doomed:
        # rename first so that a crash mid-delete cannot leave a half-deleted folder that looks complete
        trash = p.with_name(p.name + ".deleting")
        os.rename(p, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def clear_partial(partial: Path) -> None:
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
