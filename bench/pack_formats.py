"""`python -m perfkit.bench.pack --formats`: one corpus as JSONL, parquet, .jsonl.gz and .jsonl.zst,
packed by the same `perfkit pack` command in one run, side by side, as throughput ratios to JSONL.

The four inputs are written first (untimed) from the same documents: parquet by pyarrow with its
defaults (snappy, one row group per 1M rows: a corpus this size is one row group, which pack cuts
into row slices), gzip at level 6 (gzip(1)'s default), zstd at level 3 (zstd(1)'s default). Also
timed: the JSONL with --shuffle-docs. The rounds interleave the formats (jsonl, parquet, gz, zst,
shuffle, jsonl, ...) so load on a shared machine hits them alike; each keeps its best round. Every
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
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from perfkit.bench.records import append_jsonl

FORMATS = ("jsonl", "parquet", "jsonl.gz", "jsonl.zst", "jsonl --shuffle-docs")


def write_inputs(corpus: Path, folder: Path) -> dict[str, Path]:
    data = corpus.read_bytes()
    paths = {"jsonl": folder / "c.jsonl", "parquet": folder / "c.parquet", "jsonl.gz": folder / "c.jsonl.gz",
             "jsonl.zst": folder / "c.jsonl.zst"}
    paths["jsonl"].write_bytes(data)
    paths["jsonl.gz"].write_bytes(gzip.compress(data, compresslevel=6))
    paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    texts = [msgspec.json.decode(line)["text"] for line in data.splitlines() if line.strip()]
    pq.write_table(pa.table({"text": texts}), paths["parquet"])
    paths["jsonl --shuffle-docs"] = paths["jsonl"]
    return paths


def bench_formats(corpus: Path, workers: int, rounds: int, folder: Path, run_measured, json_out: Path | None,
                  label: str) -> int:
    paths = write_inputs(corpus, folder)
    best: dict[str, dict] = {}
    outputs: dict[str, bytes] = {}
    for _ in range(rounds):
        for fmt in FORMATS:
            dst = folder / f"{fmt.split()[0]}{'.shuffled' if ' ' in fmt else ''}.pbin"
            extra = ["--shuffle-docs", "--seed", "1"] if " " in fmt else []
            wall, peak, out, cpu = run_measured([sys.executable, "-m", "perfkit.cli", "pack", str(paths[fmt]), "-o",
                                                 str(dst), "--tokenizer", "gpt2", "--workers", str(workers),
                                                 "--force", "--no-progress", *extra])
            m = re.search(r"packed ([\d,]+) documents, ([\d,]+) tokens.* in ([\d.]+) s", out)
            r = {"wall": wall, "internal_seconds": float(m.group(3)), "peak_bytes": peak, "process_cpu_seconds": cpu,
                 "docs": int(m.group(1).replace(",", "")), "tokens_with_eod": int(m.group(2).replace(",", "")),
                 "input_bytes": paths[fmt].stat().st_size}
            if fmt not in best or r["internal_seconds"] < best[fmt]["internal_seconds"]:
                best[fmt] = r
            outputs[fmt] = dst.read_bytes() if " " not in fmt else b""
    same = all(outputs[f] == outputs["jsonl"] for f in FORMATS if " " not in f)
    same = same and best["jsonl --shuffle-docs"]["docs"] == best["jsonl"]["docs"]
    base = best["jsonl"]
    mb = base["input_bytes"] / 1e6
    print(f"formats: {corpus.name} ({mb:,.1f} MB as JSONL, {base['docs']:,} docs, {base['tokens_with_eod']:,} tokens), "
          f"{workers} workers, best of {rounds} interleaved rounds; {label}")
    print(f"{'input':22} {'MB on disk':>10} {'internal s':>10} {'wall s':>7} {'peak MB':>8} "
          f"{'vs JSONL (internal)':>20} {'vs JSONL (wall)':>16}")
    for fmt in FORMATS:
        r = best[fmt]
        r["ratio_internal"] = base["internal_seconds"] / r["internal_seconds"]
        r["ratio_wall"] = base["wall"] / r["wall"]
        print(f"{fmt:22} {r['input_bytes'] / 1e6:10.1f} {r['internal_seconds']:10.2f} {r['wall']:7.2f} "
              f"{r['peak_bytes'] / 1e6:8.0f} {r['ratio_internal']:20.2f} {r['ratio_wall']:16.2f}")
    print(f"outputs byte-identical to the JSONL pack: {same}")
    if json_out:
        append_jsonl(json_out, [{"bench": "pack_formats", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "corpus": str(corpus), "workers": workers, "rounds": rounds, "machine": label,
                                 "cpus": os.cpu_count(), "arch": platform.machine(),
                                 "python": platform.python_version(), "identical": same, "results": best}])
    return 0 if same else 1

