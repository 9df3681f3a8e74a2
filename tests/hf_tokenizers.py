"""Small Hugging Face tokenizers built (trained) inside the tests with the tokenizers library, one per
kind `perfkit pack` meets, and the independent reference: the library's own encode per document.

Each builder writes DIR/tokenizer.json (and a tokenizer_config.json, as a Hugging Face folder has)
and returns DIR. Training on a few hundred short texts takes well under a second.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors, trainers)

# Llama 3's split regex (the same as tiktoken's cl100k_base).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
ALPHABETS = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJ", "0123456789", "     \n\t", ".,;:!?'\"-()",
             "äöüßéèçñ", "日本語中文한국어", "ЖжЩщ", "🙂👍🏽🤖", "\u0301\u00a0\r"]


def random_texts(n: int, seed: int, specials: tuple[str, ...] = ()) -> list[str]:
    """Texts of random words over several scripts (spaces, digits, CRLF, combining marks, emoji),
    with the given special-token texts dropped in now and then."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = []
        for _ in range(int(rng.integers(0, 40))):
            alphabet = ALPHABETS[int(rng.integers(0, len(ALPHABETS)))]
            words.append("".join(rng.choice(list(alphabet), int(rng.integers(1, 8)))))
            if specials and rng.random() < 0.05:
                words.append(str(rng.choice(list(specials))))
        out.append((" " if rng.random() < 0.5 else "").join(words))
    return out


def training_texts() -> list[str]:
    base = ["To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer",
            "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name;",
            "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
            "All the world's a stage, and all the men and women merely players: 1599, 1600, 1601."]
    return base * 20 + random_texts(300, seed=1)


def _save(tok: Tokenizer, folder: Path, cls: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
    return folder


def byte_level_bpe(folder: Path, vocab_size: int = 600) -> Path:
    """GPT-2 style: ByteLevel pre-tokenizer (its regex), <|endoftext|> as a special added token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_texts(), trainer)
    return _save(tok, folder, "GPT2TokenizerFast")


def llama3_style_bpe(folder: Path, split_regex: str = LLAMA3_REGEX) -> Path:
    """Llama 3 / Qwen 2 style: Split(regex) + ByteLevel(use_regex=false), ignore_merges, an NFC
    normalizer (Qwen 2), a BOS post-processor, special and non-special added tokens."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_texts(), trainer)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.add_tokens([AddedToken("<tool>", normalized=False)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return _save(tok, folder, "PreTrainedTokenizerFast")


def metaspace_bpe(folder: Path) -> Path:
    """SentencePiece-style BPE (Llama 2 / Mistral): Metaspace, byte fallback, <s> before every document."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return _save(tok, folder, "LlamaTokenizerFast")


def wordpiece(folder: Path) -> Path:
    """BERT style: BertNormalizer, WordPiece, [CLS] ... [SEP] around every document."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=600, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return _save(tok, folder, "BertTokenizerFast")


def unigram(folder: Path) -> Path:
    """T5 style Unigram with Metaspace and </s> after every document."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return _save(tok, folder, "T5TokenizerFast")


def reference_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    """The library's own ids per text (what Modalities' pretrained_hf_tokenizer gets), untruncated."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return [tok.encode(t).ids for t in texts]


def reference_pbin(docs: list[list[int]], eod: int, width: int) -> bytes:
    """Modalities' layout, EOD appended unless a document already ends with it (its rule)."""
    fmt = {1: "B", 2: "H", 4: "I"}[width]
    data, index = bytearray(), []
    for ids in docs:
        ids = ids if ids and ids[-1] == eod else ids + [eod]
        chunk = struct.pack(f"<{len(ids)}{fmt}", *ids)
        index.append((len(data), len(chunk)))
        data += chunk
    return struct.pack("<QI", len(data), width) + bytes(data) + pickle.dumps(index, protocol=4)
