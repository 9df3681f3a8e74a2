"""bench/device_check.sh and its summary writer, without a GPU: the script parses, and summary.md is
built from real CPU bench records plus kernel/loader lines of the suites' formats, copying their
numbers rather than inventing any."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from perfkit.bench import device_summary
from test_bench_train import bench

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_device_check_script_parses_and_needs_an_outdir(tmp_path):
    script = REPO / "bench" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "usage: bench/device_check.sh OUTDIR" in r.stderr


def test_summary_copies_the_numbers_of_each_suite(tmp_path):
    rc, records = bench(tmp_path, "--synthetic", "--compare", "kernels", "--profile", "--profile-steps", "1")
    assert rc == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"partial": ')
    kernel_rows = [dict(op="swiglu", direction="fwd", impl=impl, rows=16384, hidden=2048, ms=ms, gbps=gbps,
                        pct_copy=pct, copy_gbps=3000.0) for impl, ms, gbps, pct in
                   (("triton", 0.1, 2800.0, 93.3), ("compiled", 0.12, 2333.0, 77.8), ("eager", 0.3, 933.0, 31.1))]
    (out / "kernels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kernel_rows))
    steps = tmp_path / "steps.tsv"
    steps.write_text("train\t0\t23\tpython3 -m perfkit.cli bench x\nkernels\t124\t120\tpython3 -m perfkit.bench.kernels\n")

    text = device_summary.write_summary(out, steps).read_text()
    assert "| train | 0 | 23 |" in text and "| kernels | 124 | 120 |" in text
    for r in records:  # the train table's medians are the records' own, formatted
        assert f"{r['tokens_per_s_per_gpu']['median']:,.0f}" in text
    ratio = records[0]["tokens_per_s_per_gpu"]["median"] / records[1]["tokens_per_s_per_gpu"]["median"]
    assert f"Triton kernels vs torch reference, compile off: {ratio:.3f}x" in text
    assert "target gpt2.toml" not in text  # the target is for gpt2.toml on a GPU, not cpu_debug
    top = records[0]["profile"]["top_ops"][0]
    assert f"`{top['name'][:100]}`" in text and "## Profile: cpu_debug.toml [triton]" in text
    assert "| swiglu | fwd | 16384 | 2048 | 2800 | 93% | 2333 | 933 | 1.20x |" in text
    assert "## Loader" not in text  # no loader lines, no loader section
