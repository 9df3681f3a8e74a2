"""Side by side with the real Modalities: same corpus, same cores, same tokenizer; are the .pbin bytes equal?

    python -m perfkit.bench.modalities_compare --modalities-venv /tmp/modvenv [--corpus FILE] [--workers N]
        [--rounds R] [--repeat K] [--edge-cases] [--json [OUT.jsonl]] [--keep DIR]
        [--perfkit-tokenizer gpt2|folder | --hf-folder DIR | --sp-model FILE.model] [--eod-token TOKEN]

1. Tokenizer: builds a local HF GPT-2 tokenizer folder (vocab.json, merges.txt, tokenizer.json,
   tokenizer_config.json, special_tokens_map.json; bench/tokenizer_files.py) in a temporary
   directory from tiktoken's r50k_base ranks alone, and checks in the Modalities venv, through
   Modalities' own PreTrainedHFTokenizer wrapper, that it encodes a corpus sample (and a few
   edge-case strings) to the ids tiktoken's encode_ordinary gives. Modalities packs with that folder
   (`pretrained_hf_tokenizer`); perfkit with `--tokenizer gpt2`, or with the same folder
   (`--perfkit-tokenizer folder`: perfkit's tokenizer.json route). `--hf-folder DIR` / `--sp-model
   FILE` compare any Hugging Face folder / SentencePiece model instead (`pretrained_sp_tokenizer`).
2. Runs the seed tutorial's commands in that venv (`modalities data create_raw_index`, then
   `modalities data pack_encoded_data tokenization_config.yaml` with num_cpus=N), and `perfkit pack`
   (this python's `perfkit` command, --workers N), each timed from process start to exit.
3. Compares the two .pbin files byte for byte and names the first difference (header, data or
   index; token and document), then prints the wall-time table. --edge-cases packs a small
   synthetic corpus instead (an empty text, a literal "<|endoftext|>"), to show where the two differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tiktoken

from perfkit.bench.records import append_jsonl
from perfkit.bench.tokenizer_files import EOT, gpt2_tokenizer_json
from perfkit.formats.pbin import HEADER_SIZE, read_pbin

DEFAULT_JSON = Path("bench/results/modalities_compare.jsonl")

# Runs in the Modalities venv: encode texts with Modalities' own HF tokenizer wrapper.
HF_ENCODE = r"""
import json, sys, importlib.metadata as md
from modalities.tokenization.tokenizer_wrapper import PreTrainedHFTokenizer
tok = PreTrainedHFTokenizer(sys.argv[1], truncation=False, padding=False)
texts = json.load(open(sys.argv[2]))
json.dump({"ids": [tok.tokenize(t) for t in texts], "vocab_size": tok.vocab_size,
           "eod_id": tok.get_token_id("<|endoftext|>"), "class": type(tok.tokenizer).__name__,
           "versions": {p: md.version(p) for p in ("modalities", "transformers", "tokenizers")},
           "python": sys.version.split()[0]}, open(sys.argv[3], "w"))
"""

EDGE_STRINGS = ["I'll say it's 'S'hakespeare's", "naïve café 日本語 🙂 — «ok»", "a  \n\n   b\t\t c   ",
                "12345 3.14159 x2", "line\r\nbreak", "  leading and trailing  ", f"mid {EOT} text", ""]


def first_diff(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def verify_tokenizer(python: Path, folder: Path, texts: list[str], work: Path) -> dict:
    """tiktoken encode_ordinary vs the HF folder (through Modalities' wrapper) on texts + EDGE_STRINGS."""
    enc = tiktoken.get_encoding("r50k_base")
    allt = texts + EDGE_STRINGS
    (work / "texts.json").write_text(json.dumps(allt))
    subprocess.run([str(python), "-c", HF_ENCODE, str(folder), str(work / "texts.json"), str(work / "hf.json")],
                   check=True, env=offline_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hf = json.loads((work / "hf.json").read_text())
    diffs = []
    for i, (t, h) in enumerate(zip(allt, hf["ids"])):
        tk = enc.encode_ordinary(t)
        if tk != h:
            j = first_diff(tk, h)
            diffs.append({"text": i if i < len(texts) else f"edge:{t!r}", "token": j,
                          "tiktoken": tk[j:j + 6], "hf": h[j:j + 6]})
    corpus_diffs = [d for d in diffs if isinstance(d["text"], int)]
    return {"sample_texts": len(texts), "sample_chars": sum(map(len, texts)),
            "sample_tokens": sum(len(enc.encode_ordinary(t)) for t in texts), "corpus_diffs": corpus_diffs,
            "edge_diffs": [d for d in diffs if not isinstance(d["text"], int)], "hf_class": hf["class"],
            "vocab_size": hf["vocab_size"], "eod_id": hf["eod_id"], "versions": hf["versions"],
            "venv_python": hf["python"]}


# ---------------------------------------------------------------- running and timing the commands


def offline_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run cmd to completion; wall seconds from spawn to exit, CPU seconds of its process tree."""
    load = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {rc}: {' '.join(cmd)}\n{tail}")
    return {"wall": wall, "cpu": cpu, "load1_before": load[0], "load_before": list(load)}


def hf_tokenizer_block(folder: Path) -> str:
    return f"""tokenizer:
  component_key: tokenizer
  variant_key: pretrained_hf_tokenizer
  config:
    pretrained_model_name_or_path: {folder}
    padding: false
    truncation: false
"""


def sp_tokenizer_block(model: Path) -> str:
    return f"""tokenizer:
  component_key: tokenizer
  variant_key: pretrained_sp_tokenizer
  config:
    tokenizer_model_file: {model}
"""


def modalities_config(corpus: Path, idx: Path, dst: Path, tokenizer_block: str, workers: int,
                      eod: str = EOT) -> str:
    """The seed's tokenization_config.yaml, paths, num_cpus, EOD and tokenizer filled in."""
    return f"""settings:
  src_path: {corpus}
  dst_path: {dst}
  index_path: {idx}
  jq_pattern: .text
  num_cpus: {workers}
  eod_token: {json.dumps(eod)}
  processing_batch_size: 10
  raw_samples_queue_size: 300
  processed_samples_queue_size: 300

{tokenizer_block}"""


def run_round(venv: Path, corpus: Path, tokenizer_block: str, perfkit_tokenizer: str, eod: str, workers: int,
              work: Path, k: int) -> dict:
    mod, perfkit = venv / "bin" / "modalities", shutil.which("perfkit")
    if perfkit is None:
        raise FileNotFoundError("no `perfkit` command on PATH (pip install -e .)")
    idx, mpbin, ppbin = work / f"mod{k}.idx", work / f"mod{k}.pbin", work / f"perfkit{k}.pbin"
    cfg = work / f"tokenization_config{k}.yaml"
    cfg.write_text(modalities_config(corpus.resolve(), idx, mpbin, tokenizer_block, workers, eod))
    r = {}
    # alternate which side goes first, so neither always gets the warmer page cache
    order = ["perfkit", "modalities"] if k % 2 else ["modalities", "perfkit"]
    for side in order:
        if side == "modalities":
            # import cost alone (not counted in the total): the CLI imports torch, transformers, ...
            r["mod_startup"] = timed([str(mod), "data", "--help"], work / f"mod_help{k}.log", offline_env())
            r["mod_index"] = timed([str(mod), "data", "create_raw_index", "--index_path", str(idx), str(corpus)],
                                   work / f"mod_index{k}.log", offline_env())
            r["mod_pack"] = timed([str(mod), "data", "pack_encoded_data", str(cfg)], work / f"mod_pack{k}.log",
                                  offline_env())
            log = (work / f"mod_pack{k}.log").read_text(errors="replace")
            r["mod_pack"]["warnings"] = sum(("Could not process" in ln or "empty sample" in ln)
                                            for ln in log.splitlines())
        else:
            r["perfkit"] = timed([perfkit, "pack", str(corpus), "-o", str(ppbin), "--tokenizer", perfkit_tokenizer,
                                  "--eod-token", eod, "--workers", str(workers), "--no-progress"],
                                 work / f"perfkit{k}.log")
    r["mod_total"] = r["mod_index"]["wall"] + r["mod_pack"]["wall"]
    r["paths"] = (mpbin, ppbin)
    return r


# ---------------------------------------------------------------- byte comparison


def compare_pbin(mod_path: Path, perf_path: Path) -> dict:
    """Byte-for-byte; the first differing offset is placed in the Modalities file's layout."""
    a, b = np.memmap(mod_path, np.uint8, "r"), np.memmap(perf_path, np.uint8, "r")
    n, off, step = min(a.size, b.size), None, 1 << 24
    for s in range(0, n, step):
        e = min(s + step, n)
        ne = np.flatnonzero(a[s:e] != b[s:e])
        if ne.size:
            off = s + int(ne[0])
            break
    if off is None and a.size != b.size:
        off = n
    out = {"identical": off is None, "bytes_modalities": int(a.size), "bytes_perfkit": int(b.size)}
    try:
        pm, pp = read_pbin(mod_path), read_pbin(perf_path)
    except ValueError as e:  # PbinError
        out["read_error"] = str(e)
        pm = pp = None
    if pm is not None:
        out.update(docs_modalities=pm.num_docs, docs_perfkit=pp.num_docs, tokens_modalities=pm.num_tokens,
                   tokens_perfkit=pp.num_tokens, token_width=[pm.token_width, pp.token_width])
    if off is None:
        return out
    out["first_diff_offset"] = off
    data_len = int.from_bytes(bytes(a[:8]), "little") if a.size >= 8 else 0
    if off < HEADER_SIZE:
        out["part"] = "header (data length)" if off < 8 else "header (token width)"
        if pm is not None and pm.token_width == pp.token_width:  # where do the token streams part?
            k = min(pm.num_tokens, pp.num_tokens)
            ne = np.flatnonzero(np.asarray(pm.tokens[:k]) != np.asarray(pp.tokens[:k]))
            if ne.size or pm.num_tokens != pp.num_tokens:
                out.update(_token_place(pm, pp, int(ne[0]) if ne.size else k))
    elif off < HEADER_SIZE + data_len:
        out["part"] = "data"
        if pm is not None:
            out.update(_token_place(pm, pp, (off - HEADER_SIZE) // pm.token_width))
    else:
        out["part"] = "index"
        out["index_byte"] = off - HEADER_SIZE - data_len
        if pm is not None:
            om, op = np.c_[pm.doc_offsets, pm.doc_lengths], np.c_[pp.doc_offsets, pp.doc_lengths]
            k = min(len(om), len(op))
            ne = np.flatnonzero((om[:k] != op[:k]).any(axis=1))
            out["index_entry"] = int(ne[0]) if ne.size else k
    return out


def _token_place(pm, pp, t: int) -> dict:
    """Token t of the data segment: which document (by the Modalities index), and the ids on each side."""
    w = pm.token_width
    doc = max(0, int(np.searchsorted(pm.doc_offsets, t * w, side="right")) - 1) if pm.num_docs else -1
    return {"token": t, "doc": doc, "token_in_doc": t - int(pm.doc_offsets[doc]) // w if doc >= 0 else t,
            "ids_modalities": pm.tokens[t:t + 6].tolist(), "ids_perfkit": pp.tokens[t:t + 6].tolist()}


def edge_corpus(path: Path) -> Path:
    """A small corpus with the two inputs where the pipelines may part: a literal EOT and an empty text."""
    texts = [f"Document {i}: Now is the winter of our discontent, made glorious summer." for i in range(30)]
    texts[3] = f"A literal {EOT} inside a text."
    texts[5] = f"A text that ends with {EOT}"
    texts[14] = ""
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perfkit.bench.modalities_compare",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--modalities-venv", type=Path, required=True, help="venv with modalities installed")
    ap.add_argument("--corpus", type=Path, default=Path("data/raw/shakespeare_val.jsonl"))
    ap.add_argument("--workers", type=int, default=2, help="Modalities num_cpus = perfkit --workers")
    ap.add_argument("--rounds", type=int, default=1, help="runs per side; the best wall time is reported")
    ap.add_argument("--verify-docs", type=int, default=200, help="corpus documents for the tokenizer check")
    ap.add_argument("--repeat", type=int, default=1, help="concatenate the corpus this many times first")
    ap.add_argument("--edge-cases", action="store_true", help="pack a small synthetic corpus instead")
    ap.add_argument("--json", type=Path, nargs="?", const=DEFAULT_JSON, help=f"append a JSON line (default "
                    f"{DEFAULT_JSON})")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    ap.add_argument("--perfkit-tokenizer", choices=("gpt2", "folder"), default="gpt2",
                    help="with the GPT-2 folder: perfkit packs with tiktoken's gpt2 (default) or with the "
                    "same Hugging Face folder (tokenizer.json) Modalities reads")
    ap.add_argument("--hf-folder", type=Path, help="instead of GPT-2: this Hugging Face tokenizer folder, on both "
                    "sides (Modalities pretrained_hf_tokenizer, perfkit --tokenizer FOLDER)")
    ap.add_argument("--sp-model", type=Path, help="instead of GPT-2: this SentencePiece .model on both sides "
                    "(Modalities pretrained_sp_tokenizer)")
    ap.add_argument("--eod-token", default=EOT, help=f"with --hf-folder / --sp-model (default {EOT})")
    args = ap.parse_args(argv)
    venv_py = args.modalities_venv / "bin" / "python"
    if not (args.modalities_venv / "bin" / "modalities").is_file():
        print(f"modalities_compare: no bin/modalities in {args.modalities_venv}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="modcmp_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = edge_corpus(work / "edge_cases.jsonl") if args.edge_cases else args.corpus
        if not corpus.is_file():
            print(f"modalities_compare: {corpus}: no such file", file=sys.stderr)
            return 1
        if args.repeat > 1:
            data, corpus = corpus.read_bytes(), work / f"{corpus.stem}_x{args.repeat}.jsonl"
            corpus.write_bytes(data * args.repeat)

        corpus_bytes = corpus.stat().st_size
        tok, eod = {}, args.eod_token
        if args.sp_model:
            block, perfkit_tok, label = sp_tokenizer_block(args.sp_model.resolve()), str(args.sp_model), "sp"
        elif args.hf_folder:
            block, perfkit_tok, label = hf_tokenizer_block(args.hf_folder.resolve()), str(args.hf_folder), "hf"
        else:
            eod, t0 = EOT, time.perf_counter()
            folder = gpt2_tokenizer_json(work / "hf_gpt2")  # vocab.json, merges.txt and tokenizer.json
            t_conv = time.perf_counter() - t0
            with open(corpus, "rb") as f:
                texts = [json.loads(ln)["text"] for _, ln in zip(range(args.verify_docs), f) if ln.strip()]
            tok = verify_tokenizer(venv_py, folder, texts, work)
            print(f"tokenizer folder from r50k ranks: {t_conv:.1f} s; {tok['hf_class']} via Modalities' wrapper: "
                  f"vocab_size {tok['vocab_size']}, eod id {tok['eod_id']}")
            print(f"  corpus sample: {tok['sample_texts']} texts, {tok['sample_tokens']:,} tokens, "
                  f"{len(tok['corpus_diffs'])} differ from tiktoken encode_ordinary")
            for d in tok["corpus_diffs"][:5] + tok["edge_diffs"]:
                print(f"  differs: text {d['text']} at token {d['token']}: tiktoken {d['tiktoken']} hf {d['hf']}")
            block = hf_tokenizer_block(folder)
            perfkit_tok = "gpt2" if args.perfkit_tokenizer == "gpt2" else str(folder)
            label = "hf" if args.perfkit_tokenizer == "folder" else "tiktoken gpt2"
        print(f"Modalities: {block.split('variant_key: ')[1].split()[0]}; perfkit: --tokenizer {perfkit_tok} "
              f"({label}); EOD {eod!r}")

        rounds = [run_round(args.modalities_venv, corpus, block, perfkit_tok, eod, args.workers, work, k)
                  for k in range(args.rounds)]
        cmp = compare_pbin(*rounds[0]["paths"])
        for r in rounds:
            r["identical"] = compare_pbin(*r["paths"])["identical"]
        same_rounds = len({r["identical"] for r in rounds}) == 1

    best = lambda key: min(rounds, key=lambda r: r[key]["wall"])[key]  # noqa: E731
    mi, mp, pk, ms = best("mod_index"), best("mod_pack"), best("perfkit"), best("mod_startup")
    mtot = min(r["mod_total"] for r in rounds)
    size = corpus_bytes
    name = "edge cases (synthetic)" if args.edge_cases else f"{args.corpus} x{args.repeat}"
    print(f"\ncorpus {name}"
          f"{f', {size / 1e6:.1f} MB' if size else ''}; workers {args.workers}; {os.cpu_count()} CPUs; "
          f"best of {args.rounds}; load avg now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'command':44} {'wall s':>7} {'cpu s':>7} {'load1 before':>13}")
    for name, r in (("modalities data create_raw_index", mi), ("modalities data pack_encoded_data", mp),
                    (f"perfkit pack --workers {args.workers}", pk)):
        print(f"{name:44} {r['wall']:7.2f} {r['cpu']:7.2f} {r['load1_before']:13.2f}")
    print(f"{'Modalities total (index + pack)':44} {mtot:7.2f} {mi['cpu'] + mp['cpu']:7.2f}")
    print(f"{'(modalities data --help: CLI start-up alone)':44} {ms['wall']:7.2f} {ms['cpu']:7.2f} "
          f"{ms['load1_before']:13.2f}")
    print(f"ratio Modalities total / perfkit pack: {mtot / pk['wall']:.2f}x")
    if mp.get("warnings"):
        print(f"Modalities pack_encoded_data warned {mp['warnings']} time(s) (a batch it dropped)")

    if cmp["identical"]:
        verdict = "identical"
        print(f"\n.pbin byte for byte: IDENTICAL ({cmp['bytes_perfkit']:,} bytes, {cmp.get('docs_perfkit')} docs, "
              f"{cmp.get('tokens_perfkit'):,} tokens)")
    else:
        verdict = f"differ at byte {cmp['first_diff_offset']} ({cmp['part']})"
        print(f"\n.pbin byte for byte: DIFFER; first difference at byte {cmp['first_diff_offset']:,} in the "
              f"{cmp['part']}; sizes {cmp['bytes_modalities']:,} (Modalities) vs {cmp['bytes_perfkit']:,} (perfkit)")
        if "doc" in cmp:
            print(f"  first differing token {cmp['token']:,} = document {cmp['doc']} token {cmp['token_in_doc']}: "
                  f"Modalities {cmp['ids_modalities']} perfkit {cmp['ids_perfkit']}")
        if "index_entry" in cmp:
            print(f"  index byte {cmp['index_byte']}, first differing entry {cmp['index_entry']}")
        if "docs_modalities" in cmp:
            print(f"  documents {cmp['docs_modalities']} vs {cmp['docs_perfkit']}, tokens "
                  f"{cmp['tokens_modalities']:,} vs {cmp['tokens_perfkit']:,}")
    if not same_rounds:
        print("warning: the rounds did not all agree on identical/different", file=sys.stderr)

    if args.json:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        rec = {"bench": "modalities_compare", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "corpus": "edge_cases" if args.edge_cases else str(args.corpus),
               "repeat": args.repeat, "bytes": size, "workers": args.workers,
               "rounds": args.rounds, "cpus": os.cpu_count(), "machine": platform.machine(),
               "python": platform.python_version(), "perfkit_commit": git, "tokenizer": tok,
               "perfkit_tokenizer": perfkit_tok, "modalities_tokenizer": block, "eod_token": eod,
               "perfkit_cmd": shutil.which("perfkit"), "modalities_startup": ms, "modalities_index": mi,
               "modalities_pack": mp, "modalities_total_wall": mtot, "perfkit_pack": pk,
               "ratio_wall": mtot / pk["wall"], "all_rounds": [{k: v for k, v in r.items() if k != "paths"}
                                                               for r in rounds],
               "load_after": list(os.getloadavg()), "compare": cmp, "verdict": verdict}
        append_jsonl(args.json, [rec])
    return 0


if __name__ == "__main__":
    sys.exit(main())
