"""bench/loss.py (`python -m perfkit.bench.loss`): one custom shape on the machine at hand writes a
record per implementation whose gradients agree with the compiled unfused loss; a wrong loss is
reported as a mismatch with exit status 1, never as a speed-up."""

import json

import pytest
import torch

from perfkit.bench import loss as bench

SHAPE = ["--tokens", "96", "--hidden", "16", "--vocab", "300", "--repeat", "2"]


def test_custom_shape_writes_a_checked_record_per_implementation(tmp_path, capsys):
    out = tmp_path / "loss.jsonl"
    assert bench.main([*SHAPE, "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["unfused", "fused", "fused_recompute"]
    for r in rows:
        assert r["shape"] == "96x16x300" and r["ms"] > 0 and r["suite"] == "loss"
        assert r["max_rel_error"] < 1e-4, r
    assert rows[0]["ratio_to_unfused"] == 1.0
    assert "target (issue 15)" in capsys.readouterr().out


def test_a_wrong_loss_is_a_mismatch(monkeypatch, tmp_path):
    right = bench._fused
    monkeypatch.setattr(bench, "_fused", lambda h, w, t: 1.01 * right(h, w, t))
    out = tmp_path / "loss.jsonl"
    assert bench.main([*SHAPE, "--json", str(out)]) == 1
    fused = [json.loads(line) for line in out.read_text().splitlines() if '"fused"' in line]
    assert fused and fused[0]["max_rel_error"] > 5e-3


def test_custom_shape_needs_all_three_numbers():
    with pytest.raises(SystemExit):
        bench.main(["--tokens", "96", "--hidden", "16"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_run_measures_peak_memory(tmp_path):
    out = tmp_path / "loss.jsonl"
    assert bench.main(["--tokens", "4096", "--hidden", "256", "--vocab", "32000", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["peak_mib"] > 0 and r["dtype"] == "bfloat16" for r in rows)
