"""`perfkit pack --shuffle-docs --seed N`: the documents in a deterministic random order.

The order is `numpy.random.Generator(PCG64(seed)).permutation(D)` over the D packed documents in
source order (skipped lines are not documents): document k of the output is document perm[k] of
the sources. The .pbin equals packing a JSONL whose lines were shuffled that way.

How: the pipeline tokenizes the sources in order as always (sequential reads, every format,
compressed ones too) into the first temporary file; then the tokens are gathered into the second
temporary file in permuted order. Each slice of the permuted order is one contiguous range of the
output, filled by one vectorized gather from the memory-mapped first file and one pwrite; slices
run on `threads` threads (numpy's take releases the GIL). Memory: five int64 arrays of one entry
per document (token counts in both orders, the permutation, source starts, output ends: 40 bytes
per document, no texts), plus one slice's gather index per thread (SLICE_TOKENS * 8 bytes). Disk: the data segment twice while the gather runs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from perfkit.formats.pbin import HEADER_SIZE, token_dtype

SLICE_TOKENS = 1 << 21      # tokens per gather slice (16 MiB of int64 index per thread)
MAX_THREADS = 8


def permutation(num_docs: int, seed: int) -> np.ndarray:
    """(num_docs,) int64: output position k holds source document perm[k]."""
    return np.random.Generator(np.random.PCG64(seed)).permutation(num_docs).astype(np.int64)


def shuffle_documents(src_path: str, dst_path: str, doc_tokens: list[np.ndarray], width: int, seed: int,
                      threads: int = 1) -> np.ndarray:
    """Write the data segment of src_path (documents in source order) to dst_path in permuted order.
    Returns the (num_docs,) token counts in the new order (for the index)."""
    counts = np.concatenate(doc_tokens) if doc_tokens else np.zeros(0, np.int64)   # (D,) source order
    perm = permutation(counts.size, seed)
    new_counts = counts[perm]                              # (D,) output order
    total = int(counts.sum())
    if total == 0:
        return new_counts
    src_start = np.cumsum(counts) - counts                 # (D,) token offset of each source document
    out_end = np.cumsum(new_counts)                        # (D,) token end of each output document
    # slice boundaries (document numbers in output order), about SLICE_TOKENS each
    cuts = np.searchsorted(out_end, np.arange(SLICE_TOKENS, total, SLICE_TOKENS), side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [counts.size]]))
    tokens = np.memmap(src_path, dtype=token_dtype(width), mode="r", offset=HEADER_SIZE, shape=(total,))
    fd = os.open(dst_path, os.O_WRONLY)

    def gather(a: int, b: int) -> None:
        lens = new_counts[a:b]                             # (n,) tokens of the slice's documents
        first = src_start[perm[a:b]]                       # (n,) where each one starts in the source
        within = np.cumsum(lens) - lens                    # (n,) where each one starts in the slice
        idx = np.repeat(first - within, lens) + np.arange(int(lens.sum()), dtype=np.int64)
        data = memoryview(np.take(tokens, idx).view(np.uint8))
        pos = HEADER_SIZE + (int(out_end[a - 1]) if a else 0) * width
        while data:
            n = os.pwrite(fd, data, pos)
            data, pos = data[n:], pos + n

    try:
        pairs = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        with ThreadPoolExecutor(max(1, min(threads, MAX_THREADS, len(pairs)))) as pool:
            for done in [pool.submit(gather, a, b) for a, b in pairs]:
                done.result()
    finally:
        os.close(fd)
        del tokens
    return new_counts
