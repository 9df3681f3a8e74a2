"""Hugging Face tokenizer.json in `perfkit pack` / `perfkit inspect`: per document the tokenizers
library's own ids (its default special-token handling) + EOD, for every kind; the byte-level BPE
conversion to tiktoken and its fallback. Reference: tests/hf_tokenizers.py (the library itself)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_tokenizers import (byte_level_bpe, llama3_style_bpe, metaspace_bpe, random_texts, reference_ids,
                           reference_pbin, unigram, wordpiece)
from perfkit import inspect_cmd
from perfkit.prep import pack_cmd as pack
from perfkit.prep.tokenizer import TokenizerError, TokenizerSpec, resolve_tokenizer
from perfkit.prep.tokenizer_convert import convert_byte_level

BUILDERS = {"byte_level": byte_level_bpe, "llama3_style": llama3_style_bpe, "metaspace": metaspace_bpe,
            "wordpiece": wordpiece, "unigram": unigram}
EOD = {"byte_level": "<|endoftext|>", "llama3_style": "<|end_of_text|>", "metaspace": "</s>",
       "wordpiece": "[SEP]", "unigram": "</s>"}
SPECIALS = {"byte_level": ("<|endoftext|>",), "llama3_style": ("<|begin_of_text|>", "<|eot_id|>", "<tool>"),
            "metaspace": ("<s>", "</s>"), "wordpiece": ("[CLS]", "[MASK]"), "unigram": ("</s>",)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: build(root / kind) for kind, build in BUILDERS.items()}


def split(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [part.tolist() for part in np.split(ids, np.cumsum(lengths)[:-1])] if len(lengths) else []


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_encode_batch_equals_the_library_on_random_texts(folders, kind):
    tok = resolve_tokenizer(TokenizerSpec(str(folders[kind])))
    byte_level = kind in ("byte_level", "llama3_style")
    assert (tok.fast is not None) == byte_level and tok.note is None
    assert tok.spec.backend == ("tiktoken" if byte_level else "library")
    texts = random_texts(150, seed=7, specials=SPECIALS[kind]) + ["", " ", "\n\n", "x" * 3000]
    assert split(*tok.encode_batch(texts)) == reference_ids(folders[kind], texts)


def test_post_processor_ids_and_the_record(folders):
    tok = resolve_tokenizer(TokenizerSpec(str(folders["llama3_style"])))
    bos, eod = tok.library.token_to_id("<|begin_of_text|>"), tok.token_id("<|end_of_text|>")
    assert tok.fast.prefix.tolist() == [bos] and tok.fast.suffix.tolist() == []
    rec = tok.record(eod)
    data = (folders["llama3_style"] / "tokenizer.json").read_bytes()
    assert (rec.kind, rec.bos_id, rec.eod_token, rec.file) == ("hf", bos, "<|end_of_text|>",
                                                               str(folders["llama3_style"] / "tokenizer.json"))
    import hashlib
    assert rec.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.vocab_size == max(json.loads(data)["model"]["vocab"].values()) + 1 + 4  # 4 added tokens
    unigram_tok = resolve_tokenizer(TokenizerSpec(str(folders["unigram"] / "tokenizer.json")))
    assert unigram_tok.record(unigram_tok.token_id("</s>")).bos_id is None  # "$A </s>": no BOS


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pack_is_byte_identical_to_the_library_plus_eod(folders, kind, write_jsonl, tmp_path):
    eod = EOD[kind]
    texts = (random_texts(40, seed=3, specials=SPECIALS[kind]) +
             ["", "   \n ", f"ends with the EOD token {eod}", f"{eod}", "Grüße 東京 🤖", "x" * 5000])
    src = write_jsonl([{"text": t} for t in texts * 3])
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(folders[kind]), "--eod-token", eod,
                      "--workers", "2", "--chunk-mb", "0.002", "--no-progress"]) == 0
    tok = resolve_tokenizer(TokenizerSpec(str(folders[kind])))
    eod_id = tok.library.token_to_id(eod)
    assert dst.read_bytes() == reference_pbin(reference_ids(folders[kind], texts * 3), eod_id, tok.token_width)


def test_inspect_decodes_a_hf_pack(folders, write_jsonl, tmp_path, capsys):
    src = write_jsonl([{"text": "To be, or not to be"}, {"text": "that is the question"}])
    dst = tmp_path / "o.pbin"
    folder = str(folders["byte_level"])
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", folder, "--no-progress"]) == 0
    capsys.readouterr()
    assert inspect_cmd.main([str(dst), "--tokenizer", folder, "--doc", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["document"]["text"] == "that is the question<|endoftext|>" and report["verdict"] == "ok"


def _edit(folder, tmp_path, name, change) -> str:
    data = json.loads((folder / "tokenizer.json").read_text())
    change(data)
    out = tmp_path / name
    out.write_text(json.dumps(data))
    return str(out)


def test_merge_order_not_matching_ids_falls_back_with_a_note(folders, write_jsonl, tmp_path, capsys):
    def swap_two_merges(data):
        merges = data["model"]["merges"]
        merges[10], merges[11] = merges[11], merges[10]
    path = _edit(folders["byte_level"], tmp_path, "swapped.json", swap_two_merges)
    assert "merge priority disagrees with id order" in convert_byte_level(json.loads(open(path).read())).reason
    texts = random_texts(30, seed=5)
    src = write_jsonl([{"text": t} for t in texts])
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", path, "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"perfkit pack: note: {path}: the tiktoken conversion")
    assert "encoding with the library instead" in err[0]
    tok = resolve_tokenizer(TokenizerSpec(path))
    assert tok.fast is None
    ref = [tok.library.encode(t).ids for t in texts]
    assert dst.read_bytes() == reference_pbin(ref, tok.token_id("<|endoftext|>"), 2)


def test_a_difference_only_the_corpus_shows_falls_back(tmp_path, write_jsonl, capsys):
    # A split regex that does not cover '@': the library keeps the gap as a piece, tiktoken drops
    # it. No edge string has an '@', so the load-time checks pass and the corpus sample catches it.
    folder = llama3_style_bpe(tmp_path / "gappy", split_regex=r"[^@\s]+|\s+")
    assert resolve_tokenizer(TokenizerSpec(str(folder))).fast is not None
    texts = ["mail me at someone@example.org", "no at-sign here"]
    src = write_jsonl([{"text": t} for t in texts])
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(folder), "--eod-token", "<|end_of_text|>",
                      "--no-progress"]) == 0
    assert "corpus document 0" in capsys.readouterr().err
    tok = resolve_tokenizer(TokenizerSpec(str(folder)))
    assert dst.read_bytes() == reference_pbin(reference_ids(folder, texts), tok.token_id("<|end_of_text|>"), 2)


@pytest.mark.parametrize("change,reason", [
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer Lowercase"),
    (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip=true"),
    (lambda d: d["added_tokens"].append({**d["added_tokens"][0], "id": 599, "content": "<|endoftext|>x"}),
     "is a prefix of"),
    (lambda d: d["model"]["vocab"].pop("a"), "single bytes have no token"),
])
def test_unconvertible_byte_level_files_say_why(folders, change, reason):
    data = json.loads((folders["byte_level"] / "tokenizer.json").read_text())
    change(data)
    assert reason in convert_byte_level(data).reason


@pytest.mark.slow
def test_spawned_workers_use_the_decided_route(folders, write_jsonl, tmp_path, monkeypatch):
    import multiprocessing as mp
    from perfkit.prep import pack_pipeline
    monkeypatch.setattr(pack_pipeline, "_mp_context", lambda: mp.get_context("spawn"))
    texts = random_texts(20, seed=9, specials=SPECIALS["llama3_style"])
    src = write_jsonl([{"text": t} for t in texts])
    dst = tmp_path / "spawn.pbin"
    folder = folders["llama3_style"]
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(folder), "--eod-token", "<|end_of_text|>",
                      "--workers", "2", "--chunk-mb", "0.001", "--no-progress"]) == 0
    tok = resolve_tokenizer(TokenizerSpec(str(folder)))
    assert dst.read_bytes() == reference_pbin(reference_ids(folder, texts), tok.token_id("<|end_of_text|>"), 2)


def _bad_inputs(folders, tmp_path):
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "model": {\n    "type": "BPE",,\n')
    no_model = tmp_path / "no_model.json"
    no_model.write_text('{"version": "1.0"}')
    bad_model = tmp_path / "bad_model.json"
    bad_model.write_text('{"model": {"type": "NoSuchModel"}}')
    return [
        ([str(empty)], f"{empty}: no tokenizer.json in this folder"),
        ([str(broken)], f"{broken}:3: not valid JSON"),
        ([str(no_model)], 'no "model" object'),
        ([str(bad_model)], "the tokenizers library cannot load it"),
        ([str(folders["byte_level"]), "--eod-token", "</s>"], "EOD token '</s>' (--eod-token / settings.eod_token) "
                                                              "is not in the vocabulary of"),
        (["meta-llama/Llama-3.2-1B"], "perfkit reads local files only"),
    ]


def test_bad_tokenizer_input_is_one_line_and_writes_nothing(folders, write_jsonl, tmp_path, capsys):
    src = write_jsonl([{"text": "hello"}])
    for args, expected in _bad_inputs(folders, tmp_path):
        dst = tmp_path / "never.pbin"
        assert pack.main([str(src), "-o", str(dst), "--tokenizer", *args, "--no-progress"]) == 1, args
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and err.startswith("perfkit pack: "), (args, err)
        assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".never")] == []


def test_hub_id_message_lists_the_accepted_kinds():
    with pytest.raises(TokenizerError) as e:
        resolve_tokenizer(TokenizerSpec("Qwen/Qwen2-0.5B"))
    for kind in ("tiktoken encoding name", "Hugging Face tokenizer folder", "SentencePiece .model",
                 ".tiktoken ranks file", "local files only"):
        assert kind in str(e.value)


def test_pack_config_takes_modalities_tokenizer_components(folders, write_jsonl, tmp_path, capsys):
    texts = ["To be, or not to be", "", "that is the question"]
    src = write_jsonl([{"text": t} for t in texts])
    folder = folders["metaspace"]
    cfg = tmp_path / "tokenization.toml"
    cfg.write_text(f'[settings]\nsrc_path = "{src}"\ndst_path = "{tmp_path / "o.pbin"}"\neod_token = "</s>"\n'
                   '[tokenizer]\ncomponent_key = "tokenizer"\nvariant_key = "pretrained_hf_tokenizer"\n'
                   f'config = {{ pretrained_model_name_or_path = "{folder}", padding = false, truncation = false }}\n')
    assert pack.main(["--config", str(cfg), "--no-progress"]) == 0
    tok = resolve_tokenizer(TokenizerSpec(str(folder)))
    assert (tmp_path / "o.pbin").read_bytes() == reference_pbin(reference_ids(folder, texts),
                                                                tok.token_id("</s>"), tok.token_width)
    bad = {'variant_key = "pretrained_hf_tokenizer"\nconfig = { pretrained_model_name_or_path = "x", '
           'truncation = true }': "never pads or truncates",
           'variant_key = "pretrained_hf_tokenizer"\nconfig = { pretrained_model_name_or_path = "x", '
           'special_tokens = { pad_token = "[PAD]" } }': "config.special_tokens is not supported",
           'variant_key = "pretrained_sp_tokenizer"\nconfig = { }': "config.tokenizer_model_file is required",
           'variant_key = "gpt2_tokenizer"': "variant_key 'gpt2_tokenizer': perfkit reads",
           f'name = "gpt2"\nvariant_key = "pretrained_hf_tokenizer"\nconfig = {{ pretrained_model_name_or_path = '
           f'"{folder}" }}': "not both"}
    for body, expected in bad.items():
        cfg.write_text(f'[settings]\nsrc_path = "{src}"\ndst_path = "{tmp_path / "n.pbin"}"\n[tokenizer]\n{body}\n')
        assert pack.main(["--config", str(cfg), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert expected in err and str(cfg) in err and err.count("\n") == 1, err
        assert not (tmp_path / "n.pbin").exists()


def test_llama_class_flags_in_tokenizer_config_rebuild_the_post_processor(tmp_path, write_jsonl):
    # transformers' LlamaTokenizerFast rebuilds the template from add_bos_token / add_eos_token;
    # Modalities' output then has "<s> ... </s>", whatever tokenizer.json's own template says.
    folder = metaspace_bpe(tmp_path / "llama2")
    config = {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": False, "add_eos_token": True,
              "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = resolve_tokenizer(TokenizerSpec(str(folder)))
    eos = tok.library.token_to_id("</s>")
    ids = split(*tok.encode_batch(["To be, or not to be", ""]))
    bare = tok.library.encode("To be, or not to be", add_special_tokens=False).ids
    assert ids == [bare + [eos], [eos]] and tok.record(eos).bos_id is None
    # given the tokenizer.json file itself, nothing beside it is read: its own "<s> $A" applies
    alone = resolve_tokenizer(TokenizerSpec(str(folder / "tokenizer.json")))
    assert split(*alone.encode_batch([""])) == [[alone.library.token_to_id("<s>")]]
    src = write_jsonl([{"text": "To be"}, {"text": ""}])
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(folder), "--eod-token", "</s>",
                      "--no-progress"]) == 0
    to_be = tok.library.encode("To be", add_special_tokens=False).ids
    assert dst.read_bytes() == reference_pbin([to_be + [eos], [eos]], eos, tok.token_width)  # one </s> each
    config["add_bos_token"], config["bos_token"] = True, "<nope>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: add_bos_token is true but bos_token '<nope>'"):
        resolve_tokenizer(TokenizerSpec(str(folder)))


def test_a_merges_list_with_every_pair_per_token_still_converts(folders, tmp_path):
    # Llama 3's tokenizer.json lists every pair of lower tokens that makes a token (ignore_merges on),
    # so several merges share one result: priority still follows the ids, the conversion holds.
    data = json.loads((folders["byte_level"] / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    pairs = sorted((i, vocab[t[:k]], vocab[t[k:]], [t[:k], t[k:]]) for t, i in vocab.items() for k in range(1, len(t))
                   if vocab.get(t[:k], i) < i and vocab.get(t[k:], i) < i)
    assert len(pairs) > len(data["model"]["merges"])
    data["model"].update(merges=[p[3] for p in pairs], ignore_merges=True)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    tok = resolve_tokenizer(TokenizerSpec(str(tmp_path)))
    assert tok.fast is not None and tok.note is None
    texts = random_texts(200, seed=13, specials=SPECIALS["byte_level"])
    assert split(*tok.encode_batch(texts)) == reference_ids(tmp_path, texts)
