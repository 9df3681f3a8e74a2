"""The weight files of a Hugging Face model folder: safetensors, sharded above 5 GB.

One file `model.safetensors`, or, when the tensors add up to more than `max_shard_bytes`,
`model-00001-of-0000N.safetensors` ... plus `model.safetensors.index.json`
({"metadata": {"total_size": bytes}, "weight_map": {tensor name: file name}}), the layout
transformers' from_pretrained and vLLM read. Reading takes safetensors only (a header of JSON and
raw tensor bytes): a `pytorch_model.bin` (a pickle) is refused, never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from perfkit.checkpoint.layout import CheckpointError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size "5GB"


def is_hf_folder(path: str | Path) -> bool:
    """A folder with a config.json that names a transformers model_type and safetensors weights
    (a perfkit run folder has a config.json too, without model_type)."""
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        return False
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def write_weights(folder: Path, tensors: dict[str, Tensor], max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write `tensors` into `folder` (one file, or shards in name order + the index); returns the files."""
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    metadata = {"format": "pt"}  # transformers checks this entry
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE), metadata=metadata)
        return [SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(names, shards):
        save_file(shard, str(folder / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                           indent=2, sort_keys=True) + "\n")
    return [*names, INDEX]


def read_weights(folder: Path) -> dict[str, Tensor]:
    """Every tensor of the folder's safetensors files, on the CPU. CheckpointError when there are
    none (naming a pickle file, if that is what the folder holds) or a file is unreadable."""
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder / INDEX}: not a safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE).is_file():
        files = [SINGLE]
    else:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        why = (f"it holds only {', '.join(pickles)} (pickle files, which perfkit never loads: convert them "
               "to safetensors)" if pickles else f"it has neither {SINGLE} nor {INDEX}")
        raise CheckpointError(f"{folder}: no safetensors weights; {why}")
    tensors: dict[str, Tensor] = {}
    for name in files:
        path = folder / name
        if Path(name).name != name or path.suffix != ".safetensors":
            raise CheckpointError(f"{folder / INDEX}: names {name!r}, not a .safetensors file in the folder")
        try:
            tensors.update(load_file(str(path), device="cpu"))
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors
