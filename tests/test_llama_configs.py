"""configs/llama3_1b.toml and llama3_8b.toml have the published models' shapes: `--dry-run` reports
their total parameter count (Llama 3.2 1B: 1,235,814,400; Llama 3 8B: 8,030,261,248) beside the
non-embedding count, from arithmetic alone (no model is built), and the count agrees with a GPT
constructed on the meta device (no memory)."""

from __future__ import annotations

import json

import pytest
import torch

from test_train_data import make_dataset

# published totals; non-embedding = total - 128,256 x width (the tied 1B head is the embedding)
PUBLISHED = {"configs/llama3_1b.toml": (1_235_814_400, 1_235_814_400 - 128_256 * 2048),
             "configs/llama3_8b.toml": (8_030_261_248, 8_030_261_248 - 128_256 * 4096)}


@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_dry_run_reports_the_published_parameter_counts(config, tmp_path, capsys, monkeypatch):
    import perfkit.model.gpt as gpt
    from perfkit.train.train_cmd import main

    def no_model(*a, **k):
        raise AssertionError("--dry-run must not build the model")
    monkeypatch.setattr(gpt.GPT, "__init__", no_model)
    train, _ = make_dataset(tmp_path / "data", train_docs=64, doc_len=200)  # one 8192-token window
    rc = main([config, "--dry-run", f'--data.train=["{train}"]', "--data.val=[]",  # val: too few tokens
               "--training.global_batch_size=1", "--training.max_steps=1", f"--run.root={tmp_path / 'runs'}"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    total, non_embedding = PUBLISHED[config]
    assert out["derived"]["parameters"] == total
    assert out["derived"]["non_embedding_parameters"] == non_embedding
    assert out["model"]["fused_linear_cross_entropy"] is True
    assert out["model"]["rope_base"] == 500000.0 and out["model"]["sequence_length"] == 8192


@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_meta_model_has_the_published_parameter_count(config):
    from perfkit.config import load_config
    from perfkit.model import GPT, count_parameters

    cfg = load_config(config, []).model
    with torch.device("meta"):
        model = GPT(cfg)
    total, non_embedding = PUBLISHED[config]
    assert count_parameters(model) == total
    assert count_parameters(model, non_embedding=True) == non_embedding
    assert (model.lm_head.weight is model.tok_emb.weight) == (config == "configs/llama3_1b.toml")


def test_llama3_8b_fits_eight_80gb_gpus_by_its_own_estimate(tmp_path, capsys):
    """configs/llama3_8b.toml at its global batch on 8 ranks: the dry-run's per-GPU estimate leaves
    room on an 80 GB H100 (CUDA context and allocator slack are not in it); accumulating unsharded
    gradients instead would not fit, and the estimate says what switching saves."""
    from perfkit.train.train_cmd import main

    train, _ = make_dataset(tmp_path / "data", train_docs=600, doc_len=1000)  # 64+ windows of 8192
    common = ["configs/llama3_8b.toml", "--dry-run", "--world-size", "8", "--device", "cuda", f'--data.train=["{train}"]',
              "--data.val=[]", "--training.max_steps=1", f"--run.root={tmp_path / 'runs'}"]
    estimates = {}
    for policy in ("every_micro_batch", "last_micro_batch"):
        assert main([*common, f"--parallel.reduce_gradients={policy}"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["derived"]["grad_accum_steps"] == 8
        estimates[policy] = out["derived"]["memory_estimate"]
    assert out["parallel"]["activation_checkpointing"] == "op"
    assert estimates["every_micro_batch"]["total_gib"] < 70, estimates
    assert estimates["last_micro_batch"]["total_gib"] > 80, estimates
    assert "every_micro_batch" in estimates["last_micro_batch"]["saving"]
