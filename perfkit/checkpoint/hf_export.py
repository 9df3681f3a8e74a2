"""`perfkit export --format hf`: a checkpoint (or model.pt export) -> a Hugging Face model folder.

    DIR/config.json              LlamaForCausalLM or GPT2LMHeadModel (checkpoint/hf_mapping.py)
    DIR/generation_config.json   bos / eos token ids
    DIR/model.safetensors        or model-0000k-of-0000n.safetensors + model.safetensors.index.json
    DIR/tokenizer.json, tokenizer_config.json  (checkpoint/hf_tokenizer.py)

`transformers.AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`
load it; so do lm-evaluation-harness (`--model hf`) and vLLM. The folder is built as a hidden
sibling `.DIR.<pid>.tmp` and renamed into place when complete; an existing DIR is replaced only
with force (the old one is renamed aside first and deleted after the new one is in place), so a
killed export leaves either nothing or the previous folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from perfkit.atomic import fsync_dir, replace_folder
from perfkit.checkpoint import layout
from perfkit.checkpoint.export import DTYPES, load_export, read_model_tensors, refuse_output_inside
from perfkit.checkpoint.hf_files import MAX_SHARD_BYTES, write_weights
from perfkit.checkpoint.hf_mapping import ARCHITECTURES, hf_architecture, hf_config, to_hf
from perfkit.checkpoint.hf_tokenizer import tokenizer_source, write_tokenizer_files
from perfkit.checkpoint.layout import CheckpointError
from perfkit.config import ModelConfig
from perfkit.errors import UserError
from perfkit.model import padded_vocab_size


def check_output_folder(out: Path, force: bool) -> None:
    """UserError unless `out` may become the export folder (checked before any weight is read)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; --format hf writes a folder")
    if out.exists() and not force:
        raise UserError(f"-o {out} exists; pass --force to replace it")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"-o {out}: {parent} is a file, not a folder")


def _read_source(source: Path):
    """(model config dict, state dict, run config dict or None, checkpoint or file read)."""
    if source.is_file():
        blob = load_export(source)
        return blob["model_config"], blob["state_dict"], None, source
    checkpoint = layout.resolve_checkpoint(source)
    problems = layout.verify(checkpoint)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged: " + "; ".join(problems))
    model_config = json.loads((checkpoint / "model_config.json").read_text())
    try:
        run_config = json.loads((checkpoint / "config.json").read_text())
    except FileNotFoundError:
        run_config = None
    return model_config, None, run_config, checkpoint


def export_hf(source: str | os.PathLike, out: str | os.PathLike, *, tokenizer: str | None = None,
              dtype: str = "bf16", force: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> dict:
    """Write the HF folder `out`; returns a summary {"folder", "architecture", "files", "tokenizer"}."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    source, out = Path(source), Path(out)
    check_output_folder(out, force)
    model_config, state_dict, run_config, read_from = _read_source(source)
    if read_from.is_dir():
        refuse_output_inside(read_from, out)
    cfg = ModelConfig(**{**model_config, "kernels": "torch"})
    arch = hf_architecture(cfg)  # refuses a combination without an HF equivalent before the weights are read
    tok_source = tokenizer_source(tokenizer, run_config)
    if state_dict is None:
        state_dict = read_model_tensors(read_from)
    target = DTYPES[dtype]
    for k, v in state_dict.items():  # in place: the checkpoint's fp32 tensors are freed as they are cast
        state_dict[k] = v.to(target) if v.is_floating_point() else v
    tensors = to_hf(state_dict, cfg)
    del state_dict

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tok = write_tokenizer_files(tok_source, tmp, cfg.sequence_length)
        if tok["vocab_size"] > padded_vocab_size(cfg.vocab_size):
            raise UserError(f"tokenizer {tok_source.name} has {tok['vocab_size']:,} tokens, more than the "
                            f"model's {padded_vocab_size(cfg.vocab_size):,} rows ($.model.vocab_size)")
        config = hf_config(cfg, dtype=dtype, eos_id=tok["eod_id"], bos_id=tok["bos_id"])
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json",
                    {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]})
        files = write_weights(tmp, tensors, max_shard_bytes)
        mode = _file_mode()
        for f in tmp.iterdir():
            os.chmod(f, mode)  # safetensors creates 0600 files; a served or published folder is read by others
            _fsync(f)
        fsync_dir(tmp)
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": out, "architecture": ARCHITECTURES[arch], "files": files,
            "tokenizer": f"{tok_source.kind} {tok_source.name} (from {tok_source.origin})"}


def _file_mode() -> int:
    """0o666 less the process umask, the mode open() gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
