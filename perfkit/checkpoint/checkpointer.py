"""Checkpointer: sharded save, exact resume and warm start for one training run.

How the trainer uses it (every call is collective: all ranks call it at the same step):

    from perfkit.checkpoint import Checkpointer
    ckpt = Checkpointer(cfg.checkpoint, run_dir,
                        model=model, optimizer=optimizer,      # the fully_shard'ed (or plain) model
                        scheduler=scheduler, loader=loader,    # anything with state_dict/load_state_dict
                        progress=progress,                     # step, tokens_seen, nonfinite_skips
                        model_config=cfg.model,                # checked against the checkpoint's
                        config=resolved_config_dict,           # saved as config.json (any JSON-able)
                        data_files={"$.data.train": [...]},    # fingerprinted; a resume on other data is refused
                        settings_check=f,                      # f(checkpoint's config.json): refuse or report
                        faults=nonfinite_guard)                # optional perfkit.train.faults.NonFiniteGuard
    ckpt.restore()        # once, after building everything, before the first step; mutates
                          # model/optimizer/scheduler/loader/progress in place; returns the path or None
    while progress.step < max_steps:
        train_step(); progress.step += 1
        if preemption.should_stop():           # perfkit.train.preemption.PreemptionGuard
            ckpt.save(progress.step); return preemption.exit_code
        ckpt.maybe_save(progress.step)         # every cfg.every_steps steps
    ckpt.maybe_save(progress.step, final=True) # cfg.save_at_end (skipped if this step is saved already)

Model and optimizer go through torch.distributed.checkpoint (DCP): each rank writes its own
shards, and a load on a different number of ranks reshards. The rest (progress, scheduler,
loader) is written by rank 0 and must be global, i.e. the same on every rank; RNG states are
per rank and restored only when the rank count is unchanged. See layout.py for the folder format
and the commit protocol.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import msgspec
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict)

from perfkit.checkpoint import fingerprint, layout, safe_metadata, state
from perfkit.checkpoint.export import load_export
from perfkit.checkpoint.hf_files import is_hf_folder
from perfkit.checkpoint.hf_import import read_hf_state
from perfkit.checkpoint.layout import CheckpointError
from perfkit.checkpoint.safe_metadata import read_metadata
# call sites keep their short private names; the helpers themselves live in perfkit/ranks.py
from perfkit.ranks import gather_objects as _gather, is_distributed as _distributed, rank as _rank, world_size as _world

TRAIN_STATE = "train_state.pt"
CONFIG_JSON = "config.json"
MODEL_CONFIG_JSON = "model_config.json"
DATA_FINGERPRINT_JSON = "data_fingerprint.json"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


class Checkpointer:
    def __init__(self, cfg, run_dir: str | Path, *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer | None, progress: Any, model_config: Any,
                 scheduler: Any = None, loader: Any = None, config: Any = None, faults: Any = None,
                 data_files: dict[str, list[str]] | None = None, settings_check: Any = None,
                 process_group: dist.ProcessGroup | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.model, self.optimizer, self.scheduler, self.loader = model, optimizer, scheduler, loader
        self.progress = progress
        self.model_config = state.model_config_dict(model_config)
        self.config = config
        self.faults = faults
        self.group = process_group
        self.last_saved_step: int | None = None
        self.data_files = data_files
        self.settings_check = settings_check  # f(saved config.json dict); raises ValueError to refuse
        self._fingerprints: dict | None = None  # rank 0's, computed once (reads <= 8 MiB per file)

    # ---- saving -------------------------------------------------------------------------------

    def maybe_save(self, step: int, *, final: bool = False) -> Path | None:
        """Save if `step` is a multiple of every_steps, or at the end when save_at_end is set."""
        if step == self.last_saved_step:
            return None
        due = self.cfg.save_at_end if final else (self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0)
        return self.save(step) if due else None

    def save(self, step: int) -> Path:
        """Write checkpoint `step` atomically and prune to keep_last. Collective.

        A failed save (disk full, quota, I/O error, on any rank) raises CheckpointError on every
        rank with one message: which rank and why, the space left, and the last complete
        checkpoint, which is never touched. The half-written folder is removed to give the space
        back. Every rank-local step ends in an all-gather of its outcome (`all_ranks_succeed`), so a
        rank whose write failed never leaves the others waiting in the next collective."""
        if self.faults is not None:
            # a run that hit a non-finite value in "stop" mode must not checkpoint poisoned weights;
            # this also brings the device-side skip counter into progress (a save syncs anyway)
            self.faults.poll(self.progress)
        rank = _rank(self.group)
        final = layout.checkpoints_dir(self.run_dir) / layout.step_dir_name(step)
        partial = final.with_name(final.name + layout.PARTIAL_SUFFIX)
        try:
            self._write(step, partial, final)
        except CheckpointError as e:
            message = self._save_failed(step, final, str(e))  # the free space before the cleanup
            if rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(message) from None
        if rank == 0:
            try:
                layout.prune(self.run_dir, self.cfg.keep_last)
            except OSError as e:  # the new checkpoint is committed; an old one stays for now
                _log(rank, f"checkpoint: WARNING: could not delete an old checkpoint: {e}")
        _barrier(self.group)
        self.last_saved_step = step
        _log(rank, f"checkpoint: saved step {step} to {final}")
        return final

    def _write(self, step: int, partial: Path, final: Path) -> None:
        rank, world = _rank(self.group), _world(self.group)
        all_ranks_succeed(lambda: rank == 0 and layout.clear_partial(partial), self.group)  # a killed save's leftover

        def small_files():
            torch.save(state.capture_rng(), partial / rng_file(rank))
            if rank == 0:
                torch.save({"step": step, "world_size": world,
                            "progress": state.progress_state(self.progress),
                            "scheduler": _state_of(self.scheduler),
                            "loader": _state_of(self.loader)}, partial / TRAIN_STATE)
                (partial / MODEL_CONFIG_JSON).write_text(json.dumps(self.model_config, indent=1, sort_keys=True))
                if self.data_files is not None:
                    (partial / DATA_FINGERPRINT_JSON).write_text(json.dumps(self._data_fingerprints(), indent=1))
                if self.config is not None:
                    (partial / CONFIG_JSON).write_text(json.dumps(_jsonable(self.config), indent=1, sort_keys=True))

        all_ranks_succeed(small_files, self.group)

        def shards():
            with _quiet_single_process():
                dcp.save(self._sharded_state(), checkpoint_id=str(partial), process_group=self.group,
                         no_dist=not _distributed())

        all_ranks_succeed(shards, self.group)
        # dcp.save returns once every rank's shards and the coordinator's .metadata are written,
        # so every file is in place now; ranks split the checksumming of rank 0's listing (one
        # listing: on a network filesystem two ranks' directory views may briefly differ)
        names = _agree(lambda: layout.data_files(partial), self.group)
        mine = all_ranks_succeed(lambda: {n: {"bytes": (partial / n).stat().st_size,
                                         "crc32": layout.file_crc32(partial / n)}
                                     for n in names[rank::world]}, self.group)
        entries = {}
        for part in _gather(mine, self.group):
            entries.update(part)
        all_ranks_succeed(lambda: rank == 0 and layout.write_manifest_and_commit(partial, final, entries, step),
                     self.group)

    def _save_failed(self, step: int, final: Path, reason: str) -> str:
        root = layout.checkpoints_dir(self.run_dir)
        try:
            usage = shutil.disk_usage(root)
            full = usage.free < max(64 * 2**20, usage.total // 100)
            free = f"; {usage.free / 2**20:,.0f} MiB free on its filesystem{' - it is full' if full else ''}"
        except OSError:
            free = ""
        last = layout.latest_checkpoint(self.run_dir)
        kept = (f"the last complete checkpoint, {last}, is intact" if last is not None
                else "no complete checkpoint exists yet")
        return f"saving checkpoint step {step} to {final} failed ({reason}{free}); {kept}"

    def _sharded_state(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {"model": get_model_state_dict(self.model)}
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    # ---- loading ------------------------------------------------------------------------------

    def restore(self) -> Path | None:
        """Resume (cfg.resume: "auto" or a path) or warm start (cfg.warm_start). Collective.

        Returns the checkpoint loaded, or None for a fresh start ("none", or "auto" with nothing
        saved yet). Raises CheckpointError, on every rank, for a missing/corrupt/mismatched one.
        """
        resume = (self.cfg.resume or "none").strip()
        warm = (self.cfg.warm_start or "").strip()
        if resume == "none" and not warm:
            return None
        rank = _rank(self.group)
        if warm:
            target = _agree(lambda: _resolve_warm(warm), self.group)
            self._load_weights_only(target)
            self.last_saved_step = None
            _log(rank, f"checkpoint: warm start (weights only) from {target}")
            return target
        if resume == "auto":
            target = _agree(lambda: layout.latest_checkpoint(self.run_dir), self.group)
            for skipped in layout.incomplete_after(self.run_dir, target):
                # say so: the user may have expected this newer step to be the one resumed
                _log(rank, f"checkpoint: resume=auto skips {skipped} (no valid {layout.MARKER} marker: "
                           "its save was interrupted or the folder was altered)")
            if target is None:
                target = _agree(lambda: layout.latest_of_same_config(self.run_dir), self.group)
                if target is not None:
                    _log(rank, f"checkpoint: resume=auto: no checkpoint in {self.run_dir}; continuing "
                               f"{target} (a run folder of the same config hash)")
            if target is None:
                _log(rank, f"checkpoint: resume=auto found no complete checkpoint in "
                           f"{layout.checkpoints_dir(self.run_dir)}; starting fresh")
                return None
        else:
            target = _agree(lambda: layout.resolve_checkpoint(resume), self.group)
        try:
            self._verify(target)
        except CheckpointError as e:
            older = [p for p in layout.complete_checkpoints(target.parent.parent) if p != target]
            if not older:
                raise
            # auto never falls back on its own (it would silently drop steps); name the way out
            raise CheckpointError(f"{e}; to continue from the previous checkpoint, pass "
                                  f"--checkpoint.resume={older[-1]}") from None
        self._check_model_config(target)
        _agree(lambda: self._check_data(target), self.group)
        _agree(lambda: self._check_settings(target), self.group)
        self._load_sharded(target, with_optimizer=self.optimizer is not None)
        train = torch.load(target / TRAIN_STATE, weights_only=True)
        state.load_progress(self.progress, train["progress"])
        try:  # e.g. other data files than the run had: name the checkpoint the state came from
            if self.scheduler is not None and train.get("scheduler") is not None:
                self.scheduler.load_state_dict(train["scheduler"])
            if self.loader is not None and train.get("loader") is not None:
                self.loader.load_state_dict(train["loader"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {target} does not fit this run: {e}") from e
        world = _world(self.group)
        if train["world_size"] == world:
            state.restore_rng(torch.load(target / rng_file(rank), weights_only=True))
        else:
            _log(rank, f"checkpoint: saved on {train['world_size']} ranks, resuming on {world}: "
                       "weights and optimizer are resharded, RNG states start from the run seed")
        self._warn_if_batch_changed(target)
        self.last_saved_step = train["step"]
        _log(rank, f"checkpoint: resumed from {target} (step {train['step']})")
        return target

    def _warn_if_batch_changed(self, target: Path) -> None:
        """A resume on another rank count with the same micro_batch_size (e.g. an elastic
        `--nnodes 2:4` restart) silently changes the global batch: the data continues where it
        stopped, but every further step trains on another number of samples and tokens than the
        run did. Not an error (it may be wanted), but say so: only a fixed
        $.training.global_batch_size keeps the run the same across rank counts."""
        try:
            saved = json.loads((target / CONFIG_JSON).read_text())["derived"]["global_batch_size"]
            now = self.config["derived"]["global_batch_size"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # no derived numbers to compare (tests, older checkpoints)
        if saved != now:
            _log(_rank(self.group), f"checkpoint: WARNING: the checkpoint was trained with a global batch of "
                                    f"{saved} samples per step, this run uses {now} (micro_batch_size x "
                                    f"grad_accum_steps x ranks); set $.training.global_batch_size={saved} to "
                                    f"continue with the same batch on this number of ranks")

    def _verify(self, target: Path) -> None:
        """Every file present with its manifest size; CRCs recomputed, split across ranks."""
        rank, world = _rank(self.group), _world(self.group)
        try:
            names = layout.manifest_files(target)
        except (OSError, ValueError) as e:
            names, problems = [], [f"{layout.MANIFEST} unreadable: {e}"]
        else:
            problems = layout.verify(target, names[rank::world])
        problems = sorted({p for part in _gather(problems, self.group) for p in part})
        if problems:
            raise CheckpointError(f"checkpoint {target} is damaged: " + "; ".join(problems))

    def _check_settings(self, target: Path) -> None:
        """Rank 0: hand the checkpoint's config.json to settings_check (a resume only)."""
        if self.settings_check is None:
            return
        try:
            saved = json.loads((target / CONFIG_JSON).read_text())
        except FileNotFoundError:
            return  # an older or hand-made checkpoint: nothing to compare
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {target}: {CONFIG_JSON} unreadable: {e}") from None
        try:
            self.settings_check(saved)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {target}: {e}") from None

    def _data_fingerprints(self) -> dict:
        if self._fingerprints is None:
            self._fingerprints = fingerprint.data_fingerprints(self.data_files or {})
        return self._fingerprints

    def _check_data(self, target: Path) -> None:
        """Rank 0: the data files against the checkpoint's fingerprints (refused or reported)."""
        if self.data_files is not None:
            fingerprint.check_resume(target / DATA_FINGERPRINT_JSON, self._data_fingerprints,
                                     allow=getattr(self.cfg, "allow_data_change", False),
                                     log=lambda msg: _log(0, msg))

    def _check_model_config(self, target: Path, saved: dict | None = None, *, strict: bool = True) -> None:
        """Resume (strict): any differing weight-relevant field is an error naming the fields.
        Warm start: differences are reported only; the tensor shapes decide (a fine-tune may
        change sequence_length or dropout, never a weight's shape)."""
        if saved is None:
            try:
                saved = json.loads((target / MODEL_CONFIG_JSON).read_text())
            except (OSError, ValueError):
                return  # no model config saved: the shape check in _load_sharded still guards
        fatal, harmless = state.model_config_differences(saved, self.model_config)
        if fatal and strict:
            raise CheckpointError(f"checkpoint {target} was written for a different model config: "
                                  + "; ".join(fatal))
        if fatal or harmless:
            _log(_rank(self.group), "checkpoint: model config differs from the checkpoint's: "
                 + "; ".join(fatal + harmless))

    def _load_sharded(self, target: Path, *, with_optimizer: bool) -> None:
        want = self._sharded_state() if with_optimizer else {"model": get_model_state_dict(self.model)}
        self._check_shapes(target, want["model"])
        try:
            with _quiet_single_process():
                safe_metadata.load(want, target, process_group=self.group, no_dist=not _distributed())
        except CheckpointError:
            raise
        except Exception as e:  # DCP raises CheckpointException and friends with per-rank details
            raise CheckpointError(f"loading {target} failed: {e}") from e
        if with_optimizer:
            set_state_dict(self.model, self.optimizer, model_state_dict=want["model"],
                           optim_state_dict=want["optim"])
        else:
            set_model_state_dict(self.model, want["model"])

    def _check_shapes(self, target: Path, model_sd: dict[str, Any]) -> None:
        meta = read_metadata(target).state_dict_metadata  # the allow-list unpickler: no code runs
        found = {k[len("model."):]: tuple(v.size) for k, v in meta.items()
                 if k.startswith("model.") and hasattr(v, "size")}
        expected = {k: tuple(v.shape) for k, v in model_sd.items() if isinstance(v, torch.Tensor)}
        diffs = state.shape_differences(expected, found)
        if diffs:
            raise CheckpointError(f"checkpoint {target} does not fit this model: " + "; ".join(diffs[:20])
                                  + (f"; ... {len(diffs) - 20} more" if len(diffs) > 20 else ""))

    def _load_weights_only(self, target: Path) -> None:
        if target.is_file() or is_hf_folder(target):
            if target.is_file():
                exported = load_export(target)
                self._check_model_config(target, exported["model_config"], strict=False)
                full = exported["state_dict"]
            else:  # a Hugging Face folder: config.json checked against $.model, safetensors read
                full, notes = read_hf_state(target, self.model_config, get_model_state_dict(self.model))
                if notes:
                    _log(_rank(self.group), f"checkpoint: {target} differs from $.model: " + "; ".join(notes))
            expected = {k: tuple(v.shape) for k, v in get_model_state_dict(self.model).items()}
            diffs = state.shape_differences(expected, {k: tuple(v.shape) for k, v in full.items()})
            if diffs:
                what = "export" if target.is_file() else "folder"
                raise CheckpointError(f"{what} {target} does not fit this model: " + "; ".join(diffs[:20]))
            set_model_state_dict(self.model, full, options=StateDictOptions(full_state_dict=True))
            return
        self._verify(target)
        self._check_model_config(target, strict=False)
        self._load_sharded(target, with_optimizer=False)


def _resolve_warm(path: str) -> Path:
    """An export file, a Hugging Face folder, or a checkpoint (or run) folder."""
    p = Path(path)
    if p.is_file() or is_hf_folder(p):
        return p
    return layout.resolve_checkpoint(p)


def _state_of(obj: Any) -> Any:
    return None if obj is None else obj.state_dict()


def _jsonable(config: Any) -> Any:
    if isinstance(config, (dict, list, str, int, float, bool)) or config is None:
        return config
    return msgspec.to_builtins(config)


# ---- thin collective helpers: each works without torch.distributed initialized ---------------

def _barrier(group) -> None:
    if _distributed():
        dist.barrier(group=group)


def all_ranks_succeed(work, group):
    """Run `work()` on every rank, then all-gather the outcomes: its result when every rank
    succeeded, else CheckpointError naming the first rank that failed and why (on every rank)."""
    try:
        result, problem = work(), None
    except (OSError, RuntimeError, ValueError, CheckpointException) as e:  # ENOSPC: RuntimeError in torch.save
        result, problem = None, _describe(e)
    failed = [(r, p) for r, p in enumerate(_gather(problem, group)) if p]
    if failed:
        r, p = failed[0]
        raise CheckpointError(f"rank {r}: {p}" if _world(group) > 1 else p)
    return result


def _describe(e: BaseException) -> str:
    """One line for an exception; DCP's CheckpointException carries each failed rank's own error."""
    failures = getattr(e, "failures", None)  # DCP: {rank: (exception, traceback)}
    if isinstance(e, CheckpointException) and failures:
        rank, wrapped = next(iter(sorted(failures.items())))
        inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped
        return f"rank {rank} writing its shards: {_describe(inner)}"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _agree(decide, group):
    """Run `decide` on rank 0 and hand its answer (or its CheckpointError) to every rank."""
    box: list[Any] = [None]
    if _rank(group) == 0:
        try:
            box[0] = ("ok", decide())
        except CheckpointError as e:
            box[0] = ("error", str(e))
    if _distributed():
        dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0) if group is not None else 0,
                                   group=group)
    kind, value = box[0]
    if kind == "error":
        raise CheckpointError(value)
    return value


@contextlib.contextmanager
def _quiet_single_process():
    # DCP warns when no process group exists; a one-process run without one is intended
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, file=sys.stderr, flush=True)
