"""The tokenizer files of a Hugging Face export folder (tokenizer.json + tokenizer_config.json).

Where the tokenizer comes from (`tokenizer_source`): `--tokenizer` when given, else the .pbin
manifest of the run's first `data.train` file (formats/pbin_manifest.py). What is written
(`write_tokenizer_files`) depends on the tokenizer's kind:

- "hf": its tokenizer.json is copied, with tokenizer_config.json / special_tokens_map.json when
  they lie beside it (else a tokenizer_config.json is written).
- "tiktoken": an equivalent byte-level BPE tokenizer.json is built here (`tiktoken_to_hf_json`):
  the vocabulary is the ranks with every byte mapped through GPT-2's byte -> printable-character
  table, each token of two or more bytes gets one merge per split into two vocabulary tokens
  (priority = the token's rank: tiktoken merges the adjacent pair whose concatenation has the
  lowest rank), `ignore_merges` takes a whole pre-token found in the vocabulary directly (as
  tiktoken does), the split regex is a Split pre-tokenizer before a regex-free ByteLevel, and the
  special tokens are added tokens with their ids. The result is loaded back with the `tokenizers`
  library and checked against tiktoken on a sample before anything is written.
- "sentencepiece": refused (LlamaTokenizer needs the sentencepiece package to read a .model;
  convert it to a tokenizer.json and pass that with --tokenizer).

One difference stays: tiktoken's `encode_ordinary` (what `perfkit pack` uses) reads a special
token's text inside a document as text; a Hugging Face tokenizer maps it to the special id.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import tiktoken
from tokenizers import Tokenizer as HFTokenizer

from perfkit.errors import UserError
from perfkit.formats.pbin_manifest import TokenizerRecord, read_manifest
from perfkit.prep.tokenizer import TokenizerError, TokenizerSpec, resolve_tokenizer
from perfkit.prep.tokenizer_convert import byte_to_unicode

# text the converted tokenizer must encode exactly as tiktoken does before it is written
_CHECK_TEXT = ("Hello, world! It's 2024: 3.14159 and 1,000,000 tokens.\n\n\tTabs  and   spaces   \n"
               "Ünïcödé — 東京 👍🏽 naïve café ’quotes’ I'll we've\r\n    indented code() { return x; }  ")


@dataclass(frozen=True)
class TokenizerSource:
    """Which tokenizer to export and how it was found (for the summary line)."""

    kind: str              # "tiktoken" | "hf" | "sentencepiece"
    name: str              # tiktoken encoding name or a file path
    file: str | None       # tokenizer.json / .model / .tiktoken path, None for a built-in name
    eod_id: int | None     # the end-of-document token (from the manifest; None: find it by name)
    bos_id: int | None
    origin: str            # "--tokenizer" or the manifest's path


def oniguruma_pattern(pattern: str) -> str:
    r"""tiktoken's split regex for the tokenizers library's engine (Oniguruma). cl100k's
    `\p{N}{1,3}+` is possessive in tiktoken's engine, but Oniguruma reads `{n,m}+` as a repeat of
    the repeat (`\p{N}+`: "1000000" stays one piece). A bounded repeat that ends its alternative
    matches the same greedy as possessive, so the `+` is dropped; the check in
    write_tokenizer_files catches any pattern where that would not hold."""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def tiktoken_to_hf_json(encoding: tiktoken.Encoding) -> dict:
    """tokenizer.json (as a dict) that encodes like `encoding.encode_ordinary`."""
    ranks: dict[bytes, int] = getattr(encoding, "_mergeable_ranks", None)
    pattern: str = getattr(encoding, "_pat_str", None)
    specials: dict[str, int] = getattr(encoding, "_special_tokens", None)
    if ranks is None or pattern is None or specials is None:
        raise UserError(f"this tiktoken version does not expose the ranks of {encoding.name}; "
                        "pass a tokenizer.json with --tokenizer")
    to_char = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = []  # (priority, left rank, right rank, left, right)
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = ranks.get(tok[:i]), ranks.get(tok[i:])
            if left is not None and right is not None:
                merges.append((rank, left, right, text(tok[:i]), text(tok[i:])))
    merges.sort()
    vocab.update(specials)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(specials.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": oniguruma_pattern(pattern)}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab, "merges": [[a, b] for *_, a, b in merges]},
    }


def tokenizer_source(tokenizer_arg: str | None, run_config: dict | None) -> TokenizerSource:
    """--tokenizer when given, else the manifest of the run's first train file; UserError when
    neither names a tokenizer."""
    if tokenizer_arg:
        return _from_argument(tokenizer_arg)
    train = ((run_config or {}).get("data") or {}).get("train") or []
    if not train:
        raise UserError("the checkpoint's config.json names no data.train file whose .pbin manifest "
                        "would say the tokenizer; pass --tokenizer (gpt2, a tiktoken name, a .tiktoken "
                        "file or a tokenizer.json)")
    if not Path(train[0]).exists():  # a relative path is relative to where the run was started
        raise UserError(f"{train[0]} (the run's first data.train file, whose .pbin.json manifest says the "
                        f"tokenizer) is not found from {Path.cwd()}; run the export from the folder the "
                        "run started in, or pass --tokenizer")
    manifest = read_manifest(train[0])  # ManifestError (a UserError) when unreadable or stale
    if manifest is None:
        raise UserError(f"{train[0]} (the run's first data.train file) has no .pbin.json manifest that "
                        "would say its tokenizer; pass --tokenizer")
    return _from_record(manifest.tokenizer, origin=f"{train[0]}.json")


def _from_record(record: TokenizerRecord, origin: str) -> TokenizerSource:
    return TokenizerSource(record.kind, record.name, record.file, record.eod_id, record.bos_id, origin)


def _from_argument(arg: str) -> TokenizerSource:
    p = Path(arg)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if p.name.endswith(".json"):
        if not p.is_file():
            raise UserError(f"--tokenizer {arg}: no such file")
        return TokenizerSource("hf", arg, str(p), None, None, "--tokenizer")
    if p.suffix == ".model":
        return TokenizerSource("sentencepiece", arg, str(p), None, None, "--tokenizer")
    return TokenizerSource("tiktoken", arg, str(p) if p.is_file() else None, None, None, "--tokenizer")


def write_tokenizer_files(source: TokenizerSource, folder: Path, model_max_length: int) -> dict:
    """Write tokenizer.json + tokenizer_config.json into `folder`; returns {"vocab_size", "eod_id",
    "eod_token", "bos_id"} of the tokenizer written (config.json and generation_config.json use it)."""
    if source.kind == "sentencepiece":
        raise UserError(f"tokenizer {source.name} is a SentencePiece model, which this export cannot "
                        "write loadably; convert it to a tokenizer.json and pass --tokenizer PATH/tokenizer.json")
    if source.kind == "hf":
        return _copy_hf(source, folder, model_max_length)
    if source.kind != "tiktoken":
        raise UserError(f"tokenizer kind {source.kind!r} (from {source.origin}) is not one this export knows")
    try:
        encoding = resolve_tokenizer(TokenizerSpec(source.file or source.name)).encoding
    except TokenizerError as e:  # its advice names pack's flags: say where the name came from instead
        raise UserError(f"tokenizer {source.name} (from {source.origin}): {e}; or pass --tokenizer with a "
                        "tiktoken name or a tokenizer.json") from None
    converted = tiktoken_to_hf_json(encoding)
    hf = HFTokenizer.from_str(json.dumps(converted))
    want, got = encoding.encode_ordinary(_CHECK_TEXT), hf.encode(_CHECK_TEXT, add_special_tokens=False).ids
    if want != got:  # a split pattern that the tokenizers library reads otherwise: refuse, write nothing
        raise UserError(f"tokenizer {source.name}: the converted tokenizer.json encodes a check text "
                        f"differently from tiktoken (first ids {got[:8]} vs {want[:8]}); pass a tokenizer.json")
    eod_id = source.eod_id
    if eod_id is None:  # from --tokenizer: tiktoken's end-of-text token, when the encoding has one
        eod_id = encoding._special_tokens.get("<|endoftext|>")
    eod = None if eod_id is None else encoding.decode_single_token_bytes(eod_id).decode("utf-8", "replace")
    (folder / "tokenizer.json").write_text(json.dumps(converted, ensure_ascii=False))
    _write_config(folder, eod, None, model_max_length)
    return {"vocab_size": encoding.n_vocab, "eod_id": eod_id, "eod_token": eod, "bos_id": source.bos_id}


def _copy_hf(source: TokenizerSource, folder: Path, model_max_length: int) -> dict:
    src = Path(source.file or source.name)
    try:
        hf = HFTokenizer.from_file(str(src))
    except Exception as e:  # the tokenizers library's message names what it could not parse
        raise UserError(f"tokenizer {src}: not a readable tokenizer.json: {e}") from None
    shutil.copyfile(src, folder / "tokenizer.json")
    beside = [n for n in ("tokenizer_config.json", "special_tokens_map.json") if (src.parent / n).is_file()]
    for name in beside:
        shutil.copyfile(src.parent / name, folder / name)
    eod_id = source.eod_id
    if eod_id is None:  # from --tokenizer: the tokenizer's own end-of-text token, when it has one
        eod_id = next((hf.token_to_id(t) for t in ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
                       if hf.token_to_id(t) is not None), None)
    eod = hf.id_to_token(eod_id) if eod_id is not None else None
    if "tokenizer_config.json" not in beside:
        _write_config(folder, eod, hf.id_to_token(source.bos_id) if source.bos_id is not None else None,
                      model_max_length)
    return {"vocab_size": hf.get_vocab_size(with_added_tokens=True), "eod_id": eod_id, "eod_token": eod,
            "bos_id": source.bos_id}


def _write_config(folder: Path, eos: str | None, bos: str | None, model_max_length: int) -> None:
    """tokenizer_config.json for PreTrainedTokenizerFast (transformers 4 and 5 read it)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False}
    if eos is not None:
        config["eos_token"] = eos
    if bos is not None:
        config["bos_token"] = bos
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
