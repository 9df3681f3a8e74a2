"""`perfkit pack --config FILE.toml`: the seed's tokenization_config settings as TOML.

    [settings]
    src_path = "data/raw/corpus.jsonl"
    dst_path = "data/preprocessed/corpus.pbin"
    index_path = "data/preprocessed/corpus.idx"   # optional
    jq_pattern = ".text"                          # or text_key = "text"
    num_cpus = 8
    eod_token = "<|endoftext|>"
    on_bad_line = "error"                         # perfkit extra: error | skip

    [tokenizer]
    name = "gpt2"                                 # or a path to a .tiktoken file
    pattern = "cl100k_base"                       # local files only: encoding name or regex
    special_tokens = { "<|endoftext|>" = 100257 } # local files only

Modalities' queue/batch knobs (processing_batch_size, raw_samples_queue_size,
processed_samples_queue_size) are accepted and ignored: perfkit sizes its own pipeline.
Command-line flags override the file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import msgspec

from perfkit.errors import UserError
from perfkit.prep.jsonl import parse_text_key


class PackSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    src_path: str | None = None
    dst_path: str | None = None
    index_path: str | None = None
    jq_pattern: str | None = None
    text_key: str | None = None
    num_cpus: int | None = None
    eod_token: str | None = None
    on_bad_line: Literal["error", "skip"] | None = None
    token_width: Literal[1, 2, 4] | None = None
    processing_batch_size: int | None = None        # Modalities knobs: accepted, ignored
    raw_samples_queue_size: int | None = None
    processed_samples_queue_size: int | None = None


class PackTokenizer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    pattern: str | None = None
    special_tokens: dict[str, int] = {}


class PackFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    settings: PackSettings = msgspec.field(default_factory=PackSettings)
    tokenizer: PackTokenizer | None = None

    def __post_init__(self):
        s = self.settings
        if s.jq_pattern is not None and s.text_key is not None:
            raise ValueError("$.settings: give jq_pattern or text_key, not both")
        if s.num_cpus is not None and s.num_cpus < 1:
            raise ValueError(f"$.settings.num_cpus must be >= 1, got {s.num_cpus}")
        for name in ("jq_pattern", "text_key"):  # named by its config key, not as --text-key
            key = getattr(s, name)
            if key is not None:
                parse_text_key(key, f"$.settings.{name}")
        if s.eod_token == "":
            raise ValueError("$.settings.eod_token must not be empty")


def load_pack_config(path: str | Path) -> PackFile:
    """Parse and validate; errors name the file and the key (`at $.settings.num_cpus`)."""
    path = Path(path)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError(f"{path}: reading TOML on Python 3.10 needs `pip install tomli`") from None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read config: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    try:
        return msgspec.convert(raw, PackFile)
    except (msgspec.ValidationError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None
