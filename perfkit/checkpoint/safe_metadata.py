"""Reading DCP's `.metadata` without running code from it.

torch's `FileSystemReader.read_metadata` calls `pickle.load` on `<checkpoint>/.metadata`, so a
crafted file (its manifest and COMPLETE marker recomputed to match) would run any code in
`perfkit export`, `perfkit generate`, a resume or a warm start. `SafeFileSystemReader` reads the
same file through an Unpickler whose `find_class` returns only the classes DCP metadata is made
of and refuses every other global; perfkit hands this reader to every `dcp.load` and reads shapes
through it. In the shard files (`__R_0.distcp`) tensors are raw bytes, but the non-tensor entries
(the optimizer's param_groups) are pickles that torch's DefaultLoadPlanner reads with
`torch.load(weights_only=False)`: `SafeLoadPlanner` reads them with `weights_only=True` first.

The allow-list covers torch 2.11 to 2.13 (metadata.py, filesystem.py), and the older home of
TensorProperties in torch.distributed._shard (what a checkpoint written by an older torch names).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from perfkit.checkpoint.layout import CheckpointError

METADATA_FILE = ".metadata"

# module -> class names a DCP .metadata pickle may name (everything else is refused)
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed._shard.sharded_tensor.metadata": {"TensorProperties", "MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
    "torch.serialization": {"_get_layout"},   # a layout from its name, e.g. "torch.strided"
    "torch": {"Size"},                         # and the dtypes, checked below
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},  # StorageMeta.checkpoint_id
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # torch.float32, torch.bfloat16, ...
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of DCP checkpoint metadata")


def load_metadata(path: str | Path) -> Metadata:
    """Unpickle a DCP .metadata file with the allow-list; CheckpointError names the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} is refused: {e} (perfkit loads checkpoint metadata without "
                              "running code; this file was not written by torch.distributed.checkpoint)") from None
    except Exception as e:  # truncated or junk bytes: EOFError, ValueError, TypeError, ...
        raise CheckpointError(f"{path} is not readable DCP metadata: {type(e).__name__}: {e}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path} is not DCP metadata (it holds a {type(metadata).__name__})")
    return metadata


class SafeFileSystemReader(dcp.FileSystemReader):
    """dcp.FileSystemReader whose read_metadata uses the allow-list above (same result otherwise)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        get_path = getattr(self, "_get_metadata_path", None)  # newer torch: per-rank metadata files
        path = Path(get_path(rank)) if get_path is not None else Path(self.path) / METADATA_FILE
        metadata = load_metadata(path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


def read_metadata(checkpoint: str | Path) -> Metadata:
    return SafeFileSystemReader(str(checkpoint)).read_metadata()


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor entries go through torch.load(weights_only=True)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn!r} is refused: it holds objects a "
                                  f"weights-only load does not allow ({first})") from None
        # hand DCP a pickle of the checked object: torch.save of weights-only data names only safe
        # globals, so the stock (weights_only=False) load in DefaultLoadPlanner runs no foreign code
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)


def load(state_dict: dict[str, Any], checkpoint: str | Path, **kwargs: Any) -> None:
    """dcp.load with the safe reader and planner (kwargs: process_group, no_dist)."""
    dcp.load(state_dict, storage_reader=SafeFileSystemReader(str(checkpoint)), planner=SafeLoadPlanner(), **kwargs)
