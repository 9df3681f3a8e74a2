"""Export: a sharded training checkpoint -> one consolidated file with the model config inside.

The file is a plain dict that `torch.load(path, weights_only=True)` reads on any device:

    {"format": "perfkit-export-v1",
     "model_config": {...},          # perfkit.config.ModelConfig fields
     "state_dict": {name: tensor},   # GPT's state dict (bf16 or fp32), FSDP/compile prefixes gone
     "dtype": "bf16" | "fp32", "step": int, "source": "<checkpoint folder>"}

    model = GPT(ModelConfig(**blob["model_config"])); model.load_state_dict(blob["state_dict"])

Consolidation reads only the model's tensors from the DCP shards (not the optimizer's), on one
process, without a process group: any number of training ranks folds into one file.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from perfkit.errors import UserError
from perfkit.atomic import atomic_output
from perfkit.checkpoint import layout, safe_metadata
from perfkit.checkpoint.layout import CheckpointError
from perfkit.checkpoint.safe_metadata import read_metadata
from perfkit.config import ModelConfig
from perfkit.model import GPT

FORMAT = "perfkit-export-v1"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_MODEL_PREFIX = "model."


def read_model_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model tensors of a committed checkpoint, on the CPU."""
    meta = read_metadata(checkpoint).state_dict_metadata  # the allow-list unpickler: no code runs
    empty = {k[len(_MODEL_PREFIX):]: torch.empty(tuple(v.size), dtype=v.properties.dtype)
             for k, v in meta.items() if k.startswith(_MODEL_PREFIX) and hasattr(v, "size")}
    if not empty:
        raise CheckpointError(f"checkpoint {checkpoint} holds no model tensors")
    wrapped = {"model": empty}
    with warnings.catch_warnings():  # DCP warns that no process group exists: that is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        safe_metadata.load(wrapped, checkpoint, no_dist=True)
    return wrapped["model"]


def refuse_output_inside(checkpoint: Path, out: str | os.PathLike) -> None:
    """CheckpointError if `out` lies inside the checkpoint being read, symbolic links resolved (a
    linked folder or a link to one of its files counts). `--force` does not allow it: the export
    would replace its own input."""
    real_ckpt, real_out = checkpoint.resolve(), Path(out).resolve()
    if real_out == real_ckpt or real_ckpt in real_out.parents:
        raise CheckpointError(f"-o {out} is inside the checkpoint it exports ({checkpoint}); "
                              "write the export outside it")


def export_checkpoint(source: str | os.PathLike, out: str | os.PathLike, dtype: str = "bf16") -> Path:
    """Write `out` from a checkpoint folder or a run folder (its newest complete checkpoint)."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    checkpoint = layout.resolve_checkpoint(source)
    refuse_output_inside(checkpoint, out)
    problems = layout.verify(checkpoint)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged: " + "; ".join(problems))
    model_config = json.loads((checkpoint / "model_config.json").read_text())
    tensors = read_model_tensors(checkpoint)
    target = DTYPES[dtype]
    state_dict = {k: (v.to(target) if v.is_floating_point() else v) for k, v in tensors.items()}
    blob = {"format": FORMAT, "model_config": model_config, "state_dict": state_dict, "dtype": dtype,
            "step": layout.step_of(checkpoint) or 0, "source": str(checkpoint)}
    out = Path(out)
    with atomic_output(out) as tmp:
        torch.save(blob, tmp)  # written aside, then renamed: a killed export leaves no torn file
    return out


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (since torch 1.6) or, in the legacy format, a pickle."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_export(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read an export file (weights_only: no code runs) and check it is one."""
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # torch's messages run over many lines and advise weights_only=False (unsafe): say it plainly
        if isinstance(e, pickle.UnpicklingError):
            why = "not a torch.save file, or it holds objects that a safe (weights-only) load refuses"
        elif Path(path).is_file() and Path(path).stat().st_size == 0:
            why = "the file is empty"
        elif Path(path).is_file() and not _looks_like_torch_save(Path(path)):
            why = "not a torch.save file (it starts with neither a zip nor a pickle header)"
        else:  # the type too: a bare KeyError's text is just a number ("174812789")
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}".rstrip(": ")
        raise CheckpointError(f"{path} is not a readable perfkit export: {why}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a perfkit export (no format={FORMAT!r} entry)")
    return blob


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """perfkit's GPT from an export file, a checkpoint folder or a run folder, in eval mode.

    Returns (model, info) with info = {"model_config", "step", "source"}. Triton kernels are
    switched to the PyTorch reference off CUDA (kernels do not change the weights).
    """
    p = Path(path)
    if p.is_file():
        blob = load_export(p)
        cfg_dict, state_dict, step = blob["model_config"], blob["state_dict"], blob.get("step", 0)
    else:
        checkpoint = layout.resolve_checkpoint(p)
        problems = layout.verify(checkpoint)
        if problems:
            raise CheckpointError(f"checkpoint {checkpoint} is damaged: " + "; ".join(problems))
        cfg_dict = json.loads((checkpoint / "model_config.json").read_text())
        state_dict, step = read_model_tensors(checkpoint), layout.step_of(checkpoint) or 0
    device = torch.device(device)
    if device.type != "cuda":
        cfg_dict = {**cfg_dict, "kernels": "torch"}
    cfg = ModelConfig(**cfg_dict)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()  # fills non-persistent buffers (RoPE tables); weights are overwritten next
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit GPT({cfg_dict}): missing {sorted(missing)[:10]}, "
                              f"unexpected {sorted(unexpected)[:10]}")
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return model, {"model_config": cfg_dict, "step": step, "source": str(p)}
