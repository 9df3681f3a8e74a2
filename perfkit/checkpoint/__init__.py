"""Checkpoints: sharded DCP save/resume with an atomic commit marker, export and generation.

`Checkpointer` (checkpointer.py) is what the trainer calls; its docstring shows the exact calls.
`layout` holds the folder format and commit protocol; `export` the consolidated single-file format.
"""

from perfkit.checkpoint.checkpointer import Checkpointer
from perfkit.checkpoint.layout import CheckpointError, latest_checkpoint, resolve_checkpoint

__all__ = ["Checkpointer", "CheckpointError", "latest_checkpoint", "resolve_checkpoint"]
