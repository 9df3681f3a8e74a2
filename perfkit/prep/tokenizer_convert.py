"""A byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen 2 families) as tiktoken ranks.

`convert_byte_level(data)` reads the parsed tokenizer.json and returns a `Conversion` (split
pattern, mergeable ranks, special tokens, Unicode normalization forms) or a `NotConvertible`
naming the first thing tiktoken cannot reproduce. Only the parts of the file that decide the ids
are read; prep/tokenizer_hf.py then verifies the result against the tokenizers library (every
vocabulary entry, edge strings and a corpus sample) before using it.

Facts of the format this relies on:
- model.vocab keys are the token's bytes written in GPT-2's byte-to-unicode alphabet (printable
  latin-1 bytes stand for themselves, the other 68 bytes are chr(256 + k) in byte order);
- model.merges ("a b" strings or [a, b] pairs) in priority order; tiktoken merges by the rank of
  the merged token instead, so the two agree when rank = id and the merge results' ids do not
  decrease with merge priority; tiktoken also looks a whole piece up first, as `ignore_merges` does, which
  the vocabulary check makes harmless when `ignore_merges` is false;
- pre_tokenizer ByteLevel(use_regex=true) splits with GPT-2's regex (BYTE_LEVEL_REGEX below);
  Sequence[Split(Regex R, Isolated), ByteLevel(use_regex=false)] (Llama 3, Qwen 2) splits with R;
- added tokens are found in the raw text before anything else (special or not), leftmost-longest.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# The split regex of the tokenizers library's ByteLevel pre-tokenizer (GPT-2's pattern).
BYTE_LEVEL_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


@dataclass(frozen=True)
class Conversion:
    pattern: str                          # tiktoken pat_str
    ranks: dict[bytes, int]               # token bytes -> id (= rank), added tokens excluded
    specials: dict[str, int]              # added-token text -> id (recognised in the text)
    forms: tuple[str, ...]                # unicodedata.normalize forms, applied in order


@dataclass(frozen=True)
class NotConvertible:
    reason: str


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: byte -> the character that stands for it in vocab and merges."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pattern(pre: dict | None) -> str | NotConvertible:
    if pre is None:
        return NotConvertible("no pre-tokenizer (not byte-level)")
    kind = pre.get("type")
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            return NotConvertible("ByteLevel add_prefix_space=true")
        if not pre.get("use_regex", True):
            return NotConvertible("ByteLevel without a split regex")
        return BYTE_LEVEL_REGEX
    if kind == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"):
            split, byte_level = steps
            regex = (split.get("pattern") or {}).get("Regex")
            if regex is None:
                return NotConvertible("Split by a plain string, not a regex")
            if split.get("behavior") != "Isolated" or split.get("invert"):
                return NotConvertible(f"Split behavior {split.get('behavior')} (invert {split.get('invert')})")
            if byte_level.get("add_prefix_space") or byte_level.get("use_regex", True):
                return NotConvertible("ByteLevel after Split must have add_prefix_space=false, use_regex=false")
            return regex
        return NotConvertible(f"pre-tokenizer Sequence of {[s.get('type') for s in steps]}")
    return NotConvertible(f"pre-tokenizer {kind}")


def _forms(norm: dict | None) -> tuple[str, ...] | NotConvertible:
    if norm is None:
        return ()
    if norm.get("type") in UNICODE_FORMS:
        return (norm["type"],)
    if norm.get("type") == "Sequence":
        out: list[str] = []
        for step in norm.get("normalizers") or []:
            inner = _forms(step)
            if isinstance(inner, NotConvertible):
                return inner
            out.extend(inner)
        return tuple(out)
    return NotConvertible(f"normalizer {norm.get('type')}")


def _merge_pairs(merges: list) -> list[tuple[str, str]] | NotConvertible:
    pairs = []
    for m in merges:
        if isinstance(m, str):
            a, sep, b = m.partition(" ")
        elif isinstance(m, list) and len(m) == 2:
            (a, b), sep = m, " "
        else:
            return NotConvertible(f"merge {m!r} is neither 'a b' nor [a, b]")
        if not sep or not a or not b:
            return NotConvertible(f"merge {m!r} is neither 'a b' nor [a, b]")
        pairs.append((a, b))
    return pairs


def convert_byte_level(data: dict) -> Conversion | NotConvertible:
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        return NotConvertible(f"model {model.get('type')} (not BPE)")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            return NotConvertible(f"BPE {key}={model[key]!r}")
    if model.get("byte_fallback"):
        return NotConvertible("BPE byte_fallback (SentencePiece-style, not byte-level)")
    pattern = _pattern(data.get("pre_tokenizer"))
    if isinstance(pattern, NotConvertible):
        return pattern
    forms = _forms(data.get("normalizer"))
    if isinstance(forms, NotConvertible):
        return forms

    specials: dict[str, int] = {}
    for tok in data.get("added_tokens") or []:
        content = tok.get("content", "")
        for flag in ("lstrip", "rstrip", "single_word"):
            if tok.get(flag):
                return NotConvertible(f"added token {content!r} has {flag}=true")
        if not content or content in specials:
            return NotConvertible(f"added token {content!r} is empty or listed twice")
        if tok.get("normalized") and any(not unicodedata.is_normalized(f, content) for f in forms):
            return NotConvertible(f"added token {content!r} changes under the normalizer")
        specials[content] = int(tok["id"])
    texts = sorted(specials)
    for shorter, longer in zip(texts, texts[1:]):  # sorted: a prefix sorts right before its extensions
        if longer.startswith(shorter):
            return NotConvertible(f"added token {shorter!r} is a prefix of {longer!r} (tiktoken matches "
                                  "the first, the tokenizers library the longest)")

    u2b = {c: b for b, c in byte_to_unicode().items()}
    added_ids = set(specials.values())
    ranks: dict[bytes, int] = {}
    for piece, idx in (model.get("vocab") or {}).items():
        if idx in added_ids:
            continue  # found in the text as an added token, never by merging
        try:
            ranks[bytes(u2b[c] for c in piece)] = int(idx)
        except KeyError:
            return NotConvertible(f"vocabulary entry {piece!r} is not in the byte-level alphabet")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        return NotConvertible(f"{len(missing)} of the 256 single bytes have no token (first: byte {missing[0]})")

    pairs = _merge_pairs(model.get("merges") or [])
    if isinstance(pairs, NotConvertible):
        return pairs
    vocab = model["vocab"]
    previous, merged = -1, set()
    for a, b in pairs:  # several merges may make one token (Llama 3 lists every pair): non-decreasing
        idx = vocab.get(a + b)
        if idx is None:
            return NotConvertible(f"merge {a!r} + {b!r} makes no vocabulary entry")
        if idx < previous:
            return NotConvertible(f"merge priority disagrees with id order at {a!r} + {b!r} (id {idx})")
        previous = idx
        merged.add(idx)
    unreachable = [i for t, i in ranks.items() if len(t) > 1 and i not in merged]
    if unreachable:
        return NotConvertible(f"{len(unreachable)} multi-byte tokens are made by no merge (first id "
                              f"{unreachable[0]})")
    return Conversion(pattern, ranks, specials, forms)
