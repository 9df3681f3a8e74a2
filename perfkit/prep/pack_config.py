"""`perfkit pack --config FILE.toml`: the seed's tokenization_config settings as TOML.

    [settings]
    src_path = "data/raw/corpus.jsonl"            # or a list of files, folders, globs (perfkit extra)
    dst_path = "data/preprocessed/corpus.pbin"
    index_path = "data/preprocessed/corpus.idx"   # optional
    jq_pattern = ".text"                          # or text_key = "text"
    num_cpus = 8
    eod_token = "<|endoftext|>"
    on_bad_line = "error"                         # perfkit extra: error | skip
    shuffle_docs = false                          # perfkit extra: permute the documents ...
    seed = 0                                      # ... with this seed

    [tokenizer]
    name = "gpt2"                                 # or a path: tokenizer folder / tokenizer.json / .model / .tiktoken
    pattern = "cl100k_base"                       # local .tiktoken files only: encoding name or regex
    special_tokens = { "<|endoftext|>" = 100257 } # local .tiktoken files only

    # or Modalities' tokenizer components, as in its tokenization_config.yaml:
    [tokenizer]
    component_key = "tokenizer"
    variant_key = "pretrained_hf_tokenizer"       # config: pretrained_model_name_or_path, padding, truncation
    config = { pretrained_model_name_or_path = "data/tokenizer", padding = false, truncation = false }
    # variant_key = "pretrained_sp_tokenizer"     # config: tokenizer_model_file = "tokenizer.model"

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
    src_path: str | list[str] | None = None
    dst_path: str | None = None
    index_path: str | None = None
    jq_pattern: str | None = None
    text_key: str | None = None
    num_cpus: int | None = None
    eod_token: str | None = None
    on_bad_line: Literal["error", "skip"] | None = None
    token_width: Literal[1, 2, 4] | None = None
    shuffle_docs: bool | None = None
    seed: int | None = None
    processing_batch_size: int | None = None        # Modalities knobs: accepted, ignored
    raw_samples_queue_size: int | None = None
    processed_samples_queue_size: int | None = None


class ModalitiesTokenizerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pretrained_model_name_or_path: str | None = None   # pretrained_hf_tokenizer: a local folder
    padding: bool | str = False
    truncation: bool = False
    max_length: int | None = None
    special_tokens: dict[str, str] | None = None
    tokenizer_model_file: str | None = None            # pretrained_sp_tokenizer: a .model file


VARIANT_PATH_KEY = {"pretrained_hf_tokenizer": "pretrained_model_name_or_path",
                    "pretrained_sp_tokenizer": "tokenizer_model_file"}


class PackTokenizer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str | None = None
    pattern: str | None = None
    special_tokens: dict[str, int] = {}
    component_key: str | None = None                  # Modalities' component form (name is derived)
    variant_key: str | None = None
    config: ModalitiesTokenizerConfig | None = None

    def __post_init__(self):
        if self.variant_key is None:
            if self.config is not None:
                raise ValueError("$.tokenizer.config needs $.tokenizer.variant_key (pretrained_hf_tokenizer "
                                 "or pretrained_sp_tokenizer)")
            if self.name is None:
                raise ValueError("$.tokenizer: give name (gpt2, a tiktoken name or a tokenizer path) or "
                                 "Modalities' variant_key + config")
            return
        if self.name is not None:
            raise ValueError("$.tokenizer: give name or variant_key + config, not both")
        key = VARIANT_PATH_KEY.get(self.variant_key)
        if key is None:
            raise ValueError(f"$.tokenizer.variant_key {self.variant_key!r}: perfkit reads "
                             f"{' or '.join(VARIANT_PATH_KEY)}")
        c = self.config or ModalitiesTokenizerConfig()
        if not getattr(c, key):
            raise ValueError(f"$.tokenizer.config.{key} is required for {self.variant_key}")
        other = next(k for k in VARIANT_PATH_KEY.values() if k != key)
        if getattr(c, other) is not None:
            raise ValueError(f"$.tokenizer.config.{other} does not belong to {self.variant_key}")
        if c.padding not in (False, "do_not_pad") or c.truncation or c.max_length is not None:
            raise ValueError("$.tokenizer.config: perfkit never pads or truncates documents; set padding = false, "
                             "truncation = false and no max_length")
        if c.special_tokens:
            raise ValueError("$.tokenizer.config.special_tokens is not supported: perfkit uses the "
                             "tokenizer's own special tokens (pick the EOD with settings.eod_token)")
        self.name = getattr(c, key)


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
        if isinstance(s.src_path, list) and not s.src_path:
            raise ValueError("$.settings.src_path must not be an empty list")
        if s.seed is not None and s.seed < 0:
            raise ValueError(f"$.settings.seed must be >= 0, got {s.seed}")
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
