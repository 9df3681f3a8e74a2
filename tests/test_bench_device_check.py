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


def test_summary_has_the_loss_records_that_share_the_kernels_file(tmp_path):
    from perfkit.bench import loss as loss_bench

    out = tmp_path / "out"
    out.mkdir()
    kernel_row = dict(op="swiglu", direction="fwd", impl="triton", rows=8, hidden=8, ms=0.1, gbps=1.0,
                      pct_copy=1.0, copy_gbps=100.0)
    (out / "kernels.jsonl").write_text(json.dumps(kernel_row) + "\n")
    assert loss_bench.main(["--tokens", "64", "--hidden", "16", "--vocab", "200", "--repeat", "1",
                            "--json", str(out / "kernels.jsonl")]) == 0
    steps = tmp_path / "steps.tsv"
    steps.write_text("loss\t0\t9\tpython3 -m perfkit.bench.loss\n")
    text = device_summary.write_summary(out, steps).read_text()
    loss_rows = [json.loads(line) for line in (out / "kernels.jsonl").read_text().splitlines()][1:]
    assert [r["impl"] for r in loss_rows] == ["unfused", "fused", "fused_recompute"]
    for r in loss_rows:
        assert f"| 64x16x200 | {r['impl']} | float32 | {r['ms']:.3f} | {r['ratio_to_unfused']:.3f}x |" in text
    fused = loss_rows[1]["ratio_to_unfused"]
    assert f"64x16x200 {fused:.3f}x ({'met' if fused <= 1.0 else 'missed'})" in text
    assert text.count("| swiglu |") == 1  # the kernels table keeps only the kernel rows


def _wheel(path: Path, name: str) -> Path:
    """A minimal pure-Python wheel holding one module `name` (pip installs it offline)."""
    import zipfile

    whl = path / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 18\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return whl


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_install_falls_back_to_the_shim_and_installs_missing_wheels_by_name(tmp_path):
    """Issue 18: with `pip install -e .` failing, perfkit must import through the symlink shim from
    the repo root (where ./perfkit, lacking kernels/ and bench/, used to shadow it), and a missing
    module comes from its wheel by name, an unreadable extra wheel beside it notwithstanding."""
    import site
    import sys

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "fakedep")
    (wheels / "junk-1.0-py3-none-any.whl").write_bytes(b"not a zip")  # must not be touched
    # this venv's python without site hooks (so no editable-install finder), pip -e made to fail
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n"
                      'case " $* " in *" pip install "*" -e "*) echo "forced: editable install fails" >&2; exit 1;; esac\n'
                      f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{":".join(site.getsitepackages())}" '
                      f'exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(python),
           "DEVICE_CHECK_WHEELS": str(wheels), "DEVICE_CHECK_NEEDS": "numpy fakedep",
           "DEVICE_CHECK_OPTIONAL": "absentdep", "DEVICE_CHECK_STEPS": "none"}
    r = subprocess.run(["bash", "bench/device_check.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    log = (out / "steps.log").read_text()
    assert r.returncode == 0, log[-3000:]
    assert "deps: missing before install: fakedep (optional: absentdep)" in log
    assert "deps: installing fakedep from" in log and "still missing" not in log
    assert "deps: optional, unavailable: absentdep" in log
    assert "pip install -e . failed; importing through a symlink shim" in log
    imported = next(line for line in log.splitlines() if line.startswith("perfkit imports from"))
    assert "/tmp/perfkit_shim." in imported and "/perfkit/kernels/" in imported  # the shim, not ./perfkit
    assert log.index("deps: missing") < log.index("=== train: not in DEVICE_CHECK_STEPS")
    assert "| install | 0 |" in (out / "summary.md").read_text()
    assert "deps missing before install: fakedep" in (out / "env.txt").read_text()


def test_float8_lines_are_ratios_of_the_records():
    """`--compare float8`: each recipe's median over bf16's, the issue-15 target only for
    llama3_1b.toml on a GPU (hand-made records: the ratio is all this part computes)."""
    def rec(config, variant, tok, device="cuda"):
        return {"config": config, "compare": "float8", "variant": variant, "device": device,
                "device_name": "NVIDIA H200", "tokens_per_s_per_gpu": {"median": tok}}

    records = [rec("configs/llama3_1b.toml", "bf16", 10_000.0), rec("configs/llama3_1b.toml", "rowwise", 12_500.0),
               rec("configs/llama3_1b.toml", "tensorwise", 11_000.0),
               rec("configs/cpu_debug.toml", "bf16", 400.0, "cpu"), rec("configs/cpu_debug.toml", "rowwise", 100.0, "cpu"),
               {**rec("configs/gpt2.toml", "triton", 1.0), "compare": "kernels"}]
    assert device_summary.float8_lines(records) == [
        "- float8 rowwise vs bf16 block linears, llama3_1b.toml: 1.250x tokens/s (target >= 1.2x: met on NVIDIA H200)",
        "- float8 tensorwise vs bf16 block linears, llama3_1b.toml: 1.100x tokens/s (target >= 1.2x: missed on "
        "NVIDIA H200)",
        "- float8 rowwise vs bf16 block linears, cpu_debug.toml: 0.250x tokens/s"]
