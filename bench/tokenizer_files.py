"""Hugging Face tokenizer files for the pack benchmarks, made offline from what perfkit already has.

- `write_hf_gpt2_folder(ranks, dst)`: GPT-2's Hugging Face folder (vocab.json, merges.txt,
  tokenizer_config.json, special_tokens_map.json) from tiktoken's r50k_base ranks alone. Facts used
  (GPT-2's published format): vocab.json maps each token's bytes, written with GPT-2's
  byte-to-unicode alphabet, to its id, plus "<|endoftext|>": 50256; merges.txt lists, in rank order,
  for every token of rank >= 256 the pair of tokens BPE restricted to lower ranks merges into it.
- `gpt2_tokenizer_json(dst)`: the same folder plus its tokenizer.json (byte-level BPE, 50,257 ids):
  vocab.json + merges.txt loaded
  by the tokenizers library with the ByteLevel pre-tokenizer, post-processor and decoder, and
  `<|endoftext|>` as a special added token, then saved. Its ids equal tiktoken's r50k_base.
- `metaspace_tokenizer_json(corpus, dst, vocab_size)`: a SentencePiece-style BPE (Metaspace,
  byte fallback, `<s>` before every document, as Llama 2 / Mistral) trained on the corpus's texts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from perfkit.prep.tokenizer_convert import byte_to_unicode as bytes_to_unicode

EOT, EOT_ID = "<|endoftext|>", 50256


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """A tiktoken ranks file: "base64(token bytes) rank" per line."""
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def bpe_parts(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """Byte-level BPE of `token` using only ranks < `below`: repeatedly merge the adjacent pair whose
    concatenation has the lowest rank (leftmost on ties) until none is left."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = below, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], below)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """For each token of rank >= 256, in rank order, the pair that lower-rank BPE merges into it."""
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    if sorted(len(t) for t, r in by_rank[:256]) != [1] * 256 or [r for _, r in by_rank] != list(range(len(by_rank))):
        raise ValueError("ranks must be 0..n-1 with the 256 single bytes first")
    merges = []
    for token, rank in by_rank[256:]:
        parts = bpe_parts(token, ranks, rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-rank tokens: {parts}")
        merges.append((parts[0], parts[1]))
    return merges


def write_hf_gpt2_folder(ranks: dict[bytes, int], dst: Path) -> Path:
    """vocab.json + merges.txt (+ tokenizer_config.json, special_tokens_map.json) of GPT-2's tokenizer."""
    b2u = bytes_to_unicode()
    show = lambda t: "".join(b2u[b] for b in t)  # noqa: E731
    vocab = {show(t): r for t, r in ranks.items()}
    if EOT_ID in vocab.values():
        raise ValueError(f"rank {EOT_ID} is taken; expected r50k_base (ranks 0..50255)")
    vocab[EOT] = EOT_ID
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{show(a)} {show(b)}" for a, b in derive_merges(ranks)]
    (dst / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (dst / "special_tokens_map.json").write_text(json.dumps(special))
    (dst / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
         "add_bos_token": False, "errors": "replace", **special}))
    return dst


def r50k_ranks_path() -> Path:
    """tiktoken's cached r50k_base file (loads it once so the cache is filled)."""
    tiktoken.get_encoding("r50k_base")
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") \
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    path = Path(cache) / hashlib.sha1(url.encode()).hexdigest()
    if not path.is_file():
        raise FileNotFoundError(f"r50k_base ranks not in tiktoken's cache ({path}); run `perfkit fetch`")
    return path



def gpt2_tokenizer_json(dst: Path) -> Path:
    """A Hugging Face GPT-2 folder in dst (vocab.json, merges.txt, configs and tokenizer.json)."""
    folder = write_hf_gpt2_folder(load_ranks(r50k_ranks_path()), dst)
    tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def metaspace_tokenizer_json(corpus: Path, dst: Path, vocab_size: int = 16000) -> Path:
    texts = [json.loads(line)["text"] for line in corpus.open("rb") if line.strip()]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return dst
