"""Tokenizer resolution for `perfkit pack` / `perfkit inspect`: `--tokenizer VALUE` -> a tokenizer.

Every tokenizer kind offers the same small interface: `n_vocab`, `token_width`, `label`,
`token_id(text)`, `decode(ids)`, `record(eod_id)` (the manifest's TokenizerRecord) and
`encode_batch(texts) -> (ids, lengths)`: every text's ids concatenated into one (N,) uint32 array
and (len(texts),) int64 lengths, so a pack worker never returns per-token Python lists.
`eod_unless_last` says whether a document whose encoding already ends with the EOD id gets no
second one (Modalities' rule for the tokenizers that can produce it from text).

Accepted `--tokenizer` values (perfkit reads local files only, never a model hub):
- a Hugging Face tokenizer folder (holding tokenizer.json) or a tokenizer.json file:
  prep/tokenizer_hf.py (byte-level BPE converted to tiktoken ranks by prep/tokenizer_convert.py);
- a SentencePiece `.model` file: prep/tokenizer_sentencepiece.py (optional dependency);
- `gpt2`: the GPT-2 vocabulary. tiktoken's own "gpt2" loads two other files (vocab.bpe, encoder.json);
  r50k_base is the same vocabulary, pattern and `<|endoftext|>` = 50256 in one ranks file, which
  `perfkit fetch` puts into tiktoken's cache, so `gpt2` resolves to r50k_base and works offline.
- any tiktoken encoding name (r50k_base, p50k_base, cl100k_base, o200k_base, ...): resolved by
  tiktoken through its cache (TIKTOKEN_CACHE_DIR, else <tmp>/data-gym-cache), downloading on a miss.
- a path to a local `.tiktoken` ranks file (base64 token, space, rank per line). Its split pattern and
  special tokens come from `--tokenizer-pattern` / `--special-token`, or, when the file is one of
  OpenAI's published ranks files (recognised by sha256), from tiktoken's definition of that encoding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken
import tiktoken_ext.openai_public as public

from perfkit.formats.pbin import token_width_for_vocab
from perfkit.formats.pbin_manifest import TokenizerRecord
from perfkit.prep.tokenizer_base import DEFAULT_EOD, TokenizerError, TokenizerSpec, concat_ids
from perfkit.prep.tokenizer_hf import load_hf_tokenizer
from perfkit.prep.tokenizer_sentencepiece import load_sentencepiece

__all__ = ["DEFAULT_EOD", "TokenizerError", "TokenizerSpec", "Tokenizer", "resolve_tokenizer",
           "parse_special_tokens", "tokenizer_kind"]

# sha256 of OpenAI's published ranks files -> the tiktoken encoding they belong to (these are the
# `expected_hash` values tiktoken checks downloads against).
KNOWN_RANKS_SHA256 = {
    "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930": "r50k_base",
    "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069": "p50k_base",
    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7": "cl100k_base",
    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d": "o200k_base",
}
ALIASES = {"gpt2": "r50k_base"}


def ordinary_encoder(encoding):
    """text -> (n,) uint32 ids with encode_ordinary semantics (special-token text stays text).

    tiktoken >= 0.8 can return a numpy buffer straight from Rust (encode_to_numpy with no special
    token allowed or disallowed is exactly encode_ordinary), which skips building a Python int per
    token; older versions get encode_ordinary's list."""
    if hasattr(encoding, "encode_to_numpy"):
        none: frozenset = frozenset()
        to_numpy = encoding.encode_to_numpy
        return lambda text: to_numpy(text, allowed_special=none, disallowed_special=none)
    return lambda text: np.array(encoding.encode_ordinary(text), dtype=np.uint32)


@dataclass
class Tokenizer:
    """A tiktoken encoding (a built-in name or a local .tiktoken file)."""

    spec: TokenizerSpec
    encoding: object          # tiktoken.Encoding
    label: str                # what to print: "gpt2 (r50k_base)", "cl100k_base", "my.tiktoken"
    kind = "tiktoken"
    eod_unless_last = False   # encode_ordinary never produces a special token: always append EOD
    note = None               # nothing to tell the user about how it runs

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encode = ordinary_encoder(self.encoding)
        return concat_ids([encode(t) for t in texts])  # one Rust call per document

    def worker_encoder(self):
        """encode_batch for a pack worker (tiktoken's per-document calls are single-threaded)."""
        return self.encode_batch

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    @property
    def token_width(self) -> int:
        return token_width_for_vocab(self.n_vocab)

    def record(self, eod_id: int) -> TokenizerRecord:
        """What the .pbin manifest says about this tokenizer. Built-in encodings carry the sha256 of
        their published ranks file, so `gpt2`, `r50k_base` and a local copy of its file are one
        tokenizer to the trainer's same-tokenizer check."""
        path = Path(self.spec.name)
        local = self.spec.name.endswith(".tiktoken") or path.is_file()
        base = ALIASES.get(self.spec.name, self.spec.name)
        sha = (hashlib.sha256(path.read_bytes()).hexdigest() if local else
               next((h for h, name in KNOWN_RANKS_SHA256.items() if name == base), None))
        eod = self.encoding.decode_single_token_bytes(eod_id).decode("utf-8", "replace")
        return TokenizerRecord(kind="tiktoken", name=self.spec.name, vocab_size=self.n_vocab, eod_id=eod_id,
                               eod_token=eod, file=str(path.resolve()) if local else None, sha256=sha)

    def token_id(self, text: str) -> int:
        """The id of a special token (or of a string that is exactly one ordinary token)."""
        try:
            return self.encoding.encode_single_token(text)
        except KeyError:
            raise TokenizerError(f"{text!r} is not a single token of tokenizer {self.label}") from None


def parse_special_tokens(items: list[str] | None) -> tuple[tuple[str, int], ...]:
    """`--special-token '<|endoftext|>=50256'` (repeatable) -> (("<|endoftext|>", 50256), ...)."""
    out = []
    for item in items or []:
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value.strip().isdigit():
            raise TokenizerError(f"--special-token {item!r}: expected TOKEN=ID, e.g. '<|endoftext|>=50256'")
        out.append((name, int(value)))
    return tuple(out)


ACCEPTED = ("gpt2 or a tiktoken encoding name ({names}), a Hugging Face tokenizer folder (with "
            "tokenizer.json) or tokenizer.json file, a SentencePiece .model file, or a .tiktoken ranks file")


def _accepted() -> str:
    return ACCEPTED.format(names=", ".join(tiktoken.list_encoding_names()))


def tokenizer_kind(name: str) -> str:
    """"hf", "sentencepiece", "tiktoken-file" or "tiktoken-name" for an existing path or a name;
    raises TokenizerError (listing what is accepted) for anything else, e.g. a hub id."""
    path = Path(name)
    if ALIASES.get(name, name) in tiktoken.list_encoding_names():
        return "tiktoken-name"  # `gpt2` stays tiktoken's even beside a folder named gpt2 (say ./gpt2)
    if path.is_dir():
        return "hf"
    if path.is_file():
        if path.suffix == ".json":
            return "hf"
        if path.suffix == ".model":
            return "sentencepiece"
        return "tiktoken-file"
    looks_like_path = os.sep in name or path.suffix in (".tiktoken", ".json", ".model")
    what = f"tokenizer {name} does not exist" if looks_like_path else f"unknown tokenizer {name!r}"
    raise TokenizerError(f"{what}: perfkit reads local files only (no model hub downloads); use {_accepted()}")


def resolve_tokenizer(spec: TokenizerSpec):
    """The tokenizer `spec` names (Tokenizer, HFTokenizer or SentencePieceTokenizer)."""
    kind = tokenizer_kind(spec.name)
    if kind == "hf":
        return load_hf_tokenizer(spec)
    if kind == "sentencepiece":
        return load_sentencepiece(spec)
    if kind == "tiktoken-file":
        return _local_tokenizer(spec, tiktoken)
    name = spec.name
    base = ALIASES.get(name, name)
    try:
        enc = tiktoken.get_encoding(base)
    except Exception as e:  # offline cache miss: requests' ConnectionError, hash mismatch, ...
        raise TokenizerError(
            f"tokenizer {name!r}: the {base} ranks are not in tiktoken's cache and could not be "
            f"downloaded ({type(e).__name__}: {e}). Run `perfkit fetch` (gpt2), set TIKTOKEN_CACHE_DIR "
            f"to a folder holding them, or pass the path of a local .tiktoken file") from None
    label = name if base == name else f"{name} ({base})"
    return Tokenizer(spec, enc, label)


def load_ranks(path: Path) -> tuple[dict[bytes, int], str]:
    """Parse a .tiktoken file: `<base64 token> <rank>` per line. Returns (ranks, sha256)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read tokenizer ranks: {e.strerror or e}") from None
    ranks = {}
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error):
            raise TokenizerError(f"{path}:{lineno}: not a .tiktoken line (expected '<base64> <rank>')") from None
    if not ranks:
        raise TokenizerError(f"{path}: no ranks in the file")
    return ranks, hashlib.sha256(raw).hexdigest()


def _builtin_definition(encoding_name: str) -> tuple[str, dict[str, int]]:
    """(pattern, special tokens) of a tiktoken built-in, taken from tiktoken itself without
    loading (or downloading) its ranks file: its constructor is called with the loader swapped."""
    ctor = getattr(public, encoding_name, None)
    if ctor is None or not hasattr(public, "load_tiktoken_bpe"):
        raise TokenizerError(f"this tiktoken version does not define {encoding_name}; pass "
                             "--tokenizer-pattern and --special-token")
    loader = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = lambda *args, **kwargs: {}
    try:
        definition = ctor()
    finally:
        public.load_tiktoken_bpe = loader
    return definition["pat_str"], dict(definition["special_tokens"])


def _local_tokenizer(spec: TokenizerSpec, tiktoken) -> Tokenizer:
    path = Path(spec.name)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    ranks, digest = load_ranks(path)
    known = KNOWN_RANKS_SHA256.get(digest)
    pattern, specials = None, {}
    if known:
        pattern, specials = _builtin_definition(known)
    if spec.pattern:
        if spec.pattern in KNOWN_RANKS_SHA256.values() or spec.pattern in ALIASES:
            pattern = _builtin_definition(ALIASES.get(spec.pattern, spec.pattern))[0]
        else:
            pattern = spec.pattern
    specials.update(dict(spec.special_tokens))
    if pattern is None:
        raise TokenizerError(f"{path}: unknown ranks file (sha256 {digest}); name its split pattern with "
                             "--tokenizer-pattern (an encoding name such as cl100k_base, or a regex) "
                             "and its special tokens with --special-token TOKEN=ID")
    try:
        enc = tiktoken.Encoding(name=path.stem, pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens=specials)
    except Exception as e:
        raise TokenizerError(f"{path}: cannot build a tokenizer from it: {e}") from None
    return Tokenizer(spec, enc, f"{path.name} ({known})" if known else path.name)
