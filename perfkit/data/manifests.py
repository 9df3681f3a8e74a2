"""What the trainer learns from the manifests beside its .pbin files (formats/pbin_manifest.py).

Two refusals, before the model is built, both naming the files:
- a tokenizer whose vocabulary is larger than $.model.vocab_size (ids the embedding cannot hold
  would reach it sooner or later, even if this corpus happens not to use them);
- train and val files packed with different tokenizers (the same ids would mean different text).

A file without a manifest (a Modalities .pbin) takes part in neither check. A manifest that is
damaged or stale (its .pbin was replaced) is not trusted: one warning names it, and the file is
treated as having none.
"""

from __future__ import annotations

from collections.abc import Callable

from perfkit.errors import UserError
from perfkit.formats.pbin_manifest import ManifestError, PbinManifest, manifest_path, read_manifest


def read_data_manifests(files: dict[str, list[str]], warn: Callable[[str], None]) -> dict[str, PbinManifest]:
    """(config key with index, e.g. "$.data.val[0]") -> the manifest of that file, for files that have a
    usable one. files: config key ("$.data.train") -> its .pbin paths, in config order."""
    out = {}
    for key, paths in files.items():
        for i, path in enumerate(paths):
            try:
                manifest = read_manifest(path)
            except ManifestError as e:
                warn(f"{key}[{i}]: {e}; the manifest is ignored (no tokenizer checks for {path})")
                continue
            if manifest is not None:
                out[f"{key}[{i}]"] = manifest
    return out


def check_data_manifests(vocab_size: int, files: dict[str, list[str]], warn: Callable[[str], None]) -> dict[str, PbinManifest]:
    """Refuse the run (UserError) on a tokenizer larger than the model or mixed tokenizers; return the
    manifests found (see read_data_manifests)."""
    manifests = read_data_manifests(files, warn)
    paths = {f"{key}[{i}]": p for key, ps in files.items() for i, p in enumerate(ps)}
    for where, m in manifests.items():
        if m.tokenizer.vocab_size > vocab_size:
            raise UserError(
                f"$.model.vocab_size ({vocab_size:,}) is smaller than the vocabulary of the tokenizer that packed "
                f"{where} {paths[where]} ({m.tokenizer.describe()}, says {manifest_path(paths[where])}); set "
                f"$.model.vocab_size >= {m.tokenizer.vocab_size:,} (a multiple of 64 or 128 is fastest)")
    first_where, first = next(iter(manifests.items()), (None, None))
    for where, m in manifests.items():
        if m.tokenizer.identity() != first.tokenizer.identity():
            raise UserError(
                f"{first_where} {paths[first_where]} and {where} {paths[where]} were packed with different "
                f"tokenizers ({first.tokenizer.describe()} vs {m.tokenizer.describe()}): the same ids mean "
                f"different text; pack every file with one tokenizer")
    return manifests
