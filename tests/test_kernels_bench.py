"""bench/kernels.py: refuses without a GPU (never reports made-up numbers); on a GPU a tiny run
writes one JSON line per (op, direction, implementation) and its correctness check passes."""

import json

import pytest
import torch
import torch._functorch.config  # noqa: F401  (read below: donated_buffer)

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


def test_backward_timing_runs_with_donated_buffers_off(monkeypatch):
    # issue 18: backward is timed with retain_graph=True, which AOTAutograd refuses when a compiled
    # backward has donated buffers; every timed call (and the compile before it) must see them off.
    seen = []

    def fake_bench_ms(fn):  # CPU stand-in for do_bench: run once, note the flag, report 1 ms
        fn()
        seen.append(torch._functorch.config.donated_buffer)
        return 1.0

    monkeypatch.setattr(bench, "_bench_ms", fake_bench_ms)
    before = torch._functorch.config.donated_buffer
    rows, error = bench.bench_case("swiglu", 8, 16, torch.float32, torch.device("cpu"), copy=100.0)
    assert seen == [False] * 6 and len(rows) == 6  # 3 implementations x (fwd, bwd)
    assert error < 1e-5 and torch._functorch.config.donated_buffer == before  # restored afterwards
    torch._dynamo.reset()
