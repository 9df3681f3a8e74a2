"""bench/memory_live.py: the peak of live CPU tensor bytes (the CPU's max_memory_allocated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train_data import make_dataset

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def test_peak_is_the_largest_sum_of_live_tensors():
    from perfkit.bench.memory_live import peak_live_cpu_bytes

    def work():
        a = torch.empty(4 * MIB, dtype=torch.uint8)   # 4 MiB
        b = torch.empty(8 * MIB, dtype=torch.uint8)   # 12 MiB live
        del a
        c = torch.empty(6 * MIB, dtype=torch.uint8)   # a is gone: 8 + 6 = 14 MiB live, the peak
        del b, c
        d = torch.empty(2 * MIB, dtype=torch.uint8)
        return d.numel()

    n, peak = peak_live_cpu_bytes(work)
    assert n == 2 * MIB
    assert 14 * MIB <= peak < 14 * MIB + 64 * 1024, peak   # plus the profiler's own few bytes


@pytest.mark.slow
@pytest.mark.parametrize("cuda_policy", [False, True])
def test_cli_reports_the_estimate_beside_the_measured_peak(tmp_path, cuda_policy):
    train, _ = make_dataset(tmp_path / "data", train_docs=64, doc_len=200)
    cmd = [sys.executable, "-m", "perfkit.bench.memory_live", str(REPO / "configs" / "cpu_debug.toml"),
           f'--data.train=["{train}"]', "--data.val=[]", "--model.vocab_size=256", "--parallel.init_device=meta",
           "--json", str(tmp_path / "live.jsonl"), *(["--cuda-policy"] if cuda_policy else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "live.jsonl").read_text().splitlines()[-1])
    assert rec == json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["cuda_policy"] is cuda_policy
    # the model's fp32 shard and AdamW's two moments alone are live at the second step
    params = rec["estimate_breakdown_gib"]["optimizer_state"] / 2
    assert rec["peak_live_gib"] > 3 * params > 0
    assert rec["estimate_over_peak"] == pytest.approx(rec["estimate_gib"] / rec["peak_live_gib"], rel=0.01)
