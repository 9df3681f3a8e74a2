"""One-process training runs of configs/cpu_debug.toml on tiny learnable data (CPU, fp32).

Each run is `perfkit.train.train_cmd.main(argv)` in this process (a world of one, gloo, FSDP2).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from test_train_data import VOCAB, make_dataset, tiny_overrides

CPU_DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "cpu_debug.toml")
TRAIN_FIELDS = {"step", "loss", "lr", "grad_norm", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu",
                "peak_mem_gib", "data_wait_frac", "tokens_seen"}


def run_main(tmp_path: Path, name: str, **overrides) -> tuple[int, Path]:
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data")
    argv = [CPU_DEBUG] + tiny_overrides(tmp_path, train, val, **overrides) + [f"--run.experiment_id={name}"]
    return main(argv), tmp_path / "runs" / name


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_loss_falls_and_monitoring_is_written(tmp_path):
    # init_device = "meta": the production path (meta construction -> fully_shard -> to_empty -> init)
    rc, run_dir = run_main(tmp_path, "falls", **{"training.max_steps": 40, "metrics.log_every": 10,
                                                  "training.eval_every": 20, "parallel.init_device": "meta"})
    assert rc == 0
    train = records(run_dir)
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    for r in train:
        assert TRAIN_FIELDS <= r.keys()
        assert r["mfu"] is None  # CPU: no peak to divide by, never a guess
        assert r["tokens_per_s_per_gpu"] > 0 and r["tflops_per_gpu"] > 0 and r["peak_mem_gib"] > 0
        assert 0 <= r["data_wait_frac"] <= 1
    assert train[-1]["tokens_seen"] == 40 * 8 * 64
    assert train[0]["loss"] > train[-1]["loss"] + 1.0, [r["loss"] for r in train]
    val = records(run_dir, "val")
    assert [r["step"] for r in val] == [20, 40] and val[-1]["val_loss"] < val[0]["val_loss"]

    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["derived"]["max_steps"] == 40 and resolved["derived"]["tokens_per_step"] == 512
    assert resolved["run"]["experiment_id"] == "falls" and resolved["model"]["vocab_size"] == VOCAB

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s_per_gpu", "perf/tflops_per_gpu",
            "perf/peak_mem_gib", "perf/data_wait_frac", "train/tokens_seen", "val/loss"} <= tags
    assert "perf/mfu" not in tags  # unknown peak: absent, not zero
    assert [e.step for e in events.Scalars("train/loss")] == [10, 20, 30, 40]
    assert events.Scalars("train/loss")[0].value == pytest.approx(train[0]["loss"], rel=1e-6)


def test_accumulation_equals_a_larger_batch(tmp_path):
    """2 micro-batches of 8 with accumulation == 1 micro-batch of 16 (same samples), in fp32."""
    common = {"training.max_steps": 12, "metrics.log_every": 3, "training.eval_every": 0, "data.val": "[]"}
    rc1, big = run_main(tmp_path, "big", **common, **{"training.micro_batch_size": 16})
    rc2, acc = run_main(tmp_path, "acc", **common, **{"training.micro_batch_size": 8,
                                                       "training.grad_accum_steps": 2})
    assert rc1 == rc2 == 0
    a, b = records(big), records(acc)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 6, 9, 12]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert [r["grad_norm"] for r in b] == pytest.approx([r["grad_norm"] for r in a], rel=1e-4)
    assert [r["tokens_seen"] for r in b] == [r["tokens_seen"] for r in a]


@pytest.mark.slow
def test_compiled_run(tmp_path):
    """The one compile-on test: per-block torch.compile(fullgraph) under FSDP2 trains."""
    rc, run_dir = run_main(tmp_path, "compiled", **{"training.max_steps": 4, "metrics.log_every": 2,
                                                     "training.eval_every": 0, "data.val": "[]",
                                                     "parallel.compile": "true"})
    assert rc == 0
    losses = [r["loss"] for r in records(run_dir)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data")
    rc = main([CPU_DEBUG, "--dry-run", "--training.max_steps=0"] + tiny_overrides(tmp_path, train, val))
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    d = out["derived"]
    windows = (64 * 200 - 65) // 64 + 1  # 64 docs of 200 tokens, S = 64
    assert d["train_samples"] == windows and d["max_steps"] == windows // 8  # one epoch, the seed's way
    assert d["tokens_per_step"] == 8 * 64 and d["grad_accum_steps"] == 1 and d["world_size"] == 1
    assert d["flops_per_token"] > 0 and d["parameters"] > d["non_embedding_parameters"] > 0
    assert out["training"]["micro_batch_size"] == 8 and out["scheduler"]["kind"] == "cosine"
    assert not (tmp_path / "runs").exists()  # nothing written, nothing built


def test_bad_data_is_reported_before_training(tmp_path, capsys):
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data")
    base = tiny_overrides(tmp_path, train, val)
    assert main([CPU_DEBUG] + base + ['--data.train=["missing.pbin"]']) == 2  # bad input, before training
    assert "$.data.train: no such file missing.pbin" in capsys.readouterr().err
    assert main([CPU_DEBUG] + base + ["--model.vocab_size=200"]) == 2  # the data holds id 255
    assert "token id 255, beyond $.model.vocab_size (200)" in capsys.readouterr().err
    assert main([CPU_DEBUG] + base + ["--training.micro_batch_size=4096", "--training.max_steps=1"]) == 2
    assert "fewer than one micro-batch per rank" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_weight_decay_groups():
    from perfkit.config import ModelConfig, OptimizerConfig
    from perfkit.model import GPT
    from perfkit.train.optimizer import param_groups

    model = GPT(ModelConfig(vocab_size=128, sequence_length=16, n_layer=2, n_embd=32, n_head_q=4,
                            n_head_kv=2, ffn_hidden=64, kernels="torch"))
    groups = {g["name"]: g for g in param_groups(model, OptimizerConfig(weight_decay=0.1))}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert {names[i] for i in no_decay} == {n for n in names.values() if "emb" in n or "norm" in n}
    assert all(p.ndim == 2 for p in groups["decay"]["params"])
    everything = param_groups(model, OptimizerConfig(no_decay=[]))
    assert len(everything) == 1 and len(everything[0]["params"]) == len(list(model.parameters()))


def test_metrics_peak_table_and_console_line(tmp_path):
    from perfkit.config import MetricsConfig
    from perfkit.metrics import MetricsLogger, peak_flops, throughput

    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA GeForce RTX 4090") is None and peak_flops(None) is None
    tflops, mfu = throughput(500_000, 1e9, 989e12)
    assert tflops == pytest.approx(500.0) and mfu == pytest.approx(500e12 / 989e12)
    assert throughput(500_000, 1e9, None)[1] is None
    log = MetricsLogger(MetricsConfig(tensorboard=False), tmp_path, max_steps=100)
    line = log.format_line({"step": 5, "loss": 2.5, "mfu": None, "tokens_per_s_per_gpu": 1234.5})
    assert line == "step 5/100 | loss 2.5000 | tok/s/gpu 1,234 | MFU n/a"
    log.close()


def test_a_restarted_run_keeps_one_history_and_loses_no_record(tmp_path):
    """Resuming from step 5 after a crash at step 8: metrics.jsonl and TensorBoard show steps 1-5 of
    the first run and the new steps after them; the first run's steps 6-8 (and a half-written
    line) are moved to metrics.superseded.jsonl, not deleted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from perfkit.config import MetricsConfig
    from perfkit.metrics import MetricsLogger

    first = MetricsLogger(MetricsConfig(), tmp_path)
    for step in range(1, 9):
        first.log(step, {"loss": 10.0 - step})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "kind": "tra')  # the crash

    # TensorBoard reads event files in name order: seconds, host, pid, then a per-process counter
    # compared as text ("10" < "9"); a real restart is a new process seconds later, so wait one
    # second here rather than depend on how many writers this pytest process has made before
    time.sleep(1.05)
    second = MetricsLogger(MetricsConfig(), tmp_path, start_step=5)
    for step in range(6, 8):
        second.log(step, {"loss": 100.0 + step})
    second.close()

    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in kept] == [(s, 10.0 - s) for s in range(1, 6)] + [(6, 106.0), (7, 107.0)]
    moved = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in moved[:3]] == [6, 7, 8] and moved[3] == '{"step": 9, "kind": "tra'

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert got == [(s, 10.0 - s) for s in range(1, 6)] + [(6, 106.0), (7, 107.0)]
