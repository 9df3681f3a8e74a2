"""`python -m perfkit.bench.pack --formats`: one corpus as JSONL, parquet, .jsonl.gz and .jsonl.zst,
packed by the same `perfkit pack` command in one run, side by side, as throughput ratios to JSONL.

The inputs are written first (untimed) from the same documents: parquet by pyarrow with its
defaults (snappy, one row group per 1M rows: a corpus this size is one row group, which pack cuts
into row slices that every worker decodes whole) and again with row groups of 1,000 rows, gzip at level 6 (gzip(1)'s default), zstd at level 3 (zstd(1)'s default). Also
timed: the JSONL with --shuffle-docs. The rounds interleave the formats, each round starting one
format later (a load that grows during a round would otherwise always hit the same formats), so
load on a shared machine hits them alike; reported: each format's best
round, and the median over rounds of the ratio to the JSONL run of the same round (the figure a
machine whose load changes from minute to minute distorts least). Every
output is checked byte-identical to the JSONL one (the shuffled one by its document count).
"""

from __future__ import annotations

import gzip
import os
import platform
import re
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from perfkit.bench.records import append_jsonl, cpu_name, git_commit

FORMATS = ("jsonl", "parquet", "parquet 1k-row groups", "jsonl.gz", "jsonl.zst", "jsonl --shuffle-docs")


def write_inputs(corpus: Path, folder: Path) -> dict[str, Path]:
    data = corpus.read_bytes()
    paths = {"jsonl": folder / "c.jsonl", "parquet": folder / "c.parquet", "jsonl.gz": folder / "c.jsonl.gz",
             "jsonl.zst": folder / "c.jsonl.zst"}
    paths["jsonl"].write_bytes(data)
    paths["jsonl.gz"].write_bytes(gzip.compress(data, compresslevel=6))
    paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    texts = [msgspec.json.decode(line)["text"] for line in data.splitlines() if line.strip()]
    pq.write_table(pa.table({"text": texts}), paths["parquet"])
    paths["parquet 1k-row groups"] = folder / "c1k.parquet"
    pq.write_table(pa.table({"text": texts}), paths["parquet 1k-row groups"], row_group_size=1000)
    paths["jsonl --shuffle-docs"] = paths["jsonl"]
    return paths


def bench_formats(corpus: Path, workers: int, rounds: int, folder: Path, run_measured, json_out: Path | None,
                  label: str) -> int:
    paths = write_inputs(corpus, folder)
    best: dict[str, dict] = {}
    per_round: dict[str, list[dict]] = {f: [] for f in FORMATS}
    outputs: dict[str, bytes] = {}
    for k in range(rounds):
        for fmt in FORMATS[k % len(FORMATS):] + FORMATS[:k % len(FORMATS)]:  # each round starts elsewhere
            shuffled = fmt.endswith("--shuffle-docs")
            dst = folder / f"{paths[fmt].name}{'.shuffled' if shuffled else ''}.pbin"
            extra = ["--shuffle-docs", "--seed", "1"] if shuffled else []
            wall, peak, out, cpu = run_measured([sys.executable, "-m", "perfkit.cli", "pack", str(paths[fmt]), "-o",
                                                 str(dst), "--tokenizer", "gpt2", "--workers", str(workers),
                                                 "--force", "--no-progress", *extra])
            m = re.search(r"packed ([\d,]+) documents, ([\d,]+) tokens.* in ([\d.]+) s", out)
            r = {"wall": wall, "internal_seconds": float(m.group(3)), "peak_bytes": peak, "process_cpu_seconds": cpu,
                 "docs": int(m.group(1).replace(",", "")), "tokens_with_eod": int(m.group(2).replace(",", "")),
                 "input_bytes": paths[fmt].stat().st_size}
            per_round[fmt].append(r)
            if fmt not in best or r["internal_seconds"] < best[fmt]["internal_seconds"]:
                best[fmt] = r
            outputs[fmt] = dst.read_bytes() if not shuffled else b""
    same = all(outputs[f] == outputs["jsonl"] for f in FORMATS if not f.endswith("--shuffle-docs"))
    same = same and best["jsonl --shuffle-docs"]["docs"] == best["jsonl"]["docs"]
    base = best["jsonl"]
    mb = base["input_bytes"] / 1e6
    print(f"formats: {corpus.name} ({mb:,.1f} MB as JSONL, {base['docs']:,} docs, {base['tokens_with_eod']:,} tokens), "
          f"{workers} workers, best of {rounds} interleaved rounds; {label}")
    print("throughput relative to JSONL (higher is better; CPU: CPU seconds of the whole process tree, "
          "what a loaded machine distorts least)")
    print(f"{'':22} {'':10} {'best round':^34} {'median ratio to JSONL, per round':^34}")
    print(f"{'input':22} {'MB on disk':>10} {'internal s':>10} {'wall s':>7} {'CPU s':>6} {'peak MB':>8} "
          f"{'internal':>10} {'wall':>10} {'CPU':>10}")
    for fmt in FORMATS:
        r = best[fmt]
        for key, name in (("internal_seconds", "internal"), ("wall", "wall"), ("process_cpu_seconds", "cpu")):
            r[f"median_ratio_{name}"] = float(np.median([j[key] / x[key] for j, x in
                                                        zip(per_round["jsonl"], per_round[fmt])]))
        print(f"{fmt:22} {r['input_bytes'] / 1e6:10.1f} {r['internal_seconds']:10.2f} {r['wall']:7.2f} "
              f"{r['process_cpu_seconds']:6.2f} {r['peak_bytes'] / 1e6:8.0f} {r['median_ratio_internal']:10.2f} "
              f"{r['median_ratio_wall']:10.2f} {r['median_ratio_cpu']:10.2f}")
    print(f"outputs byte-identical to the JSONL pack: {same}")
    if json_out:
        commit, dirty = git_commit()
        append_jsonl(json_out, [{"bench": "pack_formats", "commit": commit, "dirty": dirty, "cpu": cpu_name(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "corpus": str(corpus), "workers": workers, "rounds": rounds, "machine": label,
                                 "cpus": os.cpu_count(), "arch": platform.machine(),
                                 "python": platform.python_version(), "identical": same, "best": best,
                                 "rounds_detail": per_round}])
    return 0 if same else 1

