"""`perfkit pack`: tokenize a JSONL corpus into a Modalities-compatible .pbin at tokenizer speed.

    perfkit pack SRC.jsonl -o DST.pbin --tokenizer gpt2 --workers 64 [--text-key text]
                 [--index SRC.idx] [--eod-token '<|endoftext|>'] [--on-bad-line error|skip] [--force]
    perfkit pack --config tokenization.toml [flags override the file]

Every document is `encode_ordinary(text)` followed by one EOD token (a literal "<|endoftext|>"
inside a text stays text), in input order; the file is byte-identical to what Modalities'
`pack_encoded_data` writes for the same JSONL and tokenizer. With a Hugging Face tokenizer folder /
tokenizer.json or a SentencePiece .model, a document is that tokenizer's own encoding + EOD
(prep/tokenizer_hf.py, prep/tokenizer_sentencepiece.py).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path

from perfkit.errors import UserError
from perfkit.prep.cli_paths import check_input_file, check_output_path, output_folder
from perfkit.prep.jsonl import TextExtractor, parse_text_key
from perfkit.prep.pack_config import load_pack_config
from perfkit.prep.pack_pipeline import (PackAborted, PackFailed, PackStats, plan_byte_chunks,
                                        plan_index_chunks, run_pack)
from perfkit.prep.pack_worker import PackJob
from perfkit.prep.tokenizer import DEFAULT_EOD, TokenizerSpec, parse_special_tokens, resolve_tokenizer
from perfkit.prep.tokenizer_sample import checked_on_corpus

MIN_CHUNK = 64 << 10
MAX_CHUNK = 1 << 20       # bounds in-flight memory: one chunk holds ~3x its size (bytes, str, ids)
CHUNKS_PER_WORKER = 8     # enough chunks that a slow one does not idle the others at the end


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def capped_workers(requested: int, command: str, flag: str = "--workers") -> int:
    """At most the usable CPUs (sched_getaffinity): more processes than CPUs only share them and
    ran 3-6x slower (64 on 2 cores). Says so in one line on stderr when it caps."""
    usable = default_workers()
    if requested <= usable:
        return requested
    print(f"perfkit {command}: {flag} {requested} capped at the {usable} usable CPUs", file=sys.stderr)
    return usable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfkit pack", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", nargs="?", help="JSONL corpus, one JSON object per line")
    p.add_argument("-o", "--output", dest="dst", help="the .pbin to write")
    p.add_argument("--config", help="TOML with the seed's tokenization_config settings (flags override it)")
    p.add_argument("--tokenizer", help="gpt2, a tiktoken encoding name, a Hugging Face tokenizer folder or "
                   "tokenizer.json, a SentencePiece .model, or a .tiktoken file (local files only)")
    p.add_argument("--tokenizer-pattern", help="local .tiktoken only: split regex, or an encoding name whose pattern to use")
    p.add_argument("--special-token", action="append", metavar="TOKEN=ID",
                   help="local .tiktoken only: a special token (repeatable)")
    p.add_argument("--workers", type=int,
                   help=f"worker processes, at most the usable CPUs (default: all of them, here {default_workers()})")
    p.add_argument("--text-key", help="key or dotted path of the text field (default: text; '.text' works too)")
    p.add_argument("--index", help="a raw index (.idx, from `perfkit index`) naming the lines to pack")
    p.add_argument("--eod-token", help=f"token appended to every document (default: {DEFAULT_EOD})")
    p.add_argument("--on-bad-line", choices=("error", "skip"),
                   help="error (default): stop at the first bad line; skip: skip and count per reason")
    p.add_argument("--token-width", type=int, choices=(1, 2, 4),
                   help="bytes per token (default: from the vocabulary size, as Modalities does)")
    p.add_argument("--chunk-mb", type=float, help="JSONL megabytes per work unit (default: automatic)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def _settings(args) -> dict:
    """Merge --config and flags (flags win) into plain values."""
    cfg = load_pack_config(args.config) if args.config else None
    s = cfg.settings if cfg else None
    tok = cfg.tokenizer if cfg else None

    def pick(flag, key):
        if flag is not None:
            return flag
        return getattr(s, key) if s is not None else None

    workers = pick(args.workers, "num_cpus")
    # `is not None`, not `or`: an empty --text-key / --eod-token is an error, not the default.
    text_key = next((k for k in (args.text_key, s and s.text_key, s and s.jq_pattern) if k is not None),
                    "text")
    eod = pick(args.eod_token, "eod_token")
    specials = parse_special_tokens(args.special_token) or tuple((tok.special_tokens if tok else {}).items())
    return {
        "src": pick(args.src, "src_path"),
        "dst": pick(args.dst, "dst_path"),
        "index": pick(args.index, "index_path"),
        "workers": default_workers() if workers is None else workers,
        "workers_key": "settings.num_cpus" if args.workers is None and s is not None else "--workers",
        "eod": DEFAULT_EOD if eod is None else eod,
        "on_bad_line": pick(args.on_bad_line, "on_bad_line") or "error",
        "token_width": pick(args.token_width, "token_width"),
        "text_key": text_key,
        "inputs": [args.config],   # never overwritten, even with --force
        "tokenizer": TokenizerSpec(args.tokenizer or (tok.name if tok else "") or "",
                                   args.tokenizer_pattern or (tok.pattern if tok else None), specials),
    }


def pack(settings: dict, *, force: bool = False, chunk_mb: float | None = None,
         progress: bool = True) -> PackStats:
    """Validate everything cheap up front, then run the pipeline. Raises ValueError subclasses."""
    if not settings["src"]:
        raise UserError("no source JSONL given (positional SRC or settings.src_path)")
    if not settings["dst"]:
        raise UserError("no output given (-o DST.pbin or settings.dst_path)")
    if not settings["tokenizer"].name:
        raise UserError("no tokenizer given (--tokenizer gpt2, or [tokenizer] name in the config)")
    if settings["workers"] < 1:
        raise UserError(f"--workers must be >= 1, got {settings['workers']}")
    if chunk_mb is not None and not (math.isfinite(chunk_mb) and chunk_mb > 0):
        raise UserError(f"--chunk-mb must be a positive number of megabytes, got {chunk_mb}")
    src = check_input_file(settings["src"])
    if settings["index"]:
        check_input_file(settings["index"], "raw index ")
    inputs = [src, settings["index"], *settings.get("inputs", ())]
    key_path = parse_text_key(settings["text_key"])
    TextExtractor(key_path)  # a key msgspec cannot follow fails here, not in every worker
    dst = check_output_path(settings["dst"], force, inputs)
    tok = checked_on_corpus(resolve_tokenizer(settings["tokenizer"]), src, key_path)
    if tok.note:  # a tokenizer.json that runs slower than it could: say why, in one line
        print(f"perfkit pack: note: {tok.note}", file=sys.stderr)
    eod_id = tok.token_id(settings["eod"])
    width = settings["token_width"] or tok.token_width

    size = src.stat().st_size
    workers = capped_workers(settings["workers"], "pack", settings.get("workers_key", "--workers"))
    if chunk_mb:
        chunk = max(1, int(chunk_mb * (1 << 20)))
    else:
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, size // (workers * CHUNKS_PER_WORKER) + 1))
    if settings["index"]:
        from perfkit.prep.index_cmd import read_raw_index
        index = read_raw_index(settings["index"], src_size=size)   # (offsets, lengths)
        tasks = plan_index_chunks(index[1], chunk)
    else:
        index, tasks = None, plan_byte_chunks(size, chunk)

    # The temporary output is created and removed here only; run_pack renames it when complete.
    with output_folder(dst):
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb"):
                pass
        except OSError as e:
            raise UserError(f"{dst}: cannot write in {dst.parent}: {e.strerror or e}") from None
        job = PackJob(src=str(src), src_size=size, tmp_dst=str(tmp), tokenizer=tok.spec,
                      key_path=key_path, eod_id=eod_id, token_width=width,
                      stop_at_first_bad=settings["on_bad_line"] == "error")
        try:
            stats = run_pack(job, tasks, dst, tok, workers, src_label=str(src), index=index,
                             progress=progress)
        finally:
            tmp.unlink(missing_ok=True)
    stats.tokenizer_label, stats.token_width, stats.eod_id = tok.label, width, eod_id
    return stats


def summary_line(stats: PackStats, dst: str) -> str:
    rate = stats.tokens / stats.seconds if stats.seconds > 0 else 0.0
    skipped = sum(stats.skipped.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items()))
    data_bytes = stats.tokens * stats.token_width
    return (f"packed {stats.documents:,} documents, {stats.tokens:,} tokens, {data_bytes:,} bytes "
            f"({stats.token_width} B/token) -> {dst} in {stats.seconds:.2f} s ({rate:,.0f} tokens/s); "
            f"skipped {skipped} lines" + (f" ({detail})" if skipped else ""))


def _raise_terminated(signum, frame):
    raise PackAborted(143, "terminated (SIGTERM)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # From here on SIGTERM unwinds like Ctrl-C: workers stopped, temporary file removed.
    # (The only SIGTERM handler of pack: the pipeline installs none of its own.)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        settings = _settings(args)
        stats = pack(settings, force=args.force, chunk_mb=args.chunk_mb, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("perfkit pack: interrupted (Ctrl-C); no output written", file=sys.stderr)
        return 130
    except PackAborted as e:
        print(f"perfkit pack: {e}; no output written", file=sys.stderr)
        return e.code
    except (UserError, PackFailed, OSError) as e:  # bad input and I/O: one line; a bug keeps its traceback
        print(f"perfkit pack: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary_line(stats, settings["dst"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
