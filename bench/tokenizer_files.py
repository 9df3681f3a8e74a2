"""Hugging Face tokenizer files for the pack benchmarks, made offline from what perfkit already has.

- `gpt2_tokenizer_json(dst)`: GPT-2's tokenizer.json (byte-level BPE, 50,257 ids) from tiktoken's
  cached r50k_base ranks: vocab.json + merges.txt (bench/modalities_compare.py derives them), loaded
  by the tokenizers library with the ByteLevel pre-tokenizer, post-processor and decoder, and
  `<|endoftext|>` as a special added token, then saved. Its ids equal tiktoken's r50k_base.
- `metaspace_tokenizer_json(corpus, dst, vocab_size)`: a SentencePiece-style BPE (Metaspace,
  byte fallback, `<s>` before every document, as Llama 2 / Mistral) trained on the corpus's texts.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from perfkit.bench.modalities_compare import load_ranks, r50k_ranks_path, write_hf_gpt2_folder


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
    tok.decoder = decoders.Metaspace()
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return dst
