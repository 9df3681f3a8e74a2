"""Training windows over memory-mapped .pbin token streams.

Window math (Modalities `PackedMemMapDatasetContinuous`, block = S + 1 tokens):
- reuse_last_target=True (continuous): sample i = tokens[i*S : i*S + S + 1]; (T - (S+1)) // S + 1 samples.
  Consecutive samples overlap by one token: the last target of i is the first input of i + 1.
- reuse_last_target=False (non-overlapping): sample i = tokens[i*(S+1) : (i+1)*(S+1)]; T // (S+1) samples.
Windows ignore document boundaries; inputs are the first S tokens of a sample, targets the last S.

Several files form one sample index space. Without weights the files are concatenated index-wise
(Modalities' `CombinedDataset`): global sample g lives in the file whose cumulative window count first
exceeds g; windows never straddle two files (each file is its own token stream).

With `weights`, one epoch still has sum(N_i) samples, but file i owns m_i of them, m_i proportional to
its weight (largest-remainder rounding, so the m_i sum exactly to the total). Virtual sample j of file i
maps to a window of that file through a stream that walks the file pass after pass:
position p = epoch * m_i + j, pass = p // N_i, and within the pass an affine bijection
k -> (a * k + b) mod N_i seeded by (seed, file, pass). So a down-weighted file sees new windows every
epoch and every window once before any repeats; an up-weighted file repeats whole passes, each in a
different order. Everything is a pure function of (seed, epoch, index): resumable with no stored state.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from perfkit.config import weights_problem
from perfkit.formats.pbin import HEADER_SIZE, read_pbin
from perfkit.errors import UserError


class WindowError(UserError):
    """A dataset that cannot give even one window (names the file or config key)."""


def num_windows(num_tokens: int, seq_len: int, reuse_last_target: bool = True) -> int:
    """How many samples of S + 1 tokens a stream of T tokens yields (0 when T < S + 1)."""
    if seq_len < 1:
        raise WindowError(f"sequence length must be >= 1, got {seq_len}")
    if num_tokens < seq_len + 1:
        return 0
    if reuse_last_target:
        return (num_tokens - (seq_len + 1)) // seq_len + 1
    return num_tokens // (seq_len + 1)


def window_stride(seq_len: int, reuse_last_target: bool = True) -> int:
    """Tokens between the starts of consecutive windows."""
    return seq_len if reuse_last_target else seq_len + 1


class TokenFile:
    """One .pbin's token stream, memory-mapped once per process.

    The parent validates the file through `read_pbin` (header, size, index, width). A forked or
    unpickled child re-maps the data segment lazily, keyed by its pid, instead of inheriting or
    pickling the parent's map (pickling an np.memmap would copy the whole array).
    """

    def __init__(self, path: str | os.PathLike):
        pbin = read_pbin(path)  # the reader owns all format validation
        self.path = str(pbin.path)
        self.token_width = int(pbin.token_width)
        self.num_tokens = int(pbin.num_tokens)
        self.dtype = np.dtype(pbin.tokens.dtype)
        self._file_size = os.path.getsize(self.path)
        self._tokens = pbin.tokens
        self._pid = os.getpid()
        self._views: dict[tuple[int, bool], np.ndarray] = {}  # strided window views of _tokens

    @property
    def tokens(self) -> np.ndarray:
        """(T,) little-endian uint8/16/32 view of the data segment, valid in this process."""
        if self._tokens is None or self._pid != os.getpid():
            self._reopen()
        return self._tokens

    def _reopen(self) -> None:
        size = os.path.getsize(self.path)
        if size != self._file_size:
            raise WindowError(f"{self.path}: file changed size since it was validated "
                              f"({self._file_size} -> {size} bytes)")
        self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r",
                                 offset=HEADER_SIZE, shape=(self.num_tokens,))
        self._pid = os.getpid()
        self._views = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokens"] = None  # the child maps the file itself
        state["_views"] = {}
        return state

    def windows(self, seq_len: int, reuse_last_target: bool) -> np.ndarray:
        """(N, S+1) zero-copy strided view: row i is sample i of this file."""
        tok = self.tokens  # first: a reopen after fork clears the cached views
        key = (seq_len, reuse_last_target)
        view = self._views.get(key)
        if view is None:
            n = num_windows(self.num_tokens, seq_len, reuse_last_target)
            step = window_stride(seq_len, reuse_last_target) * tok.itemsize
            view = np.lib.stride_tricks.as_strided(tok, shape=(n, seq_len + 1),
                                                   strides=(step, tok.itemsize), writeable=False)
            self._views[key] = view
        return view


class WindowDataset:
    """Samples of S + 1 tokens over one or more .pbin files (see the module docstring).

    `num_samples` is the size of one epoch's index space; `gather(indices, epoch, out)` fills
    out (len(indices), S+1) with one vectorized gather per file (no per-sample Python loop).
    """

    def __init__(self, paths: list[str], seq_len: int, *, reuse_last_target: bool = True,
                 weights: list[float] | None = None, seed: int = 0, config_key: str = "$.data.train"):
        if not paths:
            raise WindowError(f"{config_key} is empty: no .pbin files to read")
        if seq_len < 1:
            raise WindowError(f"sequence length must be >= 1, got {seq_len}")
        if weights is not None and weights_problem(weights, len(paths)):
            key = "$.data.train_weights" if config_key == "$.data.train" else f"{config_key} weights"
            raise WindowError(f"{key} {weights_problem(weights, len(paths))}")
        self.seq_len = seq_len
        self.reuse_last_target = reuse_last_target
        self.seed = seed
        self.files = [TokenFile(p) for p in paths]
        widths = {f.token_width for f in self.files}
        if len(widths) != 1:
            raise WindowError(f"{config_key}: files mix token widths {sorted(widths)} "
                              f"({', '.join(f'{f.path}={f.token_width}' for f in self.files)})")
        self.dtype = self.files[0].dtype
        self.file_windows = np.array([num_windows(f.num_tokens, seq_len, reuse_last_target)
                                      for f in self.files], dtype=np.int64)  # N_i
        for f, n in zip(self.files, self.file_windows):
            if n == 0:
                raise WindowError(f"{f.path}: {f.num_tokens} tokens, too few for one window of "
                                  f"sequence length {seq_len} (needs {seq_len + 1} tokens)")
        total = int(self.file_windows.sum())
        if weights is None:
            self.weights = None
            self.file_samples = self.file_windows.copy()  # m_i = N_i: plain concatenation
        else:
            self.weights = [float(w) for w in weights]
            self.file_samples = _allocate(total, self.weights)
            big = [f.path for f, n in zip(self.files, self.file_windows) if n >= 2 ** 31]
            if big:  # a * k must fit in int64 for the affine bijection
                raise WindowError(f"{big[0]}: more than 2**31 windows; split it to use train_weights")
        self.num_samples = int(self.file_samples.sum())
        self.cum_samples = np.concatenate([[0], np.cumsum(self.file_samples)]).astype(np.int64)

    def locate(self, indices: np.ndarray, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Global sample indices (n,) -> (file index (n,), window index inside that file (n,))."""
        indices = np.asarray(indices, dtype=np.int64)
        file_idx = np.searchsorted(self.cum_samples, indices, side="right") - 1
        local = indices - self.cum_samples[file_idx]
        if self.weights is not None:
            local = self._mixture_windows(file_idx, local, epoch)
        return file_idx, local

    def _mixture_windows(self, file_idx: np.ndarray, j: np.ndarray, epoch: int) -> np.ndarray:
        out = np.empty_like(j)
        for i in np.unique(file_idx):  # a loop over files, never over samples
            sel = file_idx == i
            n, m = int(self.file_windows[i]), int(self.file_samples[i])
            pos = epoch * m + j[sel]  # position in file i's endless stream of passes
            passes, k = np.divmod(pos, n)
            res = np.empty_like(k)
            for p in np.unique(passes):  # at most 2 + m // n passes touch one epoch
                a, b = _affine_params(n, self.seed, int(i), int(p))
                at = passes == p
                res[at] = (a * k[at] + b) % n
            out[sel] = res
        return out

    def gather(self, indices: np.ndarray, epoch: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """Copy samples `indices` (n,) into out (n, S+1) of the files' token dtype."""
        indices = np.asarray(indices, dtype=np.int64)
        if out is None:
            out = np.empty((len(indices), self.seq_len + 1), dtype=self.dtype)
        file_idx, local = self.locate(indices, epoch)
        if len(self.files) == 1:
            out[...] = self.files[0].windows(self.seq_len, self.reuse_last_target)[local]
            return out
        for i in np.unique(file_idx):
            sel = file_idx == i
            out[sel] = self.files[i].windows(self.seq_len, self.reuse_last_target)[local[sel]]
        return out


def _allocate(total: int, weights: list[float]) -> np.ndarray:
    """Split `total` samples by weight with largest-remainder rounding; ties go to the earlier file.

    Exact rational arithmetic on the decimal each weight was written as (repr of the float), not
    float division: with floats, w / sum(w) * total puts tied remainders an ulp apart, so
    [0.3, 0.1] of 2 samples gave [1, 1] while [3, 1] gave [2, 0], breaking both the documented
    tie rule and scale invariance (found by tests/test_loader_fuzz.py).
    """
    exact_w = [Fraction(repr(float(w))) for w in weights]
    whole = sum(exact_w)
    exact = [w * total / whole for w in exact_w]
    base = [math.floor(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (base[i] - exact[i], i))  # largest remainder first
    for i in order[: total - sum(base)]:
        base[i] += 1
    return np.asarray(base, dtype=np.int64)


def _affine_params(n: int, seed: int, file_index: int, pass_index: int) -> tuple[int, int]:
    """(a, b) with gcd(a, n) == 1, so k -> (a*k + b) mod n is a bijection of range(n)."""
    if n <= 1:
        return 1, 0
    rng = np.random.default_rng([seed & 0xFFFFFFFF, file_index, pass_index, 0x70626E])
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            return a, int(rng.integers(0, n))


def pbin_paths(paths: list[str], config_key: str) -> list[str]:
    """Check that every configured file exists before any is opened (clear error naming the key)."""
    for p in paths:
        if not Path(p).is_file():
            raise WindowError(f"{config_key}: no such file {p}")
    return list(paths)
