"""Bits per byte of the validation text: how val/bpb is computed, decided once before training.

Validation loss is in nats per token, so it depends on the tokenizer; bits per byte divides the
same information by the UTF-8 bytes of the text the tokens stand for, so runs with different
tokenizers compare (docs/evaluation.md#bits-per-byte). Definitions:

- the tokens: the targets of the evaluated windows (EOD targets included), as in val/loss;
- the bytes of a token: its UTF-8 bytes in the text (`decode_single_token_bytes`; a byte-level BPE
  such as tiktoken's splits the text losslessly, so a document's tokens hold exactly the bytes of
  its text); EOD and other special tokens are not text and have 0 bytes. This is the definition of
  the manifest's `text_bytes` (UTF-8 bytes of the documents' texts, EOD counted as a token).

Two ways, in this order (`resolve`):
1. exact: a (V,) table of bytes per token id from the tokenizer that packed $.data.val (the one
   its `.pbin.json` manifest names, or $.metrics.bpb_tokenizer for a .pbin without a manifest).
   Evaluation sums the bytes of exactly the targets it sums the loss of (train/evaluate.py), so
   bpb = sum of losses in bits / sum of bytes over the same tokens. Checked here once over every
   val token: the table's total must equal each manifest's `text_bytes`.
2. corpus ratio: only the manifests' totals are usable (the tokenizer cannot be loaded here, or
   does not reproduce `text_bytes`): bpb = val loss / ln 2 * (tokens / text_bytes) summed over the
   val files. The evaluated targets are all val tokens but the first of each file and a tail of
   fewer than sequence_length + 1 (more with training.eval_batches), so this is the whole corpus's
   average bytes per token applied to the evaluated ones.
Without either (no manifest, no $.metrics.bpb_tokenizer), val/bpb is not logged and one line says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfkit.data.manifests import read_data_manifests
from perfkit.data.windows import WindowDataset
from perfkit.errors import UserError
from perfkit.formats.pbin_manifest import PbinManifest
from perfkit.prep.tokenizer import TokenizerError, TokenizerSpec, load_ranks, resolve_tokenizer

_CHUNK = 1 << 24  # tokens per numpy gather when counting the val files' bytes (128 MiB of int64)


@dataclass(frozen=True)
class ValBytes:
    """How val/bpb is computed: `token_bytes` (exact) or `tokens_per_byte` (corpus ratio)."""

    token_bytes: np.ndarray | None      # (V,) int64 UTF-8 bytes per token id, None for the ratio
    tokens_per_byte: float | None       # val tokens / val text bytes from the manifests
    description: str                    # the start line: where the bytes come from

    def bits_per_byte(self, result) -> float | None:
        """val/bpb of one validation pass (train/evaluate.py's EvalResult: mean loss in nats per
        target token, target tokens, and in exact mode the bytes of those targets)."""
        if self.token_bytes is not None:
            return result.bits_per_byte  # sum of losses in bits / sum of bytes, same tokens
        return result.loss / math.log(2) * self.tokens_per_byte


def token_byte_lengths(encoding, size: int) -> np.ndarray:
    """(size,) int64: UTF-8 bytes of each token id of a tiktoken Encoding; 0 for special tokens,
    for ids the vocabulary skips and for ids >= its n_vocab (a model vocabulary padded beyond it)."""
    out = np.zeros(max(size, encoding.n_vocab), dtype=np.int64)
    special = {encoding.encode_single_token(t) for t in encoding.special_tokens_set}
    for i in range(encoding.n_vocab):  # once per run, before training: ~0.1 s for 200k ids
        if i in special:
            continue
        try:
            out[i] = len(encoding.decode_single_token_bytes(i))
        except KeyError:
            pass  # a gap in the ranks (e.g. cl100k_base below its special tokens)
    return out


def byte_table(name: str, size: int) -> tuple[np.ndarray, int]:
    """(the (>= size,) bytes-per-token table of tokenizer `name`, the ids it defines). A local
    .tiktoken file that tiktoken cannot build without a split pattern still has its ranks, which
    is all bytes per token need; its special tokens (not in the file) are ids past the ranks, 0 bytes,
    so every id below the table's length is accepted."""
    try:
        encoding = resolve_tokenizer(TokenizerSpec(name=name)).encoding
    except TokenizerError:
        if not Path(name).is_file():
            raise
        ranks, _ = load_ranks(Path(name))
        table = np.zeros(max(size, max(ranks.values()) + 1), dtype=np.int64)
        for token, rank in ranks.items():  # once per run, before training
            table[rank] = len(token)
        return table, len(table)
    return token_byte_lengths(encoding, size), encoding.n_vocab


def counted_bytes(dataset: WindowDataset, table: np.ndarray, n_vocab: int, name: str, key: str) -> list[int]:
    """Bytes of every token of each val file by the table (one vectorized gather per chunk); an id
    the tokenizer does not have (>= n_vocab) means the file was packed with another one."""
    out = []
    for f in dataset.files:
        total = 0
        for start in range(0, f.num_tokens, _CHUNK):
            chunk = np.asarray(f.tokens[start:start + _CHUNK], dtype=np.int64)
            if chunk.size and int(chunk.max()) >= n_vocab:
                raise UserError(f"{key}: {f.path} holds token id {int(chunk.max())}, beyond the {n_vocab:,} ids of "
                                f"tokenizer {name!r}; is it the tokenizer that packed the file?")
            total += int(table[chunk].sum())
        out.append(total)
    return out


def resolve(dataset: WindowDataset | None, bpb_tokenizer: str, vocab_size: int) -> tuple[ValBytes | None, str]:
    """(how val/bpb is computed or None, the start line). Raises UserError (exit 2) for val files
    packed with different tokenizers and a $.metrics.bpb_tokenizer that cannot be loaded or does not
    match a manifest. A damaged or stale manifest counts as none (setup.check_data warned about it)."""
    if dataset is None:
        return None, ""
    files = [f.path for f in dataset.files]
    found = read_data_manifests({"$.data.val": files}, warn=lambda message: None)
    manifests: list[PbinManifest | None] = [found.get(f"$.data.val[{i}]") for i in range(len(files))]
    described = [m for m in manifests if m is not None]
    identities = {m.tokenizer.identity(): m.tokenizer for m in described}
    explicit = bpb_tokenizer.strip()
    if len(identities) > 1 and not explicit:
        names = "; ".join(t.describe() for t in identities.values())
        raise UserError(f"$.data.val: the files were packed with different tokenizers ({names}); bits per byte "
                        f"needs one")
    recorded = next(iter(identities.values())) if identities else None
    name = explicit or (recorded.file or recorded.name if recorded else "")  # a local file: its absolute path
    key = "$.metrics.bpb_tokenizer" if explicit else "$.data.val"
    if not name:
        missing = files[manifests.index(None)]
        return None, (f"val/bpb not logged: {missing} has no usable .pbin.json manifest and $.metrics.bpb_tokenizer is not "
                      f"set (name the tokenizer that packed $.data.val there)")

    ratio = _ratio(described) if len(described) == len(files) else None
    try:
        table, n_vocab = byte_table(name, vocab_size)
    except TokenizerError as e:
        if explicit:
            raise UserError(f"{key}: tokenizer {name!r} for bits per byte cannot be loaded: {e}") from None
        if ratio is None:
            return None, f"val/bpb not logged: the manifests' tokenizer {name!r} cannot be loaded: {e}"
        return ratio, f"val/bpb from the manifests' bytes per token ({ratio.description}); {e}"
    counted = counted_bytes(dataset, table, n_vocab, name, key)
    for path, m, n in zip(files, manifests, counted):
        if m is not None and n != m.text_bytes:
            what = f"tokenizer {name!r} gives {path} {n:,} text bytes, its manifest records {m.text_bytes:,}"
            if explicit:
                raise UserError(f"{key}: {what}; is it the tokenizer that packed the file?")
            if ratio is None:
                return None, f"val/bpb not logged: {what}"
            return ratio, f"val/bpb from the manifests' bytes per token ({ratio.description}): {what}"
    tokens = sum(f.num_tokens for f in dataset.files)
    per_token = sum(counted) / tokens if tokens else float("nan")
    return (ValBytes(token_bytes=table, tokens_per_byte=None, description=name),
            f"val/bpb from the UTF-8 bytes of each evaluated target token, tokenizer {name} "
            f"(val files: {per_token:.3f} bytes per token)")


def _ratio(manifests: list[PbinManifest]) -> ValBytes | None:
    tokens = sum(m.tokens for m in manifests)
    text = sum(m.text_bytes for m in manifests)
    if not tokens or not text:
        return None
    return ValBytes(token_bytes=None, tokens_per_byte=tokens / text,
                    description=f"{text / tokens:.3f} bytes per token over {tokens:,} tokens")
