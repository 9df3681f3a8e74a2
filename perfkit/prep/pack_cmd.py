"""`perfkit pack`: tokenize a corpus into a Modalities-compatible .pbin at tokenizer speed.

    perfkit pack SRC... -o DST.pbin --tokenizer gpt2 --workers 64 [--text-key text]
                 [--index SRC.idx] [--eod-token '<|endoftext|>'] [--on-bad-line error|skip]
                 [--shuffle-docs --seed N] [--force]
    perfkit pack --config tokenization.toml [flags override the file]

SRC: JSONL, .jsonl.gz, .jsonl.zst or parquet files, folders or globs (prep/sources.py), packed in
the order given. Every document is `encode_ordinary(text)` followed by one EOD token (a literal
"<|endoftext|>" inside a text stays text), in input order; the file is byte-identical to what
Modalities' `pack_encoded_data` writes for the same JSONL and tokenizer. With a Hugging Face
tokenizer folder / tokenizer.json or a SentencePiece .model, a document is that tokenizer's own
encoding + EOD (prep/tokenizer_hf.py, prep/tokenizer_sentencepiece.py). Beside the .pbin goes
DST.pbin.json, the manifest (formats/pbin_manifest.py).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from importlib import metadata
from pathlib import Path

from perfkit.atomic import fsync_dir
from perfkit.errors import UserError
from perfkit.formats.pbin_manifest import PbinManifest, manifest_path, write_manifest
from perfkit.prep import signals
from perfkit.prep.cli_paths import check_input_file, check_output_path, output_folder
from perfkit.prep.decompress import STREAM_ERRORS, Decompressors, iter_decompressed
from perfkit.prep.jsonl import TextExtractor, extract_texts, parse_text_key, split_lines
from perfkit.prep.pack_config import load_pack_config
from perfkit.prep.pack_pipeline import PackAborted, PackFailed, PackStats, run_pack
from perfkit.prep.pack_plan import PlannedSource, TaskPlan
from perfkit.prep.pack_worker import PackJob, WorkerSource
from perfkit.prep.parquet_source import (MAX_TASK_BYTES, RowGroupReader, check_text_column, open_parquet,
                                         plan_row_slices)
from perfkit.prep.sources import JSONL, PARQUET, Source, expand_sources, source_records
from perfkit.prep.tokenizer import DEFAULT_EOD, TokenizerSpec, parse_special_tokens, resolve_tokenizer
from perfkit.prep.tokenizer_sample import SAMPLE_BYTES, SAMPLE_DOCS, checked_on_corpus

MIN_CHUNK = 64 << 10
MAX_CHUNK = 1 << 20       # bounds in-flight memory: one chunk holds ~3x its size (bytes, str, ids)
CHUNKS_PER_WORKER = 8     # enough chunks that a slow one does not idle the others at the end
STREAM_CHUNK = 1 << 20    # decompressed bytes per task of a .gz / .zst source (its size is unknown)
WORKERS_PER_DECOMPRESSOR = 8   # one decompressing thread (~300+ MB/s) outruns ~8 tokenizing workers


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
    p.add_argument("src", nargs="*", help="JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or parquet files, folders "
                   "or globs, packed in this order")
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
    p.add_argument("--shuffle-docs", action="store_true", default=None,
                   help="permute the documents (deterministically, by --seed) before packing")
    p.add_argument("--seed", type=int, help="seed of --shuffle-docs (default 0)")
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
    src = args.src or (s.src_path if s is not None else None)
    return {
        "src": [src] if isinstance(src, str) else list(src or []),
        "dst": pick(args.dst, "dst_path"),
        "index": pick(args.index, "index_path"),
        "workers": default_workers() if workers is None else workers,
        "workers_key": "settings.num_cpus" if args.workers is None and s is not None else "--workers",
        "eod": DEFAULT_EOD if eod is None else eod,
        "on_bad_line": pick(args.on_bad_line, "on_bad_line") or "error",
        "token_width": pick(args.token_width, "token_width"),
        "text_key": text_key,
        "shuffle_docs": bool(pick(args.shuffle_docs, "shuffle_docs")),
        "seed": pick(args.seed, "seed"),
        "inputs": [args.config],   # never overwritten, even with --force
        "tokenizer": TokenizerSpec(args.tokenizer or (tok.name if tok else "") or "",
                                   args.tokenizer_pattern or (tok.pattern if tok else None), specials),
    }


def _check_settings(settings: dict, chunk_mb: float | None) -> None:
    if not settings["src"]:
        raise UserError("no source given (positional SRC..., or settings.src_path)")
    if not settings["dst"]:
        raise UserError("no output given (-o DST.pbin or settings.dst_path)")
    if not settings["tokenizer"].name:
        raise UserError("no tokenizer given (--tokenizer gpt2, or [tokenizer] name in the config)")
    if settings["workers"] < 1:
        raise UserError(f"--workers must be >= 1, got {settings['workers']}")
    if chunk_mb is not None and not (math.isfinite(chunk_mb) and chunk_mb > 0):
        raise UserError(f"--chunk-mb must be a positive number of megabytes, got {chunk_mb}")
    seed = settings.get("seed")
    if seed is not None and not settings.get("shuffle_docs"):
        raise UserError(f"--seed {seed} is only used with --shuffle-docs; add it or drop --seed")
    if seed is not None and seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")


def _plan_source(src: Source, workers: int, column: str, index, chunk: int, last: bool) -> PlannedSource:
    """last: the pack's last source, whose end is the pack's end: only there do a few big tasks
    leave workers idle (before it, the next source's tasks keep them busy)."""
    label = str(src.path)
    if src.format == PARQUET:
        pf = open_parquet(label)
        check_text_column(pf, label, column)
        min_tasks = workers * CHUNKS_PER_WORKER if last else 1
        return PlannedSource(label, row_slices=plan_row_slices(pf, column, min_tasks, min(chunk, MAX_TASK_BYTES)))
    if src.compressed:
        return PlannedSource(label, streamed=True)
    return PlannedSource(label, size=src.size, index_lengths=index[1] if index is not None else None)


def _first_texts(src: Source, key_path: tuple[str, ...]) -> list[str]:
    """The first documents of a compressed or parquet source (what tokenizer_sample reads from a
    JSONL); a broken file gives what it has: the pack itself reports it."""
    if src.format == PARQUET:
        pf = open_parquet(str(src.path))
        check_text_column(pf, str(src.path), ".".join(key_path))
        rows = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else 0
        if not rows:
            return []
        return RowGroupReader(".".join(key_path)).read(str(src.path), 0, 0, min(rows, SAMPLE_DOCS), 0)[0]
    body = b""
    try:
        for piece in iter_decompressed(str(src.path), src.format):
            body += piece
            if len(body) >= SAMPLE_BYTES:
                break
    except STREAM_ERRORS:  # truncated or corrupt: the decompressing thread names it with its line
        pass
    body = body[:body.rfind(b"\n") + 1]
    texts, _good, _bad = extract_texts(split_lines(body, 0), TextExtractor(key_path), stop_at_first_bad=False)
    return texts[:SAMPLE_DOCS]


def _checked_tokenizer(tok, first: Source, key_path: tuple[str, ...]):
    """A converted tokenizer.json verified on the corpus's first documents (tokenizer_sample.py),
    taken from the first source whatever its format."""
    if first.format == JSONL:
        return checked_on_corpus(tok, first.path, key_path)
    check = getattr(tok, "check_sample", None)
    if check is None or getattr(tok, "fast", None) is None:
        return tok   # nothing converted: nothing to verify (as checked_on_corpus decides)
    return check(_first_texts(first, key_path))


def perfkit_version() -> str:
    try:
        return metadata.version("perfkit")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def pack(settings: dict, *, force: bool = False, chunk_mb: float | None = None,
         progress: bool = True) -> PackStats:
    """Validate everything cheap up front, then run the pipeline and write the manifest.
    Raises UserError (bad input), PackFailed, PackAborted."""
    _check_settings(settings, chunk_mb)
    shuffle = bool(settings.get("shuffle_docs"))
    seed = (settings.get("seed") or 0) if shuffle else None
    sources = expand_sources(settings["src"])
    if settings["index"]:
        if len(sources) != 1 or sources[0].format != JSONL:
            raise UserError("--index names the lines of one JSONL file: give exactly one plain .jsonl source "
                            f"(got {len(sources)}: {', '.join(str(s.path) for s in sources[:3])})")
        check_input_file(settings["index"], "raw index ")
    inputs = [*(s.path for s in sources), settings["index"], *settings.get("inputs", ())]
    key_path = parse_text_key(settings["text_key"])
    TextExtractor(key_path)  # a key msgspec cannot follow fails here, not in every worker
    dst = check_output_path(settings["dst"], force, inputs)
    tok = _checked_tokenizer(resolve_tokenizer(settings["tokenizer"]), sources[0], key_path)
    if tok.note:  # a tokenizer.json that runs slower than it could: say why, in one line
        print(f"perfkit pack: note: {tok.note}", file=sys.stderr)
    eod_id = tok.token_id(settings["eod"])
    width = settings["token_width"] or tok.token_width

    workers = capped_workers(settings["workers"], "pack", settings.get("workers_key", "--workers"))
    # A compressed file holds ~4x its size in JSONL; the chunk only balances the work, never the bytes.
    estimate = sum(s.size * (4 if s.compressed else 1) for s in sources)
    if chunk_mb:
        chunk = max(1, int(chunk_mb * (1 << 20)))
    else:
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, estimate // (workers * CHUNKS_PER_WORKER) + 1))
    index = None
    if settings["index"]:
        from perfkit.prep.index_cmd import read_raw_index
        index = read_raw_index(settings["index"], src_size=sources[0].size)   # (offsets, lengths)
    planned = [_plan_source(s, workers, ".".join(key_path), index, chunk, last=i == len(sources) - 1)
               for i, s in enumerate(sources)]

    # The temporary files are created and removed here only; run_pack renames the output when complete.
    with output_folder(dst):
        hidden = f".{dst.name}.{os.getpid()}"
        tmp = dst.with_name(hidden + ".tmp")
        copies = {i: dst.with_name(f"{hidden}.{i}.jsonl") for i, s in enumerate(sources) if s.compressed}
        shuffled = dst.with_name(hidden + ".shuffled.tmp") if shuffle else None
        temps = [tmp, *copies.values(), *([shuffled] if shuffled else [])]
        decompressors = None
        try:
            for path in temps:
                try:
                    with open(path, "wb"):
                        pass
                except OSError as e:
                    raise UserError(f"{dst}: cannot write in {dst.parent}: {e.strerror or e}") from None
            if copies:
                decompressors = Decompressors({i: sources[i] for i in copies}, {i: str(p) for i, p in copies.items()},
                                              chunk, max(1, workers // WORKERS_PER_DECOMPRESSOR))
            plan = TaskPlan(planned, chunk, decompressors)
            job = PackJob(sources=tuple(WorkerSource(str(copies.get(i, s.path)), None if s.compressed else s.size)
                                        for i, s in enumerate(sources)),
                          tmp_dst=str(tmp), tokenizer=tok.spec,
                          key_path=key_path, eod_id=eod_id, token_width=width,
                          stop_at_first_bad=settings["on_bad_line"] == "error")
            stats = run_pack(job, plan, dst, tok, workers, labels=[p.label for p in planned], index=index,
                             progress=progress, shuffle=(seed, str(shuffled)) if shuffle else None)
            stats.tokenizer_label, stats.token_width, stats.eod_id = tok.label, width, eod_id
            stats.source_labels = [p.label for p in planned]
            manifest = PbinManifest(tokenizer=tok.record(eod_id),
                                    sources=source_records(sources, stats.source_documents),
                                    documents=stats.documents, tokens=stats.tokens, text_bytes=stats.text_bytes,
                                    token_width=width, skipped=dict(stats.skipped), shuffle_seed=seed,
                                    perfkit_version=perfkit_version())
            commit_output(Path(stats.finished_path), dst, manifest)
        finally:
            if decompressors is not None:
                decompressors.close()
            for path in temps:
                path.unlink(missing_ok=True)
    return stats


def _stop(signum: int) -> None:
    """What SIGTERM/SIGINT do in pack's main process until the output is committed (signals.py)."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise PackAborted(143, "terminated (SIGTERM)")


def commit_output(finished: Path, dst: Path, manifest: PbinManifest) -> None:
    """Rename the finished file to DST and write its manifest beside it, with SIGTERM and SIGINT
    held (perfkit/prep/signals.py): both files appear, or neither does."""
    with signals.MAIN.held():
        try:
            os.replace(finished, dst)
            fsync_dir(dst.parent)
        except OSError as e:
            raise PackFailed(f"{dst}: cannot write the output: {e.strerror or e}; nothing was written") from None
        try:
            write_manifest(dst, manifest)
        except OSError as e:  # the .pbin without its manifest would look like a Modalities file: remove both
            dst.unlink(missing_ok=True)
            manifest_path(dst).unlink(missing_ok=True)
            raise UserError(f"{manifest_path(dst)}: cannot write the manifest: {e.strerror or e}; "
                            "nothing was written") from None
        signals.MAIN.committed = dst  # from here a signal is only noted: the output is complete


def source_lines(stats: PackStats) -> list[str]:
    """One summary line per source (printed when there are several)."""
    return [f"  {label}: {docs:,} documents, {tokens:,} tokens, skipped {skipped} lines"
            for label, docs, tokens, skipped in zip(stats.source_labels, stats.source_documents,
                                                     stats.source_tokens, stats.source_skipped)]


def summary_line(stats: PackStats, dst: str) -> str:
    rate = stats.tokens / stats.seconds if stats.seconds > 0 else 0.0
    skipped = sum(stats.skipped.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items()))
    data_bytes = stats.tokens * stats.token_width
    return (f"packed {stats.documents:,} documents, {stats.tokens:,} tokens, {data_bytes:,} bytes "
            f"({stats.token_width} B/token) -> {dst} in {stats.seconds:.2f} s ({rate:,.0f} tokens/s); "
            f"skipped {skipped} lines" + (f" ({detail})" if skipped else ""))


def main(argv: list[str] | None = None) -> int:
    # intermixed: sources may come before and after the flags (`pack a.jsonl -o X b.jsonl`)
    args = build_parser().parse_intermixed_args(argv)
    # From here on SIGTERM unwinds like Ctrl-C: workers stopped, temporary file removed.
    # (The only signal handlers of pack: the pipeline installs none of its own.)
    previous = signals.MAIN.install(_stop)
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
        for s, handler in previous.items():
            signal.signal(s, handler)
    if len(stats.source_labels) > 1:
        print("\n".join(source_lines(stats)))
    print(summary_line(stats, settings["dst"]))
    late = signals.MAIN.late
    if late is not None:  # came while or after the output was committed: it is complete
        print(f"perfkit pack: {signal.Signals(late).name} received after {settings['dst']} and its "
              "manifest were written completely", file=sys.stderr)
        return 128 + late
    return 0


if __name__ == "__main__":
    sys.exit(main())
