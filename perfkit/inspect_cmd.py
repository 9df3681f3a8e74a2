"""`perfkit inspect FILE.pbin [--tokenizer TOK] [--doc I] [--json]`: describe and verify a .pbin.

Prints the header, token width, document and token counts, document length statistics, one
document (decoded when a tokenizer is given), the manifest `FILE.pbin.json` when there is one
(tokenizer, sources, text bytes, skipped lines; a stale or damaged one is reported and not used)
and an integrity verdict. Works on perfkit's and Modalities' files alike (a Modalities file has no
manifest). Exit code 0: intact; 1: broken or unreadable (a bad manifest alone does not fail it).

`perfkit inspect FILE --windows S ...` (the training sample order a rank receives) lives in
perfkit/data/inspect_windows_cmd.py; this command hands such calls over unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys

import msgspec
import numpy as np

from perfkit.formats.pbin import HEADER_SIZE, PbinError, PbinFile, read_pbin
from perfkit.formats.pbin_manifest import ManifestError, PbinManifest, manifest_path, read_manifest
from perfkit.prep.tokenizer import DEFAULT_EOD, TokenizerError, TokenizerSpec, resolve_tokenizer

SCAN_TOKENS = 1 << 24     # tokens per step when scanning the whole data segment (bounded memory)
SHOW_CHARS = 600
SHOW_SOURCES = 10         # sources listed in the text report (all of them in --json)


def integrity_problems(pb: PbinFile, eod_id: int | None, n_vocab: int | None) -> list[str]:
    """Problems beyond what read_pbin already refuses (those raise PbinError)."""
    problems = []
    off, ln = pb.doc_offsets, pb.doc_lengths
    if pb.num_docs:
        gaps = off[1:] != off[:-1] + ln[:-1]
        if off[0] != 0 or gaps.any():
            i = 0 if off[0] != 0 else int(np.argmax(gaps)) + 1
            problems.append(f"documents are not contiguous in input order (first at document {i})")
        if int(ln.sum()) != pb.data_len:
            problems.append(f"documents cover {int(ln.sum())} of the {pb.data_len} data bytes")
        empty = ln == 0
        if empty.any():
            problems.append(f"{int(empty.sum())} documents are empty (not even an EOD token)")
        elif eod_id is not None:
            last = np.asarray(pb.tokens[(off + ln) // pb.token_width - 1])
            not_eod = last != eod_id
            if not_eod.any():
                problems.append(f"{int(not_eod.sum())} documents do not end with the EOD token {eod_id} "
                                f"(first: document {int(np.argmax(not_eod))})")
    elif pb.data_len:
        problems.append(f"{pb.data_len} data bytes but no documents in the index")
    if n_vocab is not None and pb.num_tokens:
        top = max(int(pb.tokens[i:i + SCAN_TOKENS].max()) for i in range(0, pb.num_tokens, SCAN_TOKENS))
        if top >= n_vocab:
            problems.append(f"token id {top} is outside the tokenizer's vocabulary ({n_vocab})")
    return problems


def describe(pb: PbinFile, tokenizer=None, doc: int | None = None, eod_token: str = DEFAULT_EOD) -> dict:
    """doc: the document to show; None shows document 0 if there is one (an explicit index must exist)."""
    tok_lens = pb.doc_lengths // pb.token_width
    eod_id = tokenizer.token_id(eod_token) if tokenizer is not None else None
    report = {
        "path": str(pb.path),
        "header": {"data_bytes": pb.data_len, "token_width": pb.token_width},
        "file_bytes": HEADER_SIZE + pb.data_len + pb.index_bytes,
        "index_bytes": pb.index_bytes,
        "documents": pb.num_docs,
        "tokens": pb.num_tokens,
        "doc_tokens": ({"min": int(tok_lens.min()), "mean": float(tok_lens.mean()),
                        "median": float(np.median(tok_lens)), "p99": float(np.percentile(tok_lens, 99)),
                        "max": int(tok_lens.max())} if pb.num_docs else None),
        "tokenizer": tokenizer.label if tokenizer is not None else None,
    }
    if doc is not None and not -pb.num_docs <= doc < pb.num_docs:  # also on a 0-document file
        raise IndexError(f"--doc {doc} is out of range: {pb.path} has {pb.num_docs} documents")
    if pb.num_docs:
        doc = doc or 0
        ids = np.asarray(pb.doc_tokens(doc)).astype(np.int64)
        shown = {"index": doc % pb.num_docs, "tokens": int(ids.size), "first_ids": ids[:16].tolist()}
        if tokenizer is not None:
            text = tokenizer.decode(ids.tolist())
            shown["text"] = text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + " [...]"
        report["document"] = shown
    problems = integrity_problems(pb, eod_id, tokenizer.n_vocab if tokenizer is not None else None)
    report.update(manifest_report(pb))
    report["problems"] = problems
    report["verdict"] = "ok" if not problems else "problems"
    return report


def manifest_report(pb: PbinFile) -> dict:
    """{"manifest": its fields or None, "manifest_problem": why it is not used, or None}."""
    try:
        manifest = read_manifest(pb.path)
    except ManifestError as e:
        return {"manifest": None, "manifest_problem": str(e)}
    if manifest is None:
        return {"manifest": None, "manifest_problem": None}
    problem = None
    if (manifest.documents, manifest.tokens, manifest.token_width) != (pb.num_docs, pb.num_tokens, pb.token_width):
        problem = (f"{manifest_path(pb.path)}: says {manifest.documents:,} documents, {manifest.tokens:,} tokens, "
                   f"width {manifest.token_width}; the .pbin has {pb.num_docs:,}, {pb.num_tokens:,}, {pb.token_width}")
    return {"manifest": msgspec.to_builtins(manifest), "manifest_problem": problem}


def _print_manifest(r: dict) -> None:
    if r.get("manifest_problem"):
        print(f"manifest:    NOT USED: {r['manifest_problem']}")
    if not r.get("manifest"):
        if not r.get("manifest_problem"):
            print("manifest:    none (a .pbin from Modalities or an older perfkit)")
        return
    m = msgspec.convert(r["manifest"], PbinManifest)
    print(f"manifest:    {manifest_path(r['path']).name}, perfkit {m.perfkit_version or '?'}")
    print(f"  tokenizer: {m.tokenizer.describe()}")
    print(f"  text:      {m.text_bytes:,} UTF-8 bytes, {m.bytes_per_token:.3f} bytes/token"
          + (f", shuffled with seed {m.shuffle_seed}" if m.shuffle_seed is not None else ""))
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(m.skipped.items())) or "none"
    print(f"  skipped:   {skipped}")
    print(f"  sources:   {len(m.sources)}")
    for s in m.sources[:SHOW_SOURCES]:
        print(f"    {s.path} ({s.format}, {s.size:,} bytes, {s.documents:,} documents"
              + (f", sha256 {s.sha256[:12]}" if s.sha256 else "") + ")")
    if len(m.sources) > SHOW_SOURCES:
        print(f"    ... {len(m.sources) - SHOW_SOURCES} more (--json lists them all)")


def _print_text(r: dict) -> None:
    h = r["header"]
    print(f"file:        {r['path']} ({r['file_bytes']:,} bytes)")
    print(f"header:      data segment {h['data_bytes']:,} bytes, token width {h['token_width']} bytes")
    print(f"documents:   {r['documents']:,}   tokens: {r['tokens']:,}   index: {r['index_bytes']:,} bytes")
    if r["doc_tokens"]:
        s = r["doc_tokens"]
        print(f"doc tokens:  min {s['min']:,}  mean {s['mean']:,.1f}  median {s['median']:,.0f}  "
              f"p99 {s['p99']:,.0f}  max {s['max']:,}   (EOD included)")
    if "document" in r:
        d = r["document"]
        print(f"document {d['index']}: {d['tokens']:,} tokens, first ids {d['first_ids']}")
        if "text" in d:
            print(f"  decoded ({r['tokenizer']}): {d['text']!r}")
    _print_manifest(r)
    verdict = "ok" if not r["problems"] else "PROBLEMS: " + "; ".join(r["problems"])
    checked = "header, sizes, index" + (", EOD, vocabulary" if r["tokenizer"] else "")
    print(f"integrity:   {verdict} (checked {checked})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--windows" in argv:  # the loader's sample-order view (another module; imported here: it needs torch)
        from perfkit.data import inspect_windows_cmd
        return inspect_windows_cmd.main(argv)
    p = argparse.ArgumentParser(prog="perfkit inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help=".pbin file (perfkit's or Modalities')")
    p.add_argument("--tokenizer", help="decode with it and check EOD / vocabulary (gpt2, cl100k_base, a "
                   "tokenizer.json or its folder, a SentencePiece .model, a .tiktoken file)")
    p.add_argument("--doc", type=int, default=None, help="document to show (default 0; negative counts from the end)")
    p.add_argument("--eod-token", default=DEFAULT_EOD, help="with --tokenizer: the token every document must end with")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--windows", help="see `perfkit inspect FILE --windows S --help`")
    args = p.parse_args(argv)
    try:
        tokenizer = resolve_tokenizer(TokenizerSpec(args.tokenizer)) if args.tokenizer else None
        report = describe(read_pbin(args.file), tokenizer, args.doc, args.eod_token)
    except (PbinError, TokenizerError, IndexError) as e:
        if args.json:
            print(json.dumps({"path": args.file, "verdict": "broken", "problems": [str(e)]}))
        print(f"perfkit inspect: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        _print_text(report)
    return 0 if not report["problems"] else 1
