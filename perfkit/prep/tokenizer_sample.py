"""The corpus sample `perfkit pack` verifies a converted tokenizer on, before the workers start.

A byte-level BPE tokenizer.json runs through tiktoken only when the conversion gives the
tokenizers library's ids (prep/tokenizer_hf.py): its whole vocabulary and edge strings are checked
when it loads, and here the first documents of the corpus itself (at most SAMPLE_DOCS documents
from the first SAMPLE_BYTES of the file, whole lines; bad lines are left to the pack itself to report).
"""

from __future__ import annotations

import os
from pathlib import Path

from perfkit.prep.jsonl import TextExtractor, extract_texts, read_line_chunk

SAMPLE_BYTES = 64 << 10   # the library encodes it single-threaded before the workers start
SAMPLE_DOCS = 64


def corpus_sample(src: Path, key_path: tuple[str, ...]) -> list[str]:
    fd = os.open(src, os.O_RDONLY)
    try:
        chunk = read_line_chunk(fd, 0, SAMPLE_BYTES, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    texts, _good, _bad = extract_texts(chunk, TextExtractor(key_path), stop_at_first_bad=False)
    return texts[:SAMPLE_DOCS]


def checked_on_corpus(tok, src: Path, key_path: tuple[str, ...]):
    """tok, or the same tokenizer switched to an exact route when the sample shows a difference."""
    check = getattr(tok, "check_sample", None)
    if check is None or getattr(tok, "fast", None) is None:
        return tok  # nothing converted: nothing to verify
    return check(corpus_sample(src, key_path))
