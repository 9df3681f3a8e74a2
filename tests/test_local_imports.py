"""Function-local imports only where they keep torch (or an optional or version-specific package)
out of a command that does not need it; each such module says why in its docstring or a comment."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> words of the sentence that gives the reason (it must appear in the file)
ALLOWED = {
    "perfkit/cli.py": "never pays for importing torch",
    "perfkit/demo_cmd.py": "stays torch-free",
    "perfkit/plot_cmd.py": "optional dependency",
    "perfkit/metrics_wandb.py": "the optional dependency",
    "perfkit/prep/tokenizer_sentencepiece.py": "optional dependency",  # sentencepiece: perfkit[sentencepiece]
    "perfkit/train/train_cmd.py": "kept out of `--help` and config errors",
    "perfkit/train/float8.py": "torchao is an optional package",
    "perfkit/prep/pack_config.py": "Python 3.10",
    "perfkit/prep/pack_cmd.py": "read_raw_index",      # pack <-> rawindex import each other (issue 13 item 4)
    "perfkit/prep/index_cmd.py": "default_workers",
    "perfkit/prep/parquet_source.py": "optional dependency",   # pyarrow: perfkit[parquet], ~50 MB
    "perfkit/inspect_cmd.py": "imported here: it needs torch",
    "kernels/interpreter_compat.py": "TRITON_INTERPRET=1 only",
    "kernels/rms_norm.py": "must not import triton",
    "kernels/linear_cross_entropy.py": "must not import triton",
    "kernels/swiglu.py": "triton",
    "bench/bench_cmd.py": "stays torch-free",
    "bench/records.py": "torch-free",
    "bench/kernels.py": "triton",
    "bench/loss.py": "triton.testing only on CUDA",
    "bench/pack.py": "optional dependency",
    "bench/train.py": "do not load torch",
}


def local_imports(path: Path) -> list[int]:
    lines = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return sorted(lines)


def test_local_imports_only_where_the_module_says_why():
    problems = []
    for folder in ("perfkit", "kernels", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found = local_imports(path)
            if found and rel not in ALLOWED:
                problems.append(f"{rel}: function-local imports at lines {found}")
            elif found and ALLOWED[rel] not in path.read_text():
                problems.append(f"{rel}: does not say why it imports inside functions ({ALLOWED[rel]!r})")
    assert not problems, "\n".join(problems)


def test_torch_free_commands_stay_torch_free():
    import subprocess
    import sys

    code = ("import sys; from perfkit import cli; import perfkit.prep.pack_cmd, perfkit.prep.index_cmd, "
            "perfkit.inspect_cmd, perfkit.demo_cmd, perfkit.bench.pack; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
