"""The one tokenizer_config.json setting of a Hugging Face folder that changes the ids Modalities writes.

Modalities' `pretrained_hf_tokenizer` loads a folder with transformers' AutoTokenizer. For the
Llama, Code Llama, Gemma, Cohere and GPT-NeoX tokenizer classes, transformers (4.x) then replaces
tokenizer.json's post-processor with a template built from tokenizer_config.json:
`[bos] $A [eos]`, where bos is there when `add_bos_token` (class default below) and eos when
`add_eos_token` (default false), and the tokens are `bos_token` / `eos_token` from the config (else
special_tokens_map.json, else the class default). `apply_template_flags` does the same to the
library tokenizer, so both routes of prep/tokenizer_hf.py see that post-processor. Every other
class keeps tokenizer.json's own post-processor, as transformers does.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import processors

from perfkit.prep.tokenizer_base import TokenizerError

# class (without "Fast") -> (add_bos_token default, bos_token default, eos_token default)
TEMPLATE_CLASSES = {
    "LlamaTokenizer": (True, "<s>", "</s>"),
    "CodeLlamaTokenizer": (True, "<s>", "</s>"),
    "GemmaTokenizer": (True, "<bos>", "<eos>"),
    "CohereTokenizer": (True, "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "GPTNeoXTokenizer": (False, "<|endoftext|>", "<|endoftext|>"),
}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: not a JSON object")
    return data


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: "text" or {"content": "text", ...}."""
    return value.get("content") if isinstance(value, dict) else value


def apply_template_flags(folder: Path, library) -> str | None:
    """Rebuild library's post-processor from folder's tokenizer_config.json where transformers does;
    returns what was applied (for the label), None when the config does not ask for it."""
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    cls = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    if cls not in TEMPLATE_CLASSES:
        return None
    add_bos_default, bos_default, eos_default = TEMPLATE_CLASSES[cls]
    specials_path = folder / "special_tokens_map.json"
    specials = _read_json(specials_path) if specials_path.is_file() else {}
    add = {"bos": bool(config.get("add_bos_token", add_bos_default)), "eos": bool(config.get("add_eos_token", False))}
    text = {}
    for name, default in (("bos", bos_default), ("eos", eos_default)):
        key = f"{name}_token"
        text[name] = _token_text(config[key] if key in config else specials.get(key, default))
    ids = {}
    for name in ("bos", "eos"):
        if not add[name]:
            continue
        ids[name] = library.token_to_id(text[name]) if text[name] is not None else None
        if ids[name] is None:
            raise TokenizerError(f"{config_path}: add_{name}_token is true but {name}_token {text[name]!r} "
                                 "is not in the tokenizer's vocabulary")
    single = " ".join([f"{text['bos']}:0"] * add["bos"] + ["$A:0"] + [f"{text['eos']}:0"] * add["eos"])
    pair = single + " " + " ".join([f"{text['bos']}:1"] * add["bos"] + ["$B:1"] + [f"{text['eos']}:1"] * add["eos"])
    library.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(text[n], ids[n]) for n in ("bos", "eos") if add[n]])
    return f"{cls} template {single}"
