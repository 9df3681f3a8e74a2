"""`perfkit bench` (train suite) on CPU: tiny cpu_debug runs in this process (a world of one, gloo,
FSDP2), checking the JSON record's fields and that its numbers agree with each other."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perfkit.bench import bench_cmd as cli
from perfkit.bench.train_report import FLOPS_FORMULA
from test_train_data import VOCAB, make_dataset

CPU_DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "cpu_debug.toml")


def bench(tmp_path: Path, *extra: str) -> tuple[int, list[dict]]:
    """Run `perfkit bench CPU_DEBUG ...` with a tiny vocabulary; returns (exit code, JSON records)."""
    out = tmp_path / "bench.jsonl"
    argv = [CPU_DEBUG, "--steps", "3", "--warmup", "1", "--json", str(out),
            f"--model.vocab_size={VOCAB}", f"--run.root={tmp_path / 'runs'}", *extra]
    rc = cli.main(argv)  # the dispatcher: a config path (no suite name) means the train suite
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return rc, records


def check_consistent(r: dict) -> None:
    """The numbers of one record agree with each other and with the design's formulas."""
    times = r["step_times_s"]
    assert len(times) == r["steps"] and all(t > 0 for t in times)
    p20, p50, p80 = np.percentile(times, [20, 50, 80])
    assert r["step_time_s"] == pytest.approx({"median": p50, "p20": p20, "p80": p80})
    tok = r["tokens_per_s_per_gpu"]
    assert r["tokens_per_step_per_gpu"] == r["tokens_per_step"] // r["world_size"]
    assert tok["median"] == pytest.approx(r["tokens_per_step_per_gpu"] / r["step_time_s"]["median"], rel=1e-12)
    assert tok["p20"] == pytest.approx(r["tokens_per_step_per_gpu"] / r["step_time_s"]["p80"], rel=1e-12)
    assert tok["p20"] <= tok["median"] <= tok["p80"]
    assert r["tflops_per_gpu"] == pytest.approx(tok["median"] * r["flops_per_token"] / 1e12, rel=1e-12)
    assert r["tokens_per_step"] == (r["micro_batch_size"] * r["sequence_length"] * r["grad_accum_steps"]
                                    * r["world_size"])
    assert r["flops_formula"] == FLOPS_FORMULA and r["flops_per_token"] > 6 * r["non_embedding_parameters"]
    assert 0.0 <= r["data_wait_frac"] <= 1.0 and r["warmup_s"] > 0 and math.isfinite(r["loss_last"])


def check_cpu_environment(r: dict) -> None:
    assert r["bench"] == "train" and r["device"] == "cpu" and r["torch"] == torch.__version__
    assert r["mfu"] is None and r["peak_flops"] is None  # CPU: no peak, never a guess
    assert r["peak_mem_allocated_gib"] is None and r["host_peak_rss_gib"] > 0
    assert r["git_commit"] is None or len(r["git_commit"]) == 40


def test_synthetic_run_prints_and_records_consistent_numbers(tmp_path, capsys):
    rc, records = bench(tmp_path, "--synthetic")
    assert rc == 0 and len(records) == 1
    r = records[0]
    check_consistent(r)
    check_cpu_environment(r)
    assert r["synthetic"] and r["variant"] is None and r["world_size"] == 1
    assert r["tokens_per_step"] == 8 * 64 and r["data_wait_frac"] == 0.0  # batches already on the device
    assert r["per_rank_step_time_median_s"] == [r["step_time_s"]["median"]]
    assert r["overrides"] == [f"--model.vocab_size={VOCAB}", f"--run.root={tmp_path / 'runs'}"]
    printed = capsys.readouterr().out
    for text in ("tokens/s per process", "MFU n/a", FLOPS_FORMULA, r["torch"], "step time", "data wait",
                 f"{r['tokens_per_s_per_gpu']['median']:,.0f} median"):
        assert text in printed, text
    assert not (tmp_path / "runs").exists()  # no run folder without --profile


def test_real_data_measures_the_loader(tmp_path):
    train, val = make_dataset(tmp_path / "data")
    rc, records = bench(tmp_path, f'--data.train=["{train}"]', f'--data.val=["{val}"]')
    assert rc == 0
    r = records[0]
    check_consistent(r)
    assert not r["synthetic"] and r["config"] == CPU_DEBUG


def test_profile_writes_a_trace_and_the_top_operations(tmp_path, capsys):
    rc, records = bench(tmp_path, "--synthetic", "--memory-snapshot", "--profile-steps", "2",
                        "--override", "training.micro_batch_size=4")  # --memory-snapshot implies --profile
    assert rc == 0 and records[0]["tokens_per_step"] == 4 * 64
    prof = records[0]["profile"]
    trace = Path(prof["trace"])
    assert trace.parent.parent == tmp_path / "runs" and trace.name == "trace_config_rank0.json"
    assert records[0]["run_dir"] == str(trace.parent)
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)
    assert prof["by"] == "self_cpu_time" and prof["memory_snapshot"] is None  # snapshots are CUDA-only
    top = prof["top_ops"]
    assert top and all(a["self_ms_per_step"] >= b["self_ms_per_step"] for a, b in zip(top, top[1:]))
    assert 0 < sum(t["share"] for t in top) <= 1 + 1e-9
    assert "top operations by self CPU" in capsys.readouterr().out


def test_compare_kernels_measures_both_variants_side_by_side(tmp_path, capsys):
    rc, records = bench(tmp_path, "--synthetic", "--compare", "kernels")
    assert rc == 0
    assert [r["variant"] for r in records] == ["triton", "torch"]
    assert [r["kernels"] for r in records] == ["triton", "torch"]
    # on CPU the perfkit ops run their PyTorch reference; the record says so instead of claiming Triton
    assert [r["kernels_ran"] for r in records] == ["torch-reference", "torch"]
    for r in records:
        check_consistent(r)
        assert r["compare"] == "kernels"
    printed = capsys.readouterr().out
    ratio = records[1]["tokens_per_s_per_gpu"]["median"] / records[0]["tokens_per_s_per_gpu"]["median"]
    assert "--compare kernels:" in printed and "vs triton" in printed
    assert "1.000x" in printed and f"{ratio:.3f}x" in printed


def test_bad_input_fails_with_a_message_and_no_record(tmp_path, capsys):
    rc, records = bench(tmp_path, "--synthetic", "--model.n_layr=3")
    assert rc == 2 and records == [] and "n_layer" in capsys.readouterr().err  # the suggestion
    rc, records = bench(tmp_path, '--data.train=["missing.pbin"]')
    assert rc == 1 and records == [] and "--synthetic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench(tmp_path, "--synthetic", "stray")


@pytest.mark.slow
def test_torchrun_two_ranks_time_per_rank_and_rank0_records(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "perfkit.bench.train", CPU_DEBUG, "--steps", "3", "--warmup", "1", "--synthetic",
           "--json", str(out), f"--model.vocab_size={VOCAB}", f"--run.root={tmp_path / 'runs'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1  # rank 0 alone writes
    r = records[0]
    check_consistent(r)
    assert r["world_size"] == 2 and r["tokens_per_step"] == 2 * 8 * 64 and r["tokens_per_step_per_gpu"] == 8 * 64
    assert len(r["per_rank_step_time_median_s"]) == 2 and all(t > 0 for t in r["per_rank_step_time_median_s"])
    assert proc.stdout.count("tokens/s per process") == 1  # only rank 0 prints
    assert "per-rank median step time" in proc.stdout


def test_compare_keeps_the_other_variant_when_one_fails(tmp_path, capsys, monkeypatch):
    from perfkit.bench import train

    real = train.run_variant

    def torch_variant_runs_out_of_memory(args, cfg, env, env_info, peak, run_dir, variant, show_header):
        if variant == "torch":
            raise MemoryError("pretend the torch variant does not fit")
        return real(args, cfg, env, env_info, peak, run_dir, variant, show_header)

    monkeypatch.setattr(train, "run_variant", torch_variant_runs_out_of_memory)
    rc, records = bench(tmp_path, "--synthetic", "--compare", "kernels")
    assert rc == 1  # a failed variant fails the run ...
    assert [r["variant"] for r in records] == ["triton"]  # ... but the measured one is kept
    captured = capsys.readouterr()
    assert "variant torch failed: MemoryError" in captured.err and "failed: torch" in captured.out


def test_compare_writes_each_record_before_the_next_variant_runs(tmp_path, monkeypatch):
    # issue 18: device_check.sh kills a variant that outlives its timeout (the process dies, no
    # cleanup runs); the record of the variant that finished before it must already be on disk
    from perfkit.bench import train

    real = train.run_variant
    on_disk_when_torch_started = []

    def torch_variant_is_killed(args, cfg, env, env_info, peak, run_dir, variant, show_header):
        if variant == "torch":
            out = tmp_path / "bench.jsonl"
            on_disk_when_torch_started.extend(json.loads(x)["variant"] for x in out.read_text().splitlines())
            raise KeyboardInterrupt  # a BaseException, as a kill is: nothing after this point runs
        return real(args, cfg, env, env_info, peak, run_dir, variant, show_header)

    monkeypatch.setattr(train, "run_variant", torch_variant_is_killed)
    with pytest.raises(KeyboardInterrupt):
        bench(tmp_path, "--synthetic", "--compare", "kernels")
    assert on_disk_when_torch_started == ["triton"]
    line = json.loads((tmp_path / "bench.jsonl").read_text())
    assert line["variant"] == "triton" and line["tokens_per_s_per_gpu"]["median"] > 0


def test_default_json_goes_to_the_run_folder_not_the_checkout(tmp_path, monkeypatch):
    # issue 12: without --json the records land in <run.root>/bench_<time>/bench.jsonl; nothing is
    # written under the checkout's bench/results/ (kept for committed records)
    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    before = sorted(p.name for p in results.iterdir())
    monkeypatch.chdir(tmp_path)
    rc = cli.main([CPU_DEBUG, "--steps", "2", "--warmup", "0", "--synthetic", "--parallel.compile=false",
                   f"--model.vocab_size={VOCAB}", f"--run.root={tmp_path / 'runs'}"])
    assert rc == 0
    written = list((tmp_path / "runs").glob("bench_*/bench.jsonl"))
    assert len(written) == 1
    r = json.loads(written[0].read_text())
    check_consistent(r)
    assert r["run_dir"] == str(written[0].parent)
    assert sorted(p.name for p in results.iterdir()) == before and not (tmp_path / "bench").exists()


def test_bench_builds_through_the_trainers_builder(tmp_path, monkeypatch):
    """The bench must time what `perfkit train` runs: its parts come from the trainer's own
    perfkit.train.setup.build_train_parts (the one builder both use), not from a copy."""
    from perfkit.train import setup

    seen = []
    real = setup.build_train_parts

    def spy(cfg, env, plan, loader=None):
        parts = real(cfg, env, plan, loader=loader)
        seen.append((type(loader).__name__, parts))
        return parts

    monkeypatch.setattr(setup, "build_train_parts", spy)
    rc, records = bench(tmp_path, "--synthetic")
    assert rc == 0 and len(records) == 1
    assert [name for name, _ in seen] == ["SyntheticBatches"]
    assert seen[0][1].val_loader is None  # evaluation is not part of the timed step


@pytest.mark.parametrize("suite", ["train", "kernels", "loader", "pack"])
def test_unwritable_json_path_is_refused_before_any_work(tmp_path, capsys, suite):
    (tmp_path / "afile").write_text("")
    for bad, why in ((tmp_path, "is a folder"), (tmp_path / "afile" / "r.jsonl", "is a file, not a folder")):
        argv = [CPU_DEBUG, "--json", str(bad)] if suite == "train" else [suite, "--json", str(bad)]
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_compare_loss_measures_fused_and_unfused_on_the_same_batches(tmp_path):
    """--compare loss (device_check's Llama step): the fused linear + cross-entropy and the unfused
    loss, each built fresh from the same seed on the same synthetic batches, so their last losses
    agree to fp32 rounding while their step times and memory are compared."""
    rc, records = bench(tmp_path, "--synthetic", "--compare", "loss")
    assert rc == 0
    assert [r["variant"] for r in records] == ["fused", "unfused"]
    for r in records:
        check_consistent(r)
        assert r["compare"] == "loss"
    assert records[0]["loss_last"] == pytest.approx(records[1]["loss_last"], rel=1e-4)
