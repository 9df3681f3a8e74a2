"""`perfkit pack SRC...`: which files a pack reads, in which order, and what they are.

Each SRC is a file, a folder (every corpus file below it, in sorted path order, hidden names
skipped) or a glob (`data/*.jsonl.gz`, `**` recurses; sorted). The sources keep the order given,
and the documents keep their order within and across files. The format follows the file name:

    *.parquet, *.pq          parquet: one document per row of the text column (prep/parquet_source.py)
    *.gz                     gzip-compressed JSONL (prep/decompress.py)
    *.zst, *.zstd            zstd-compressed JSONL (prep/decompress.py)
    anything else            JSONL, unless its first bytes are a gzip, zstd or parquet signature

Size and mtime are taken once, before any work, for the manifest; a file that is small enough is
hashed too (sha256), within a total budget so that many files do not stall the start.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from perfkit.errors import UserError
from perfkit.formats.pbin_manifest import SourceRecord
from perfkit.prep.cli_paths import check_input_file

JSONL, GZIP, ZSTD, PARQUET = "jsonl", "jsonl.gz", "jsonl.zst", "parquet"
COMPRESSED = (GZIP, ZSTD)
# Suffixes a folder contributes (a folder may also hold READMEs, .idx files, ...).
FOLDER_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl.zstd",
                   ".parquet", ".pq")
SHA256_FILE_LIMIT = 16 << 20    # hash files up to this size ...
SHA256_TOTAL_LIMIT = 64 << 20   # ... while the hashed total stays below this (~0.1 s of sha256)


@dataclass(frozen=True)
class Source:
    path: Path          # as given (or as the folder / glob expanded it)
    format: str         # JSONL | GZIP | ZSTD | PARQUET
    size: int           # bytes on disk (compressed size for .gz / .zst)
    mtime_ns: int

    @property
    def compressed(self) -> bool:
        return self.format in COMPRESSED


MAGIC = {b"\x1f\x8b": GZIP, b"\x28\xb5\x2f\xfd": ZSTD, b"PAR1": PARQUET}


def source_format(path: str | os.PathLike, head: bytes = b"") -> str:
    """By the name; a file named like JSONL whose first bytes (`head`) are a gzip, zstd or
    parquet signature is read as what it is (it would fail as `:1: invalid UTF-8` otherwise)."""
    name = Path(path).name.lower()
    if name.endswith((".parquet", ".pq")):
        return PARQUET
    if name.endswith(".gz"):
        return GZIP
    if name.endswith((".zst", ".zstd")):
        return ZSTD
    return next((fmt for magic, fmt in MAGIC.items() if head.startswith(magic)), JSONL)


def _folder_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files
                  if not f.startswith(".") and f.lower().endswith(FOLDER_SUFFIXES)]
    return sorted(found, key=str)


def expand_sources(specs: list[str]) -> list[Source]:
    """The files named by `specs`, in order; UserError `SPEC: reason` when one names nothing."""
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            inside = _folder_files(p)
            if not inside:
                raise UserError(f"{p}: is a directory holding no corpus files "
                                f"({', '.join('*' + x for x in FOLDER_SUFFIXES)})")
            paths += inside
        elif not p.exists() and glob.has_magic(spec):
            matched = sorted((Path(m) for m in glob.glob(spec, recursive=True) if not Path(m).is_dir()), key=str)
            if not matched:
                raise UserError(f"{spec}: no file matches the pattern")
            paths += matched
        else:
            paths.append(p)
    sources = []
    for path in paths:
        check_input_file(path)
        st = path.stat()
        with open(path, "rb") as f:
            head = f.read(4)
        sources.append(Source(path, source_format(path, head), st.st_size, st.st_mtime_ns))
    return sources


def source_records(sources: list[Source], documents: list[int]) -> list[SourceRecord]:
    """The manifest's view of the sources (absolute paths; sha256 only where cheap)."""
    records, hashed = [], 0
    for src, docs in zip(sources, documents):
        digest = None
        if src.size <= SHA256_FILE_LIMIT and hashed + src.size <= SHA256_TOTAL_LIMIT:
            try:
                digest = hashlib.sha256(src.path.read_bytes()).hexdigest()
                hashed += src.size
            except OSError:
                digest = None
        records.append(SourceRecord(path=str(src.path.resolve()), size=src.size, mtime_ns=src.mtime_ns,
                                    format=src.format, documents=docs, sha256=digest))
    return records
