"""Benchmark: `perfkit pack` with a Hugging Face tokenizer.json vs the tokenizers library's own batch
encoder over the same texts, same cores (run from `python -m perfkit.bench.pack --hf-tokenizer ...`).

    python -m perfkit.bench.pack --hf-tokenizer gpt2 --hf-tokenizer metaspace [--workers N] [--repeat K]
    python -m perfkit.bench.pack --hf-tokenizer PATH --eod-token TOKEN

`gpt2`: GPT-2's tokenizer.json built from tiktoken's r50k_base ranks (byte-level BPE: pack converts it
to tiktoken); `metaspace`: a SentencePiece-style BPE (Metaspace, byte fallback, BOS) trained on the
corpus (pack runs it through the library); or the path of any tokenizer.json / folder.
Baseline, in its own process: the texts are read and JSON-decoded first (untimed), the library loads
the tokenizer (untimed, truncation and padding off), then `encode_batch(texts)` and
`encode_batch_fast(texts)` are timed with RAYON_NUM_THREADS = N. Pack: the whole command
(`python -m perfkit.cli pack --tokenizer T --workers N`), "internal" from its summary and "wall"
from process start (tokenizer load and verification included). Each side's best of R rounds.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

from perfkit.bench.tokenizer_files import gpt2_tokenizer_json, metaspace_tokenizer_json
from perfkit.prep.jsonl import parse_text_key
from perfkit.prep.tokenizer import TokenizerSpec, resolve_tokenizer
from perfkit.prep.tokenizer_sample import checked_on_corpus

BASELINE = r"""
import json, sys, time
import msgspec
from tokenizers import Tokenizer
path, tok_path = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(tok_path)
tok.no_truncation(); tok.no_padding()
with open(path, "rb") as f:
    texts = [msgspec.json.decode(line)["text"] for line in f if line.strip()]
tok.encode_batch(texts[:64])  # the thread pool up before the clock starts
out = {"docs": len(texts)}
for name in ("encode_batch", "encode_batch_fast"):
    t0, c0 = time.perf_counter(), time.process_time()
    encs = getattr(tok, name)(texts, add_special_tokens=True)
    out[name] = time.perf_counter() - t0
    out[name + "_cpu"] = time.process_time() - c0
    out["tokens"] = sum(len(e.ids) for e in encs)
    del encs
print(json.dumps(out))
"""

BUILT_IN = {"gpt2": "<|endoftext|>", "metaspace": "</s>"}


def tokenizer_file(name: str, corpus: Path, work: Path) -> tuple[Path, str | None]:
    """(tokenizer.json path, its EOD token or None for the user's --eod-token)."""
    if name == "gpt2":
        return gpt2_tokenizer_json(work / "hf_gpt2") / "tokenizer.json", BUILT_IN[name]
    if name == "metaspace":
        return metaspace_tokenizer_json(corpus, work / "hf_metaspace") / "tokenizer.json", BUILT_IN[name]
    path = Path(name)
    return (path / "tokenizer.json" if path.is_dir() else path), None


def route(path: Path, corpus: Path) -> str:
    """Which route pack takes for this tokenizer on this corpus (what its workers will run)."""
    tok = checked_on_corpus(resolve_tokenizer(TokenizerSpec(str(path))), corpus, parse_text_key("text"))
    return "tiktoken conversion" if getattr(tok, "fast", None) is not None else "tokenizers library"


def measure_one(corpus: Path, tok_path: Path, eod: str, workers: int, rounds: int, run_measured) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": str(workers), "RAYON_RS_NUM_CPUS": str(workers)}
    base_best = pack_best = None
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "bench.pbin"
        for _ in range(rounds):  # alternate the two sides; keep each side's best round
            wall, peak, out, _cpu = run_measured([sys.executable, "-c", BASELINE, str(corpus), str(tok_path)], env)
            b = {**json.loads(out), "peak_bytes": peak}
            b["best"] = min(b["encode_batch"], b["encode_batch_fast"])
            if base_best is None or b["best"] < base_best["best"]:
                base_best = b
            wall, peak, out, cpu = run_measured([sys.executable, "-m", "perfkit.cli", "pack", str(corpus), "-o",
                                                 str(dst), "--tokenizer", str(tok_path), "--eod-token", eod,
                                                 "--workers", str(workers), "--force", "--no-progress"])
            m = re.search(r"packed ([\d,]+) documents, ([\d,]+) tokens.* in ([\d.]+) s", out)
            p = {"wall": wall, "peak_bytes": peak, "process_cpu_seconds": cpu,
                 "docs": int(m.group(1).replace(",", "")), "tokens_with_eod": int(m.group(2).replace(",", "")),
                 "internal_seconds": float(m.group(3))}
            if pack_best is None or p["wall"] < pack_best["wall"]:
                pack_best = p
    return {"baseline": base_best, "pack": pack_best}


def run(names: list[str], eod_flag: str | None, corpus: Path, workers: int, rounds: int, run_measured,
        work: Path) -> list[dict]:
    """Measure each tokenizer; print one block per tokenizer; return the records."""
    records = []
    for name in names:
        tok_path, eod = tokenizer_file(name, corpus, work)
        eod = eod_flag or eod or "<|endoftext|>"
        way = route(tok_path, corpus)
        r = measure_one(corpus, tok_path, eod, workers, rounds, run_measured)
        b, p = r["baseline"], r["pack"]
        tok = b["tokens"]
        print(f"\n{name} ({tok_path}): pack runs it through the {way}; {b['docs']:,} docs, {tok:,} tokens "
              "(library, specials included)")
        print(f"{'':44} {'seconds':>8} {'Mtok/s':>8}")
        for label, secs in ((f"tokenizers encode_batch, {workers} threads", b["encode_batch"]),
                            (f"tokenizers encode_batch_fast, {workers} threads", b["encode_batch_fast"]),
                            (f"perfkit pack --workers {workers}, internal", p["internal_seconds"]),
                            (f"perfkit pack --workers {workers}, process wall", p["wall"])):
            print(f"{label:44} {secs:8.2f} {tok / secs / 1e6:8.2f}")
        ratios = {"internal_vs_encode_batch": b["encode_batch"] / p["internal_seconds"],
                  "wall_vs_encode_batch": b["encode_batch"] / p["wall"],
                  "internal_vs_best_library": b["best"] / p["internal_seconds"],
                  "wall_vs_best_library": b["best"] / p["wall"]}
        print("pack throughput / encode_batch throughput: "
              f"{ratios['internal_vs_encode_batch']:.2f} (internal), {ratios['wall_vs_encode_batch']:.2f} (wall); "
              f"/ the faster library call: {ratios['internal_vs_best_library']:.2f} (internal), "
              f"{ratios['wall_vs_best_library']:.2f} (wall)")
        records.append({"tokenizer": name, "tokenizer_file": str(tok_path), "route": way, "eod_token": eod,
                        "baseline": b, "pack": p, **ratios})
    return records
