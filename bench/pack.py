"""Benchmark: `perfkit pack` end to end vs tiktoken's own encode_ordinary_batch, same corpus, same cores.

    python -m perfkit.bench.pack [--corpus FILE] [--workers N] [--repeat K] [--rounds R] [--json OUT.jsonl]
    python -m perfkit.bench.pack --index-docs 10000000      (the .pbin index codec vs pickle)
    python -m perfkit.bench.pack --hf-tokenizer gpt2 --hf-tokenizer metaspace   (bench/pack_hf.py:
        pack with a tokenizer.json vs the tokenizers library's encode_batch, same texts, same cores)
    python -m perfkit.bench.pack --formats [--repeat K]     (JSONL vs parquet, .gz, .zst: bench/pack_formats.py)

Both sides run in their own fresh process, one after the other, so peak memory is measured per side:
- tiktoken: the texts are read and JSON-decoded first (untimed), then only
  `encode_ordinary_batch(texts, num_threads=N)` is timed, and separately `encode_ordinary` over
  the same texts split across N forked processes (started before the clock): the tokenizer's
  ceiling on N cores, whether or not its threads scale.
- perfkit pack: the real command (`python -m perfkit.cli pack`), timed from process start to exit
  ("wall", includes interpreter start and tokenizer load) and by its own summary ("internal").
Peak memory is the largest sum of PSS over the process tree (main + workers), sampled every 20 ms
(PSS counts pages the forked workers share with the parent once). --repeat K concatenates the
corpus K times into a temporary file: memory must stay flat as the corpus grows.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from perfkit.bench import pack_hf
from perfkit.bench.records import append_jsonl, json_path_problem
from perfkit.prep.pack_cmd import default_workers
from perfkit.formats.index_pickle import encode_index_pickle, parse_index_pickle

BASELINE = r"""
import json, multiprocessing as mp, sys, time
import msgspec, tiktoken
path, workers = sys.argv[1], int(sys.argv[2])
enc = tiktoken.get_encoding("r50k_base")
with open(path, "rb") as f:
    texts = [msgspec.json.decode(line)["text"] for line in f if line.strip()]
t0, c0 = time.perf_counter(), time.process_time()
out = enc.encode_ordinary_batch(texts, num_threads=workers)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
tokens = sum(map(len, out))
del out

def share(i):  # forked: inherits texts and enc
    return sum(len(enc.encode_ordinary(t)) for t in texts[i::workers])

with mp.get_context("fork").Pool(workers) as pool:
    pool.map(abs, range(workers))  # workers up before the clock starts
    t0 = time.perf_counter()
    assert sum(pool.map(share, range(workers))) == tokens
    dt_procs = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "procs_seconds": dt_procs, "tokens": tokens,
                  "docs": len(texts)}))
"""


def _tree_pss_kb(root: int) -> int:
    """Sum of PSS (kB) of root and its descendants (VmRSS where smaps_rollup is missing)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    total = 0
    for pid in tree:
        for name, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
            try:
                for line in Path(name).read_text().splitlines():
                    if line.startswith(key):
                        total += int(line.split()[1])
                        break
                else:
                    continue
                break
            except OSError:
                continue
    return total


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, str, float]:
    """(wall seconds, peak tree PSS in bytes, stdout, CPU seconds of the whole tree) of a command.

    CPU seconds (user + system of the process and every child it waited for) are what a busy
    shared machine distorts least; wall seconds are what a user sees."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_pss_kb(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench pack: {' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall, peak * 1024, out, cpu


def measure(corpus: Path, workers: int, rounds: int) -> dict:
    base_best = pack_best = None
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "bench.pbin"
        for _ in range(rounds):  # alternate the two sides; keep each side's best round
            wall, peak, out, cpu = run_measured([sys.executable, "-c", BASELINE, str(corpus), str(workers)])
            b = json.loads(out)
            b.update(wall=wall, peak_bytes=peak, process_cpu_seconds=cpu)
            if base_best is None or b["seconds"] < base_best["seconds"]:
                base_best = b
            wall, peak, out, cpu = run_measured([sys.executable, "-m", "perfkit.cli", "pack", str(corpus), "-o", str(dst),
                                            "--tokenizer", "gpt2", "--workers", str(workers), "--force",
                                            "--no-progress"])
            m = re.search(r"packed ([\d,]+) documents, ([\d,]+) tokens.* in ([\d.]+) s", out)
            p = {"wall": wall, "peak_bytes": peak, "process_cpu_seconds": cpu, "docs": int(m.group(1).replace(",", "")),
                 "tokens_with_eod": int(m.group(2).replace(",", "")), "internal_seconds": float(m.group(3))}
            if pack_best is None or p["wall"] < pack_best["wall"]:
                pack_best = p
    return {"baseline": base_best, "pack": pack_best}


def bench_index(n: int, json_out: Path | None) -> int:
    """The .pbin index codec on n documents vs the stdlib pickle it must match byte for byte."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 3000, n) * 2          # FineWeb-like documents, 2-byte tokens
    offsets = np.cumsum(lengths) - lengths
    t0 = time.perf_counter()
    ours = encode_index_pickle(offsets, lengths)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    got_off, got_len = parse_index_pickle(ours)
    t_parse = time.perf_counter() - t0
    pairs = list(zip(offsets.tolist(), lengths.tolist()))
    t0 = time.perf_counter()
    ref = pickle.dumps(pairs, protocol=4)
    t_dumps = time.perf_counter() - t0
    del pairs
    t0 = time.perf_counter()
    pickle.loads(ref)  # trusted bytes here; a reader must never do this on a downloaded file
    t_loads = time.perf_counter() - t0
    same = ref == ours and np.array_equal(got_off, offsets) and np.array_equal(got_len, lengths)
    print(f"index of {n:,} documents ({len(ours) / 1e6:,.1f} MB), byte-identical to pickle.dumps: {same}")
    print(f"  perfkit encode {t_enc:6.2f} s   pickle.dumps (from a list of tuples) {t_dumps:6.2f} s")
    print(f"  perfkit parse  {t_parse:6.2f} s   pickle.loads (unsafe, builds tuples)   {t_loads:6.2f} s")
    if json_out:
        rec = {"bench": "pack_index", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "docs": n,
               "bytes": len(ours), "identical": bool(same), "encode_s": t_enc, "parse_s": t_parse,
               "pickle_dumps_s": t_dumps, "pickle_loads_s": t_loads, "cpus": os.cpu_count()}
        append_jsonl(json_out, [rec])
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfkit.bench.pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/raw/shakespeare_train.jsonl"))
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--repeat", type=int, default=1, help="concatenate the corpus this many times")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side; the best is reported")
    ap.add_argument("--json", type=Path, help="append one JSON line with the results to this file")
    ap.add_argument("--index-docs", type=int, help="instead: time the .pbin index codec on this many documents")
    ap.add_argument("--hf-tokenizer", action="append", metavar="gpt2|metaspace|PATH",
                    help="instead: pack with this tokenizer.json vs the tokenizers library (repeatable)")
    ap.add_argument("--eod-token", help="with --hf-tokenizer PATH: the EOD token (default <|endoftext|>)")
    ap.add_argument("--formats", action="store_true",
                    help="instead: the corpus as JSONL, parquet, .jsonl.gz, .jsonl.zst, packed side by side")
    ap.add_argument("--machine", default=f"{os.cpu_count()}-CPU {platform.machine()}",
                    help="how --formats names the machine in its output and JSON record")
    args = ap.parse_args(argv)
    if json_path_problem(args.json):
        ap.error(json_path_problem(args.json))
    if args.index_docs:
        return bench_index(args.index_docs, args.json)
    if not args.corpus.is_file():
        print(f"bench pack: {args.corpus}: no such file (run `perfkit fetch`)", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if args.repeat > 1:
            corpus = Path(tmp) / f"{args.corpus.stem}_x{args.repeat}.jsonl"
            data = args.corpus.read_bytes()
            with open(corpus, "wb") as f:
                for _ in range(args.repeat):
                    f.write(data)
        size = corpus.stat().st_size
        if args.hf_tokenizer:
            return _hf_main(args, corpus, size, Path(tmp))
        if args.formats:
            # imported here: pack_formats needs pyarrow, an optional dependency (perfkit[parquet])
            from perfkit.bench.pack_formats import bench_formats
            return bench_formats(corpus, args.workers, args.rounds, Path(tmp), run_measured, args.json,
                                 args.machine)
        r = measure(corpus, args.workers, args.rounds)

    b, p = r["baseline"], r["pack"]
    mb = size / 1e6
    tok = b["tokens"]  # text tokens; pack also writes one EOD per document
    rows = [
        ("tiktoken encode_ordinary_batch", b["seconds"], b["peak_bytes"], "encode only; texts pre-decoded"),
        (f"tiktoken encode_ordinary x{args.workers} procs", b["procs_seconds"], b["peak_bytes"],
         "encode only; texts pre-decoded and pre-split"),
        ("perfkit pack, internal", p["internal_seconds"], p["peak_bytes"], "read+decode+tokenize+write"),
        ("perfkit pack, process wall", p["wall"], p["peak_bytes"], "+ interpreter start, tokenizer load"),
    ]
    print(f"corpus {args.corpus} x{args.repeat}: {mb:,.1f} MB, {b['docs']:,} docs, {tok:,} tokens; "
          f"workers {args.workers}; {os.cpu_count()} CPUs ({platform.machine()}, {platform.processor() or 'cpu'})")
    print(f"{'':32} {'seconds':>8} {'Mtok/s':>8} {'MB/s':>7} {'peak MB':>8}")
    for name, secs, peak, note in rows:
        print(f"{name:32} {secs:8.2f} {tok / secs / 1e6:8.2f} {mb / secs:7.1f} {peak / 1e6:8.0f}   {note}")
    ratio_internal, ratio_wall = b["seconds"] / p["internal_seconds"], b["seconds"] / p["wall"]
    procs_internal, procs_wall = b["procs_seconds"] / p["internal_seconds"], b["procs_seconds"] / p["wall"]
    print(f"pack throughput / encode_ordinary_batch throughput: {ratio_internal:.2f} (internal), "
          f"{ratio_wall:.2f} (wall)")
    print(f"pack throughput / {args.workers}-process encode_ordinary throughput: {procs_internal:.2f} (internal), "
          f"{procs_wall:.2f} (wall)")
    print(f"CPU seconds: tiktoken encode {b['cpu_seconds']:.2f} (whole process {b['process_cpu_seconds']:.2f}); "
          f"pack whole process tree {p['process_cpu_seconds']:.2f}")
    if args.json:
        rec = {"bench": "pack", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "corpus": str(args.corpus), "repeat": args.repeat, "bytes": size, "workers": args.workers,
               "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "baseline": b, "pack": p, "ratio_internal": ratio_internal, "ratio_wall": ratio_wall,
               "ratio_procs_internal": procs_internal, "ratio_procs_wall": procs_wall}
        append_jsonl(args.json, [rec])
    return 0


def _hf_main(args, corpus: Path, size: int, work: Path) -> int:
    print(f"corpus {args.corpus} x{args.repeat}: {size / 1e6:,.1f} MB; workers {args.workers}; "
          f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.processor() or 'cpu'}); "
          f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    records = pack_hf.run(args.hf_tokenizer, args.eod_token, corpus, args.workers, args.rounds, run_measured, work)
    if args.json:
        stamp = {"bench": "pack_hf", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "corpus": str(args.corpus), "repeat": args.repeat, "bytes": size, "workers": args.workers,
                 "rounds": args.rounds, "cpus": os.cpu_count(), "machine": platform.machine(),
                 "python": platform.python_version(), "load_after": list(os.getloadavg())}
        append_jsonl(args.json, [{**stamp, **r} for r in records])
    return 0


if __name__ == "__main__":
    sys.exit(main())
