"""$.parallel.float8 on a CUDA GPU with float8 tensor cores (compute capability >= 8.9; marked gpu,
skipped elsewhere): the trainer converts the block linears of a small Llama-shaped model (GQA,
SwiGLU, RMSNorm, RoPE), compiles and shards them, and trains with a finite, falling loss and no
host sync inside the steps; `perfkit bench --compare float8` measures the three variants."""

from __future__ import annotations

import math

import pytest
import torch

from test_bench_train import bench
from test_train import records, run_main
from test_train_gpu import _watch_syncs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                                 reason="needs a CUDA GPU with compute capability >= 8.9")]

# 2 blocks, 1024 wide, 8 query / 2 kv heads: qkv 1024 -> 1536, attn.proj 1024 -> 1024,
# mlp.fc 1024 -> 4096 (SwiGLU), mlp.proj 2048 -> 1024: all four >= float8_min_features = 1024
LLAMA_SHAPED = {"model.n_layer": 2, "model.n_embd": 1024, "model.n_head_q": 8, "model.n_head_kv": 2,
                "model.ffn_hidden": 2048, "parallel.float8_min_features": 1024}
GPU = {"run.device": "cuda", "parallel.mixed_precision": "bf16", "parallel.compile": "true",
       "parallel.init_device": "meta", "model.kernels": "triton", "optimizer.fused": "true"}


@pytest.mark.parametrize("recipe", ["rowwise", "tensorwise"])
def test_float8_trains_a_llama_shaped_model(tmp_path, monkeypatch, recipe):
    from perfkit.train import parallelize

    converted = []
    real = parallelize.convert_block_linears
    monkeypatch.setattr(parallelize, "convert_block_linears", lambda m, p: converted.extend(real(m, p)) or converted)
    syncs = _watch_syncs(monkeypatch, after_step=3)
    rc, run_dir = run_main(tmp_path, f"float8-{recipe}", **GPU, **LLAMA_SHAPED, **{
        "parallel.float8": "true", "parallel.float8_recipe": recipe, "training.max_steps": 40,
        "training.micro_batch_size": 8, "metrics.log_every": 10, "training.eval_every": 0})
    assert rc == 0
    assert sorted(converted) == sorted(f"blocks.{b}.{n}" for b in range(2)
                                       for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    losses = [r["loss"] for r in records(run_dir)]
    assert all(math.isfinite(v) for v in losses) and losses[0] > losses[-1] + 0.5, losses
    assert syncs == [], "host syncs inside float8 training steps:\n" + "\n".join(syncs[:3])


def test_bench_compares_bf16_and_both_float8_recipes(tmp_path):
    # compile off: this checks the axis and its records, not speed (no compile time in the gpu-tests step)
    rc, rows = bench(tmp_path, "--synthetic", *[f"--{k}={v}" for k, v in {**GPU, **LLAMA_SHAPED}.items()],
                     "--parallel.compile=false", "--compare", "float8")
    assert rc == 0
    assert [(r["variant"], r["float8"]) for r in rows] == [("bf16", None), ("rowwise", "rowwise"),
                                                           ("tensorwise", "tensorwise")]
    assert all(r["tokens_per_s_per_gpu"]["median"] > 0 and math.isfinite(r["loss_last"]) for r in rows)
