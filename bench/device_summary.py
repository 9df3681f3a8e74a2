"""summary.md of a device check: the steps' exit codes, then the numbers of each suite's JSON lines.

    python3 bench/device_summary.py OUTDIR STEPS_TSV      (called by bench/device_check.sh)

Standard library only and no perfkit imports, so the summary is still written when installing
perfkit failed on the device machine (then it lists the failed steps and nothing else).
Every number it prints is copied from a JSON line a benchmark wrote (or is a ratio of two); the
targets are issue 7's (gpt2.toml tokens/s) and issue 15's (float8 speed-up on llama3_1b.toml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET_TOKENS_PER_S = 500_000  # issue 7: configs/gpt2.toml on one H100
TARGET_FLOAT8_SPEEDUP = 1.2    # issue 15: float8 vs bf16 tokens/s on configs/llama3_1b.toml
TARGET_LLAMA_MFU = 0.45        # issue 15: configs/llama3_1b.toml in bf16 on one H100/H200
TARGET_ESTIMATE_ERROR = 0.10   # issue 15: the memory estimate vs max_memory_allocated on a GPU


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a step killed mid-write leaves a partial line; skip it
            continue
    return rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"] + \
           ["| " + " | ".join(r) + " |" for r in rows]


def steps_section(steps_tsv: Path) -> list[str]:
    rows = []
    if steps_tsv.is_file():
        for line in steps_tsv.read_text().splitlines():
            name, rc, seconds, *cmd = line.split("\t")
            rows.append([name, rc, seconds, "`" + " ".join(cmd).replace("|", "\\|") + "`"])
    return ["## Steps", ""] + _table(["step", "rc", "s", "command"], rows) + [""]


def _mfu(r: dict) -> str:
    return "n/a" if r.get("mfu") is None else f"{r['mfu']:.1%}"


def _gib(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def train_section(records: list[dict]) -> list[str]:
    if not records:
        return ["## Train step", "", "no train records (see steps.log)", ""]
    r0 = records[0]
    peak = (f"{r0['peak_flops'] / 1e12:.0f} TFLOP/s ({r0['peak_name']})" if r0.get("peak_flops")
            else "n/a (no known peak)")
    commit = (r0["git_commit"] or "unknown")[:12] + (" (uncommitted changes)" if r0["git_dirty"] else "")
    out = ["## Train step", "",
           f"{r0['device_name']}; torch {r0['torch']}, triton {r0['triton']}, CUDA {r0['cuda']}; git {commit}",
           f"FLOPs/token {r0['flops_per_token']:.4g} = {r0['flops_formula']}; MFU vs {peak}", ""]
    rows = []
    for r in records:
        tok, st = r["tokens_per_s_per_gpu"], r["step_time_s"]
        rows.append([Path(r["config"]).name, r.get("variant") or "-", r["kernels_ran"],
                     "on" if r["compile"] else "off", "synthetic" if r.get("synthetic") else ".pbin",
                     f"{r['micro_batch_size']}x{r['grad_accum_steps']}", f"{tok['median']:,.0f}", f"{tok['p20']:,.0f}",
                     f"{tok['p80']:,.0f}", f"{st['median'] * 1e3:.1f}", f"{r['tflops_per_gpu']:.3g}", _mfu(r),
                     _gib(r["peak_mem_allocated_gib"]), _gib(r["peak_mem_reserved_gib"]),
                     f"{r['data_wait_frac']:.2%}", f"{r['steps']}+{r['warmup']}w"])
    out += _table(["config", "variant", "kernels", "compile", "data", "micro-batch x accum", "tok/s/GPU median", "p20", "p80", "step ms",
                   "TFLOP/s", "MFU", "alloc GiB", "reserved GiB", "data wait", "steps"], rows)
    out.append("")
    gpt2 = [r for r in records if Path(r["config"]).name == "gpt2.toml" and r["device"] == "cuda"]
    if gpt2:  # the target is stated for configs/gpt2.toml on one H100
        best = max(r["tokens_per_s_per_gpu"]["median"] for r in gpt2)
        out.append(f"- target gpt2.toml >= {TARGET_TOKENS_PER_S:,} tokens/s per GPU: "
                   f"{'met' if best >= TARGET_TOKENS_PER_S else 'missed'} (best median {best:,.0f} "
                   f"on {gpt2[0]['device_name']})")
    by_variant = {r.get("variant"): r for r in records if r.get("compare") == "kernels"}
    if "triton" in by_variant and "torch" in by_variant:
        t, p = by_variant["triton"], by_variant["torch"]
        ratio = t["tokens_per_s_per_gpu"]["median"] / p["tokens_per_s_per_gpu"]["median"]
        out.append(f"- Triton kernels vs torch reference, compile {'on' if t['compile'] else 'off'}: "
                   f"{ratio:.3f}x tokens/s ({'faster' if ratio > 1 else 'not faster'})")
    return out + float8_lines(records) + llama_mfu_lines(records) + estimate_lines(records) + [""]


def llama_mfu_lines(records: list[dict]) -> list[str]:
    """Issue 15's MFU target: configs/llama3_1b.toml in bf16 (no float8) on a GPU."""
    runs = [r for r in records if Path(r["config"]).name == "llama3_1b.toml" and r["device"] == "cuda"
            and not r.get("float8") and r.get("mfu") is not None]
    if not runs:
        return []
    best = max(runs, key=lambda r: r["mfu"])
    return [f"- target llama3_1b.toml >= {TARGET_LLAMA_MFU:.0%} MFU in bf16: "
            f"{'met' if best['mfu'] >= TARGET_LLAMA_MFU else 'missed'} (best {best['mfu']:.1%}, "
            f"variant {best.get('variant') or '-'}, on {best['device_name']})"]


def estimate_lines(records: list[dict]) -> list[str]:
    """The memory estimate (what --dry-run prints) against the measured peak allocated, per GPU record."""
    out = []
    for r in records:
        est, peak = (r.get("memory_estimate_gib") or {}).get("total"), r.get("peak_mem_allocated_gib")
        if est is None or peak is None:
            continue
        err = est / peak - 1
        out.append(f"- memory estimate {Path(r['config']).name} [{r.get('variant') or '-'}]: {est:.2f} GiB vs "
                   f"{peak:.2f} GiB peak allocated ({err:+.1%}; target within {TARGET_ESTIMATE_ERROR:.0%}: "
                   f"{'met' if abs(err) <= TARGET_ESTIMATE_ERROR else 'missed'})")
    return out


def float8_lines(records: list[dict]) -> list[str]:
    """`--compare float8`: each float8 recipe's tokens/s over the bf16 variant's, per config; the
    issue's target applies to configs/llama3_1b.toml on a GPU."""
    out = []
    for config in dict.fromkeys(r["config"] for r in records if r.get("compare") == "float8"):
        by = {r.get("variant"): r for r in records if r.get("compare") == "float8" and r["config"] == config}
        if "bf16" not in by:
            continue
        base = by["bf16"]["tokens_per_s_per_gpu"]["median"]
        for recipe in ("rowwise", "tensorwise"):
            if recipe not in by:
                continue
            ratio = by[recipe]["tokens_per_s_per_gpu"]["median"] / base
            target = ""
            if Path(config).name == "llama3_1b.toml" and by[recipe]["device"] == "cuda":
                target = (f" (target >= {TARGET_FLOAT8_SPEEDUP}x: "
                          f"{'met' if ratio >= TARGET_FLOAT8_SPEEDUP else 'missed'} on {by[recipe]['device_name']})")
            out.append(f"- float8 {recipe} vs bf16 block linears, {Path(config).name}: {ratio:.3f}x tokens/s{target}")
    return out


def profile_section(records: list[dict], limit: int = 12) -> list[str]:
    out = []
    for r in records:
        prof = r.get("profile")
        if not prof:
            continue
        out += [f"## Profile: {Path(r['config']).name} [{r.get('variant') or 'config'}] "
                f"(top by {prof['by']}, per step)", "",
                f"sum of self times {prof['self_ms_per_step']:.1f} ms vs {prof['wall_ms_per_step']:.1f} ms wall "
                f"per profiled step (profiler overhead included)", ""]
        out += _table(["share", "ms/step", "calls/step", "name"],
                      [[f"{o['share']:.1%}", f"{o['self_ms_per_step']:.2f}", f"{o['calls_per_step']:.0f}",
                        "`" + o["name"][:100].replace("|", "\\|") + "`"] for o in prof["top_ops"][:limit]])
        out.append("")
    return out


def kernels_section(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("suite", "kernels") == "kernels"]  # loss records share the file
    if not rows:
        return []
    by = {(r["op"], r["direction"], r["rows"], r["hidden"], r["impl"]): r for r in rows}
    table = []
    for (op, d, m, n, impl), r in by.items():
        if impl != "triton":
            continue
        comp, eager = by.get((op, d, m, n, "compiled")), by.get((op, d, m, n, "eager"))
        table.append([op, d, str(m), str(n), f"{r['gbps']:.0f}", f"{r['pct_copy']:.0f}%",
                      f"{comp['gbps']:.0f}" if comp else "-", f"{eager['gbps']:.0f}" if eager else "-",
                      f"{comp['ms'] / r['ms']:.2f}x" if comp else "-"])
    copy = rows[0].get("copy_gbps")
    return ["## Kernels (GB/s; copy " + (f"{copy:.0f} GB/s" if copy else "n/a") + ")", ""] + _table(
        ["op", "dir", "rows", "hidden", "triton", "% copy", "compiled", "eager", "triton speed vs compiled"],
        table) + [""]


def loss_section(rows: list[dict]) -> list[str]:
    """bench/loss.py's records (appended to kernels.jsonl): the head + loss step per implementation."""
    rows = [r for r in rows if r.get("suite") == "loss"]
    if not rows:
        return []
    table = [[r["shape"], r["impl"], r["dtype"], f"{r['ms']:.3f}", f"{r['ratio_to_unfused']:.3f}x",
              "-" if r.get("peak_mib") is None else f"{r['peak_mib']:,.0f}", f"{r['max_rel_error']:.1e}"]
             for r in rows]
    fused = [f"{r['shape']} {r['ratio_to_unfused']:.3f}x ({'met' if r['ratio_to_unfused'] <= 1.0 else 'missed'})"
             for r in rows if r["impl"] == "fused"]
    return ["## Head + loss step (fwd + both gradients)", ""] + _table(
        ["shape", "impl", "dtype", "ms", "time vs compiled unfused", "peak MiB", "max rel error"], table) + [
        "", "Target (issue 15), fused at least as fast as compiled unfused: " + ", ".join(fused), ""]


def loader_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    table = [[str(r["B"]), str(r["S"]), f"{r['host_tokens_per_s'] / 1e6:,.0f}", f"{r['loader_tokens_per_s'] / 1e6:,.0f}",
              f"{r['wait']['wait_share']:.2%}" if r.get("wait") else "n/a"] for r in rows]
    return ["## Loader", ""] + _table(["B", "S", "host Mtok/s", "loader Mtok/s", "wait share"], table) + [""]


def write_summary(outdir: Path, steps_tsv: Path) -> Path:
    train = [r for r in read_jsonl(outdir / "train.jsonl") if r.get("bench") == "train"]
    lines = ["# perfkit device check", ""] + steps_section(steps_tsv) + train_section(train) + \
        profile_section(train) + kernels_section(read_jsonl(outdir / "kernels.jsonl")) + \
        loss_section(read_jsonl(outdir / "kernels.jsonl")) + loader_section(read_jsonl(outdir / "loader.jsonl"))
    path = outdir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(write_summary(Path(sys.argv[1]), Path(sys.argv[2])))
