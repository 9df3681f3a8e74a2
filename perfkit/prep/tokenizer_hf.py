"""A Hugging Face tokenizer (a folder holding tokenizer.json, or the file) for pack and inspect.

Per document the ids are what Modalities' `pretrained_hf_tokenizer` writes: the tokenizer's own
encoding with its default special-token handling (added tokens found in the text, the
post-processor's BOS/EOS around every document), never truncated or padded. Given a folder, the
post-processor is the one transformers builds from tokenizer_config.json for the classes that
rebuild it (prep/tokenizer_hf_config.py: add_bos_token / add_eos_token of Llama, Gemma, ...).

Two routes to those ids:
- "tiktoken": byte-level BPE (GPT-2, Llama 3, Qwen 2) converted to tiktoken ranks
  (prep/tokenizer_convert.py) and verified here against the tokenizers library: every vocabulary
  entry, edge strings (whitespace runs, CRLF, digits, contractions, non-Latin text, every added
  token inside a text) and, in `perfkit pack`, a sample of the corpus (`check_sample`). The first
  difference switches to the library with a one-line note (`note`).
- "library": everything else (Metaspace / SentencePiece-style BPE, Unigram, WordPiece, or a
  conversion that did not verify) runs through the tokenizers library's `encode_batch_fast`.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tiktoken
from tokenizers import Tokenizer as LibraryTokenizer

from perfkit.formats.pbin import token_width_for_vocab
from perfkit.formats.pbin_manifest import TokenizerRecord
from perfkit.prep.tokenizer_base import TokenizerError, TokenizerSpec, concat_ids
from perfkit.prep.tokenizer_convert import Conversion, NotConvertible, convert_byte_level
from perfkit.prep.tokenizer_hf_config import apply_template_flags

EDGE_TEXTS = ["", " ", "a", "  leading and trailing  ", "a  \n\n   b\t\t c   \n", "line\r\nbreak\r\n",
              "I'll say it's 'S'hakespeare's, we'VE", "12345 3.14159 x2 1,000,000", "naïve café — «ok» ½",
              "日本語のテキスト 한국어 текст العربية 🙂👍🏽", "\u0301e\u0301 Å Å ﬁ", "!!!???...,,,;;; ---", "\n\n\n"]


def find_tokenizer_json(name: str) -> Path:
    path = Path(name)
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{name}: no tokenizer.json in this folder (perfkit reads a Hugging Face "
                                 "tokenizer folder's tokenizer.json; vocab.json + merges.txt or a "
                                 "SentencePiece tokenizer.model alone are not read: pass the .model file)")
    return path


@dataclass
class FastRoute:
    """The verified tiktoken conversion of a byte-level BPE tokenizer.json."""

    encoding: object            # tiktoken.Encoding
    allowed: frozenset          # added-token texts, recognised in the text like the library does
    forms: tuple[str, ...]      # unicodedata normalization forms (the tokenizer's normalizer)
    prefix: np.ndarray          # (p,) uint32: the post-processor's ids before every document
    suffix: np.ndarray          # (s,) uint32: ... and after it

    def encode_one(self, text: str) -> np.ndarray:
        for form in self.forms:
            if not unicodedata.is_normalized(form, text):
                text = unicodedata.normalize(form, text)
        return self.encoding.encode_to_numpy(text, allowed_special=self.allowed, disallowed_special=())

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not (self.prefix.size or self.suffix.size):
            return concat_ids([self.encode_one(t) for t in texts])  # one Rust call per document
        parts = []
        for t in texts:
            parts += (self.prefix, self.encode_one(t), self.suffix)
        ids, _ = concat_ids(parts)
        lengths = np.fromiter(map(len, parts[1::3]), dtype=np.int64, count=len(texts))
        return ids, lengths + (self.prefix.size + self.suffix.size)


def _wrapping(library: LibraryTokenizer) -> tuple[np.ndarray, np.ndarray] | NotConvertible:
    """(prefix, suffix) ids the post-processor puts around a document, found by encoding probes
    with and without special tokens (covers TemplateProcessing, Roberta, Bert, ByteLevel, Sequence)."""
    found = set()
    for probe in ("a", "b c", "Hello world"):
        bare = library.encode(probe, add_special_tokens=False).ids
        full = library.encode(probe, add_special_tokens=True).ids
        at = [k for k in range(len(full) - len(bare) + 1) if full[k:k + len(bare)] == bare]
        if len(at) != 1:
            return NotConvertible("the post-processor does more than put fixed ids around a document")
        k = at[0]
        found.add((tuple(full[:k]), tuple(full[k + len(bare):])))
    if len(found) != 1:
        return NotConvertible("the post-processor's ids depend on the text")
    prefix, suffix = found.pop()
    return np.array(prefix, np.uint32), np.array(suffix, np.uint32)


@dataclass
class HFTokenizer:
    spec: TokenizerSpec
    path: Path                  # the tokenizer.json
    sha256: str
    library: LibraryTokenizer   # truncation and padding off
    fast: FastRoute | None
    prefix: np.ndarray          # the post-processor's ids before every document (BOS), for the record
    n_vocab: int                # every id it can produce + 1, added tokens included
    note: str | None = None     # one line for the user when a byte-level conversion fell back
    kind = "hf"
    eod_unless_last = True      # Modalities appends EOD only when the encoding does not end with it

    @property
    def label(self) -> str:
        route = "tiktoken conversion" if self.fast else "tokenizers library"
        return f"{self.spec.name} (hf, {route})"

    @property
    def token_width(self) -> int:
        return token_width_for_vocab(self.n_vocab)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.fast is not None:
            return self.fast.encode_batch(texts)
        return self.library_encode_batch(texts)

    def library_encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.library.encode_batch_fast(texts, add_special_tokens=True)
        return concat_ids([e.ids for e in encodings])

    def worker_encoder(self):
        """encode_batch for a pack worker: one thread, since pack runs one worker per CPU (the
        library reads TOKENIZERS_PARALLELISM at each batch call)."""
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        return self.encode_batch

    def decode(self, ids: list[int]) -> str:
        return self.library.decode(ids, skip_special_tokens=False)

    def token_id(self, text: str) -> int:
        idx = self.library.token_to_id(text)
        if idx is None:
            specials = [t.content for t in self.library.get_added_tokens_decoder().values() if t.special][:6]
            hint = f" (its special tokens include {', '.join(map(repr, specials))})" if specials else ""
            raise TokenizerError(f"EOD token {text!r} (--eod-token / settings.eod_token) is not in the "
                                 f"vocabulary of {self.path}{hint}")
        return idx

    def record(self, eod_id: int) -> TokenizerRecord:
        return TokenizerRecord(kind="hf", name=self.spec.name, vocab_size=self.n_vocab, eod_id=eod_id,
                               eod_token=self.library.id_to_token(eod_id) or "", file=str(self.path.resolve()),
                               sha256=self.sha256, bos_id=int(self.prefix[0]) if self.prefix.size else None)

    def check_sample(self, texts: list[str]) -> HFTokenizer:
        """The tiktoken route must give the library's ids on these texts (a corpus sample); on the
        first difference switch to the library and say so in `note`."""
        if self.fast is None:
            return self
        problem = _first_difference(self.fast, self.library, texts, "corpus document")
        return self._fall_back(problem) if problem else self

    def _fall_back(self, reason: str) -> HFTokenizer:
        note = (f"{self.path}: the tiktoken conversion of this byte-level BPE differs from the tokenizers "
                f"library ({reason}); encoding with the library instead (exact, slower)")
        return replace(self, fast=None, spec=replace(self.spec, backend="library"), note=note)


def _first_difference(fast: FastRoute, library: LibraryTokenizer, texts: list[str], what: str) -> str | None:
    for i, text in enumerate(texts):
        want = library.encode(text, add_special_tokens=True).ids
        got = fast.encode_batch([text])[0].tolist()
        if got != want:
            at = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return (f"{what} {i} {text[:40]!r}: token {at} is {want[at:at + 4]} in the library, "
                    f"{got[at:at + 4]} in tiktoken")
    return None


def _vocabulary_difference(conv: Conversion, vocab: dict[str, int], library: LibraryTokenizer) -> str | None:
    """Every mergeable token, BPE'd alone by the library's model, must be that one token.
    vocab: model.vocab of the file (token in the byte-level alphabet -> id)."""
    mergeable = set(conv.ranks.values())
    items = sorted(((piece, idx) for piece, idx in vocab.items() if idx in mergeable), key=lambda kv: kv[1])
    pieces = [piece for piece, _ in items]
    bare = LibraryTokenizer(library.model)  # the model alone: no normalizer, pre-tokenizer, added tokens
    enc = bare.encode(pieces, is_pretokenized=True, add_special_tokens=False)
    want = [idx for _, idx in items]
    if enc.ids == want:
        return None
    for t, (got, word) in enumerate(zip(enc.ids, enc.word_ids)):
        if word != t or got != want[t]:  # the first token out of step names the entry
            w = t if word is None else word
            return f"vocabulary entry {pieces[w]!r} (id {want[w]}) is not one token in the library"
    return "the library's model makes fewer tokens than vocabulary entries"


def _read(path: Path) -> tuple[bytes, dict]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the tokenizer: {e.strerror or e}") from None
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not a tokenizer.json (not UTF-8 text: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{path}: not a tokenizer.json (no \"model\" object at the top level)")
    return raw, data


def _is_byte_level(data: dict) -> bool:
    return data["model"].get("type") == "BPE" and '"ByteLevel"' in json.dumps(data.get("pre_tokenizer"))


def load_hf_tokenizer(spec: TokenizerSpec) -> HFTokenizer:
    path = find_tokenizer_json(spec.name)
    raw, data = _read(path)
    try:
        library = LibraryTokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # the library's own message says what is wrong in the file
        raise TokenizerError(f"{path}: the tokenizers library cannot load it: {e}") from None
    library.no_truncation()  # Modalities (transformers) turns both off for truncation=false, padding=false
    library.no_padding()
    if Path(spec.name).is_dir():  # a folder, as Modalities reads it: tokenizer_config.json may matter
        apply_template_flags(path.parent, library)
    n_vocab = max(library.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    wrapping = _wrapping(library)
    prefix = wrapping[0] if not isinstance(wrapping, NotConvertible) else np.zeros(0, np.uint32)
    tok = HFTokenizer(replace(spec, backend="library"), path, hashlib.sha256(raw).hexdigest(), library,
                      None, prefix, n_vocab)
    if spec.backend == "library" or not _is_byte_level(data):
        return tok
    conv = convert_byte_level(data)
    problem = conv.reason if isinstance(conv, NotConvertible) else None
    if problem is None and isinstance(wrapping, NotConvertible):
        problem = wrapping.reason
    if problem is None:
        try:
            encoding = tiktoken.Encoding(name=path.parent.name or "tokenizer.json", pat_str=conv.pattern,
                                         mergeable_ranks=conv.ranks, special_tokens=conv.specials)
        except Exception as e:  # e.g. a split regex tiktoken's regex engine does not accept
            problem = f"tiktoken cannot build it: {e}"
    if problem is None:
        fast = FastRoute(encoding, frozenset(conv.specials), conv.forms, *wrapping)
        if spec.backend != "tiktoken":  # verified once, by the process that resolves it first
            problem = _vocabulary_difference(conv, data["model"]["vocab"], library) or _first_difference(
                fast, library, EDGE_TEXTS + [f"x{s} y {s}{s}\n{s}" for s in conv.specials], "edge string")
        if problem is None:
            return replace(tok, fast=fast, spec=replace(spec, backend="tiktoken"))
    return tok._fall_back(problem)
