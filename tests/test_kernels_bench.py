"""bench/kernels.py: refuses without a GPU (never reports made-up numbers); on a GPU a tiny run
writes one JSON line per (op, direction, implementation) and its correctness check passes."""

import json

import pytest
import torch

from perfkit.bench import kernels as bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_refuses_without_cuda(capsys, tmp_path):
    out = tmp_path / "k.jsonl"
    assert bench.main(["--json", str(out)]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_gpu_run_writes_json(tmp_path):
    out = tmp_path / "k.jsonl"
    assert bench.main(["--rows", "1000", "--hidden", "768", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(bench.OPS) * 2 * 3
    for r in rows:
        assert r["ms"] > 0 and r["gbps"] > 0 and r["copy_gbps"] > 0 and r["max_rel_error"] < 2e-2
