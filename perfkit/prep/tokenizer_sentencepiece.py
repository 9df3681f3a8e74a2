"""A SentencePiece `.model` for pack and inspect (what Modalities' `pretrained_sp_tokenizer` wraps).

Per document: sentencepiece's own `encode(text)` (no BOS/EOS: the processor's defaults), then the
EOD token. A text that encodes to nothing (empty or whitespace only) is an EOD-only document;
Modalities 0.5.0 raises on it and silently drops every later document of the file.

sentencepiece is an optional dependency (`pip install 'perfkit[sentencepiece]'`): it is imported
inside `load_sentencepiece`, so every other tokenizer works without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perfkit.formats.pbin import token_width_for_vocab
from perfkit.formats.pbin_manifest import TokenizerRecord
from perfkit.prep.tokenizer_base import TokenizerError, TokenizerSpec, concat_ids

INSTALL_HINT = "pip install 'perfkit[sentencepiece]' (or pip install sentencepiece)"


@dataclass
class SentencePieceTokenizer:
    spec: TokenizerSpec
    path: Path
    sha256: str
    processor: object          # sentencepiece.SentencePieceProcessor
    threads: int = -1          # encode's num_threads: -1 = sentencepiece's default
    kind = "sentencepiece"
    eod_unless_last = True     # Modalities' rule (a user-defined EOD piece can end a text)
    note = None

    @property
    def label(self) -> str:
        return f"{self.spec.name} (sentencepiece)"

    @property
    def n_vocab(self) -> int:
        return self.processor.get_piece_size()  # ids are 0 .. piece_size - 1

    @property
    def token_width(self) -> int:
        return token_width_for_vocab(self.n_vocab)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return concat_ids(self.processor.encode(texts, out_type=int, num_threads=self.threads))

    def worker_encoder(self):
        """encode_batch for a pack worker: one thread, since pack runs one worker per CPU."""
        self.threads = 1
        return self.encode_batch

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    def token_id(self, text: str) -> int:
        idx = self.processor.piece_to_id(text)
        if idx == self.processor.unk_id() and text != self.processor.id_to_piece(idx):
            raise TokenizerError(f"EOD token {text!r} (--eod-token / settings.eod_token) is not a piece of "
                                 f"{self.path} (its EOS piece is {self._eos()!r})")
        return idx

    def _eos(self) -> str | None:
        eos = self.processor.eos_id()
        return self.processor.id_to_piece(eos) if eos >= 0 else None

    def record(self, eod_id: int) -> TokenizerRecord:
        return TokenizerRecord(kind="sentencepiece", name=self.spec.name, vocab_size=self.n_vocab, eod_id=eod_id,
                               eod_token=self.processor.id_to_piece(eod_id), file=str(self.path.resolve()),
                               sha256=self.sha256)


def load_sentencepiece(spec: TokenizerSpec) -> SentencePieceTokenizer:
    path = Path(spec.name)
    try:
        import sentencepiece  # optional dependency: only .model tokenizers need it
    except ImportError:
        raise TokenizerError(f"{path}: reading a SentencePiece .model needs the sentencepiece package: "
                             f"{INSTALL_HINT}") from None
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the tokenizer: {e.strerror or e}") from None
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=raw)
    except Exception as e:  # RuntimeError / OSError with sentencepiece's own parse message
        raise TokenizerError(f"{path}: not a SentencePiece model ({str(e).strip() or type(e).__name__})") from None
    return SentencePieceTokenizer(spec, path, hashlib.sha256(raw).hexdigest(), processor)
