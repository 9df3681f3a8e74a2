"""What every tokenizer kind shares: the error, the picklable spec, and the batch-output layout.

prep/tokenizer.py (tiktoken and the `--tokenizer` dispatch), prep/tokenizer_hf.py (tokenizer.json)
and prep/tokenizer_sentencepiece.py (.model) import this module; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from perfkit.errors import UserError

DEFAULT_EOD = "<|endoftext|>"


class TokenizerError(UserError):
    """The tokenizer cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to rebuild the same tokenizer (picklable, small)."""

    name: str                                   # encoding name or path to a tokenizer file / folder
    pattern: str | None = None                  # for local .tiktoken files: regex, or an encoding name
    special_tokens: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    # tokenizer.json only: "tiktoken" (the verified conversion) or "library" (the tokenizers
    # library), decided once by the main process so that spawned workers do not verify again.
    backend: str | None = None


def concat_ids(parts: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-document id sequences (arrays or lists) -> ((N,) uint32 ids, (len(parts),) int64 lengths)."""
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    if not parts:
        return np.zeros(0, np.uint32), lengths
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts).astype(np.uint32, copy=False), lengths
    flat = np.fromiter(chain.from_iterable(parts), dtype=np.uint32, count=int(lengths.sum()))  # C-level
    return flat, lengths
