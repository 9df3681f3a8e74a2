"""The small, non-tensor-sharded parts of a checkpoint: RNG states, run progress, config checks.

Everything here round-trips through `torch.save` / `torch.load(weights_only=True)` (tensors, ints,
floats, strings, lists, tuples, dicts), so loading a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgspec
import numpy as np
import torch

# Model-config fields that change how the model runs but not what its weights are: a checkpoint
# written with Triton kernels on a GPU may be resumed with the PyTorch kernels on a CPU.
RUNTIME_ONLY_MODEL_FIELDS = frozenset({"kernels", "dropout"})


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch CPU, its current CUDA device, python `random`, numpy's global one."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "torch_cpu": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this rank's own device only: touching the other GPUs of the node would be wasted work
        state["torch_cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    cuda = state.get("torch_cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def progress_state(progress: Any) -> dict[str, Any]:
    """The trainer's progress object (step, tokens_seen, nonfinite_skips, ...) as a plain dict."""
    if hasattr(progress, "state_dict"):
        return dict(progress.state_dict())
    if isinstance(progress, msgspec.Struct):
        return msgspec.structs.asdict(progress)
    if dataclasses.is_dataclass(progress):
        return dataclasses.asdict(progress)
    if isinstance(progress, dict):
        return dict(progress)
    return dict(vars(progress))


def load_progress(progress: Any, state: dict[str, Any]) -> None:
    """Write saved fields back into the trainer's progress object, in place."""
    if hasattr(progress, "load_state_dict"):
        progress.load_state_dict(state)
    elif isinstance(progress, dict):
        progress.update(state)
    else:
        for k, v in state.items():
            setattr(progress, k, v)


def model_config_dict(model_config: Any) -> dict[str, Any]:
    if isinstance(model_config, dict):
        return dict(model_config)
    return msgspec.to_builtins(model_config)


def model_config_differences(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fatal, harmless) lists of 'key: checkpoint X, config Y' for every field that differs."""
    fatal, harmless = [], []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if a != b:
            line = f"{key}: checkpoint {a!r}, config {b!r}"
            (harmless if key in RUNTIME_ONLY_MODEL_FIELDS else fatal).append(line)
    return fatal, harmless


def shape_differences(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """Tensor-level comparison (name -> shape) for checkpoints whose config cannot be compared."""
    lines = [f"{k}: missing from checkpoint" for k in sorted(set(expected) - set(found))]
    lines += [f"{k}: in checkpoint only" for k in sorted(set(found) - set(expected))]
    lines += [f"{k}: checkpoint shape {tuple(found[k])}, model shape {tuple(expected[k])}"
              for k in sorted(set(expected) & set(found)) if tuple(found[k]) != tuple(expected[k])]
    return lines
