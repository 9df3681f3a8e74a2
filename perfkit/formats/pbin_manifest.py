"""The manifest beside a .pbin: `DST.pbin.json`, what the packed tokens mean and where they came from.

The .pbin itself stays byte-compatible with Modalities, so everything perfkit knows about a pack
(which tokenizer, which sources, how many documents, tokens and UTF-8 text bytes, what was skipped)
goes into a JSON file next to it. `perfkit pack` writes it atomically right after the .pbin is in
place. The manifest holds the .pbin's fingerprint (formats/pbin_fingerprint.py: size and digests of
a bounded sample, at most 8 MiB read), so a manifest left beside a .pbin that was replaced (by
another tool, or a pack interrupted between the two renames) is reported as stale, never trusted;
copying both files elsewhere (any tool, any mtime) keeps them valid.

Readers: `perfkit inspect` shows it; the trainer refuses a model vocabulary smaller than the
tokenizer's and training files packed with different tokenizers; evaluation turns the validation
loss into bits per byte with `text_bytes / tokens`. A .pbin without a manifest (Modalities') is
still a valid input: every reader treats the manifest as optional.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from perfkit.atomic import write_atomic
from perfkit.formats.pbin_fingerprint import file_fingerprint
from perfkit.errors import UserError

FORMAT = "perfkit.pbin.manifest"
VERSION = 1


class ManifestError(UserError):
    """A manifest that cannot be read or does not belong to its .pbin; the message names the file."""


class TokenizerRecord(msgspec.Struct, forbid_unknown_fields=False):
    """Which tokenizer wrote the tokens. Two packs used the same tokenizer when their `identity()`
    is equal (the kind, and the file's sha256, or the built-in encoding's name)."""

    kind: str                   # "tiktoken" | "hf" | "sentencepiece"
    name: str                   # what --tokenizer said (an encoding name or a path)
    vocab_size: int             # every id the tokenizer can produce is < vocab_size
    eod_id: int                 # the token appended after every document
    eod_token: str              # its text, e.g. "<|endoftext|>"
    file: str | None = None     # absolute path of the tokenizer file, None for a built-in name
    sha256: str | None = None   # of that file (tokenizer.json, .model, .tiktoken); None for built-ins
    bos_id: int | None = None   # a BOS the tokenizer's post-processor puts before every document

    def identity(self) -> tuple:
        return (self.kind, self.sha256 or self.name, self.eod_id)

    def describe(self) -> str:
        where = f" {self.file}" if self.file and self.file != self.name else ""
        return f"{self.kind} {self.name}{where} (vocab {self.vocab_size:,}, EOD {self.eod_token!r}={self.eod_id})"


class SourceRecord(msgspec.Struct, forbid_unknown_fields=False):
    path: str                   # absolute path as packed
    size: int                   # bytes on disk (compressed size for .gz / .zst)
    mtime_ns: int
    format: str = "jsonl"       # "jsonl" | "jsonl.gz" | "jsonl.zst" | "parquet"
    documents: int = 0          # documents of this source in the .pbin
    sha256: str | None = None   # when it was cheap to compute (small files), else None


class PbinManifest(msgspec.Struct, forbid_unknown_fields=False):
    tokenizer: TokenizerRecord
    sources: list[SourceRecord]
    documents: int              # = the .pbin's index entries
    tokens: int                 # = data bytes / token width, EOD tokens included
    text_bytes: int             # UTF-8 bytes of every packed document's text (for bits per byte)
    token_width: int
    pbin_fingerprint: dict = {}    # pbin_identity(the .pbin), set by write_manifest
    skipped: dict[str, int] = {}   # reason -> lines/rows left out (empty text, bad JSON, ...)
    shuffle_seed: int | None = None  # --shuffle-docs --seed N, else None (documents in source order)
    perfkit_version: str = ""
    format: str = FORMAT
    version: int = VERSION

    @property
    def bytes_per_token(self) -> float:
        return self.text_bytes / self.tokens if self.tokens else float("nan")


def manifest_path(pbin: str | os.PathLike) -> Path:
    """`corpus.pbin` -> `corpus.pbin.json` (beside it, whatever the .pbin's own suffix)."""
    pbin = Path(pbin)
    return pbin.with_name(pbin.name + ".json")


def encode_manifest(manifest: PbinManifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def pbin_identity(pbin: str | os.PathLike) -> dict:
    """The .pbin's fingerprint without its path (moving the pair is not a change)."""
    fingerprint = file_fingerprint(pbin)
    fingerprint.pop("path")
    return fingerprint


def write_manifest(pbin: str | os.PathLike, manifest: PbinManifest) -> Path:
    """Write the manifest beside `pbin` atomically; call it after the .pbin is in place (its
    `pbin_fingerprint` is taken here, from the file as it now is)."""
    path = manifest_path(pbin)
    manifest.pbin_fingerprint = pbin_identity(pbin)
    write_atomic(path, encode_manifest(manifest))
    return path


def read_manifest(pbin: str | os.PathLike) -> PbinManifest | None:
    """The manifest of `pbin`, or None when there is none (a Modalities .pbin).

    Raises ManifestError (naming the manifest) when it is unreadable, not a perfkit manifest, or
    stale: its fingerprint is not that of the .pbin beside it."""
    pbin = Path(pbin)
    path = manifest_path(pbin)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the manifest: {e.strerror or e}") from None
    try:
        manifest = msgspec.json.decode(raw, type=PbinManifest)
    except msgspec.ValidationError as e:
        raise ManifestError(f"{path}: not a perfkit .pbin manifest: {e}") from None
    except msgspec.DecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    if manifest.format != FORMAT or manifest.version > VERSION:
        raise ManifestError(f"{path}: format {manifest.format!r} version {manifest.version} is not one "
                            f"this perfkit reads ({FORMAT} <= {VERSION})")
    try:
        current = pbin_identity(pbin)
    except OSError:
        return manifest  # the .pbin's own errors are reported by whoever opens it
    if current != manifest.pbin_fingerprint:
        size = manifest.pbin_fingerprint.get("bytes")
        what = (f"it describes a {size:,}-byte .pbin, {pbin} has {current['bytes']:,} bytes"
                if size != current["bytes"] else f"{pbin}'s contents differ from the .pbin it describes")
        raise ManifestError(f"{path}: stale: {what}; re-run `perfkit pack` or delete the manifest")
    return manifest
