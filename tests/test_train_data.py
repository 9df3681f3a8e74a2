"""Tiny learnable .pbin files for the trainer tests (written here, byte by byte, in the format of
docs/architecture.md), plus a check that the data reader accepts them."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

VOCAB = 256  # tests override $.model.vocab_size with this; token width 2 bytes still exercises uint16


def write_pbin(path: Path, docs: list[np.ndarray], width: int = 2) -> Path:
    """header (u64 LE data bytes, u32 LE token width) + tokens + pickle of (byte_offset, byte_length)."""
    dtype = {1: "<u1", 2: "<u2", 4: "<u4"}[width]
    data = b"".join(np.asarray(d, dtype=dtype).tobytes() for d in docs)
    index, offset = [], 0
    for d in docs:
        index.append((offset, len(d) * width))
        offset += len(d) * width
    path.write_bytes(struct.pack("<QI", len(data), width) + data + pickle.dumps(index, protocol=4))
    return path


def learnable_docs(num_docs: int, doc_len: int, seed: int) -> list[np.ndarray]:
    """Documents of an easy-to-learn process: each token is a fixed function of the previous one
    (x -> (5x + 3) mod 251) with 10% random tokens, ending in EOD (255). A model that learns it
    drops from ln(256) = 5.5 nats to about 1."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(num_docs):
        x = np.empty(doc_len, dtype=np.int64)
        x[0] = rng.integers(0, 251)
        noise = rng.random(doc_len) < 0.1
        rand = rng.integers(0, 251, doc_len)
        for i in range(1, doc_len):  # test data generation, not a hot path
            x[i] = rand[i] if noise[i] else (5 * x[i - 1] + 3) % 251
        x[-1] = 255
        docs.append(x)
    return docs


def make_dataset(folder: Path, train_docs: int = 64, val_docs: int = 8, doc_len: int = 200) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    train = write_pbin(folder / "tiny_train.pbin", learnable_docs(train_docs, doc_len, seed=0))
    val = write_pbin(folder / "tiny_val.pbin", learnable_docs(val_docs, doc_len, seed=1))
    return train, val


def tiny_overrides(folder: Path, train: Path, val: Path, **extra) -> list[str]:
    """Overrides that point configs/cpu_debug.toml at the tiny data and a run folder in `folder`."""
    out = [f'--data.train=["{train}"]', f'--data.val=["{val}"]', f"--model.vocab_size={VOCAB}",
           f"--run.root={folder / 'runs'}", "--run.experiment_id=test"]
    out += [f"--{k}={v}" for k, v in extra.items()]
    return out


def test_tiny_pbin_is_readable(tmp_path):
    from perfkit.formats.pbin import read_pbin

    train, _ = make_dataset(tmp_path, train_docs=4, val_docs=2, doc_len=50)
    f = read_pbin(train)
    assert f.token_width == 2 and f.num_tokens == 200 and f.num_docs == 4
    assert int(np.max(f.tokens)) == 255
