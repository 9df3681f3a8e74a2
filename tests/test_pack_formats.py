"""The same documents as JSONL, .jsonl.gz, .jsonl.zst or parquet, or split across files of mixed
formats, pack to the same bytes as one JSONL (issue 14); a broken file of each format stops with
`path:line|row: reason`, exit 1, and leaves nothing behind."""

import gzip
import json
import pickle
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from perfkit.formats.pbin import read_pbin
from perfkit.prep import pack_cmd as pack
from perfkit.prep.pack_messages import ReadLines, ReadRows
from perfkit.prep.parquet_source import plan_row_slices
from test_pack import TRICKY, reference_pbin

random.seed(14)
DOCS = [r["text"] for r in TRICKY if "text" in r] + [
    "".join(random.choice("abc é東😀\n ") for _ in range(random.randint(0, 300))) for _ in range(150)]


def run(*args):
    return pack.main([*map(str, args), "--tokenizer", "gpt2", "--no-progress"])


def jsonl_bytes(texts):
    return b"".join(json.dumps({"text": t, "id": i}, ensure_ascii=False).encode() + b"\n" for i, t in enumerate(texts))


def write(path, texts, row_group_size=40):
    """texts in the format that path's name says (gzip/zstd in two members/frames, parquet with
    several row groups and an extra column)."""
    body = jsonl_bytes(texts)
    half = body.rfind(b"\n", 0, len(body) // 2) + 1
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(body[:half]) + gzip.compress(body[half:]))
    elif path.name.endswith(".zst"):
        c = zstandard.ZstdCompressor()
        path.write_bytes(c.compress(body[:half]) + c.compress(body[half:]))
    elif path.name.endswith(".parquet"):
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=row_group_size)
    else:
        path.write_bytes(body)
    return path


def no_output_left(folder, dst):
    return not dst.exists() and not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture
def expected(tmp_path_factory):
    """The reference .pbin of DOCS as one JSONL (json.loads + tiktoken + pickle, test_pack.py)."""
    return reference_pbin(write(tmp_path_factory.mktemp("ref") / "all.jsonl", DOCS))


@pytest.mark.parametrize("name", ["c.jsonl.gz", "c.jsonl.zst", "c.parquet", "c.jsonl"])
def test_each_format_gives_the_bytes_of_one_jsonl(tmp_path, expected, name):
    src = write(tmp_path / name, DOCS)
    dst = tmp_path / "out.pbin"
    # tiny chunks: many tasks, boundaries inside the compressed streams and the row groups
    assert run(src, "-o", dst, "--workers", "2", "--chunk-mb", "0.002") == 0
    assert dst.read_bytes() == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary copy left


@pytest.mark.parametrize("per_thread", [8, 1], ids=["one-decompressor", "two-decompressors"])
def test_mixed_formats_split_across_files_keep_the_order(tmp_path, expected, monkeypatch, per_thread):
    # per_thread 1: two decompressing threads for 2 workers, so boundaries arrive out of source order
    monkeypatch.setattr(pack, "WORKERS_PER_DECOMPRESSOR", per_thread)
    parts = [DOCS[:30], DOCS[30:31], DOCS[31:90], [], DOCS[90:]]
    names = ["1.jsonl.zst", "2.jsonl", "3.parquet", "4.jsonl.gz", "5.jsonl.gz"]
    srcs = [write(tmp_path / n, p) for n, p in zip(names, parts)]
    dst = tmp_path / "mixed.pbin"
    assert run(*srcs, "-o", dst, "--workers", "2", "--chunk-mb", "0.003") == 0
    assert dst.read_bytes() == expected


@pytest.mark.slow
def test_spawned_workers_read_parquet_and_compressed_copies(tmp_path, expected, monkeypatch):
    # macOS starts workers with spawn: the job alone must let them find every source
    import multiprocessing as mp

    from perfkit.prep import pack_pipeline
    monkeypatch.setattr(pack_pipeline, "_mp_context", lambda: mp.get_context("spawn"))
    srcs = [write(tmp_path / "a.parquet", DOCS[:80]), write(tmp_path / "b.jsonl.zst", DOCS[80:])]
    assert run(*srcs, "-o", tmp_path / "s.pbin", "--workers", "2", "--chunk-mb", "0.003") == 0
    assert (tmp_path / "s.pbin").read_bytes() == expected


def test_one_big_row_group_is_cut_into_row_slices(tmp_path, expected):
    src = write(tmp_path / "one.parquet", DOCS, row_group_size=10_000)
    pf = pq.ParquetFile(src)
    assert pf.metadata.num_row_groups == 1
    slices = plan_row_slices(pf, "text", 16)          # 2 workers x 8 tasks each
    assert len(slices) == 16 and slices[0].row_start == 0 and slices[-1].row_stop == len(DOCS)
    assert all(a.row_stop == b.row_start for a, b in zip(slices, slices[1:]))
    assert run(src, "-o", tmp_path / "o.pbin", "--workers", "2") == 0
    assert (tmp_path / "o.pbin").read_bytes() == expected
    # enough row groups: never cut (a cut costs another decode of the group in another worker)
    many = write(tmp_path / "many.parquet", DOCS, row_group_size=10)
    groups = pq.ParquetFile(many).metadata.num_row_groups
    assert [(s.row_group, s.row_start) for s in plan_row_slices(pq.ParquetFile(many), "text", groups)] == \
        [(g, 0) for g in range(groups)]


def test_row_groups_are_cut_to_about_the_task_bytes(tmp_path, expected):
    # pack passes its JSONL chunk size: a group of more than WHOLE_GROUP_CHUNKS chunks of text is
    # cut into slices of about that size
    src = write(tmp_path / "g.parquet", DOCS, row_group_size=len(DOCS) // 2)
    pf = pq.ParquetFile(src)
    sizes = [pf.metadata.row_group(g).column(1).total_uncompressed_size for g in range(2)]  # "text"
    chunk = min(sizes) // 10                                  # 10 or more chunks in each group
    slices = plan_row_slices(pf, "text", 2, max_task_bytes=chunk)
    assert len(slices) == sum(-(-n // chunk) for n in sizes) and {s.row_group for s in slices} == {0, 1}
    assert sum(s.row_stop - s.row_start for s in slices) == len(DOCS)
    assert all(a.row_stop == b.row_start for a, b in zip(slices, slices[1:]) if a.row_group == b.row_group)
    assert run(src, "-o", tmp_path / "o.pbin", "--workers", "2", "--chunk-mb", str(chunk / 2**20)) == 0
    assert (tmp_path / "o.pbin").read_bytes() == expected


def test_small_row_groups_stay_whole_when_there_are_enough_of_them(tmp_path, expected):
    # Hugging Face datasets' layout (1,000-row groups): many groups of a few chunks each; cutting
    # them would make each of several workers decode the same group
    src = write(tmp_path / "g.parquet", DOCS, row_group_size=len(DOCS) // 4)
    pf = pq.ParquetFile(src)
    groups = pf.metadata.num_row_groups
    chunk = max(pf.metadata.row_group(g).column(1).total_uncompressed_size for g in range(groups)) // 3
    assert [(s.row_group, s.row_start) for s in plan_row_slices(pf, "text", groups, chunk)] == \
        [(g, 0) for g in range(groups)]                  # 3 chunks each, 4 groups for 4 tasks: whole
    cut = plan_row_slices(pf, "text", 2 * groups, chunk)   # too few groups for the tasks wanted
    assert len(cut) >= 2 * groups and sum(s.row_stop - s.row_start for s in cut) == len(DOCS)
    assert run(src, "-o", tmp_path / "o.pbin", "--workers", "2", "--chunk-mb", str(chunk / 2**20)) == 0
    assert (tmp_path / "o.pbin").read_bytes() == expected


def test_only_the_last_source_cuts_small_groups_for_the_tail(tmp_path, expected):
    # a source before the last is followed by more tasks, so its few small groups stay whole; the
    # last source's end is the pack's end, where too few tasks would idle workers
    from perfkit.prep.sources import expand_sources

    a = write(tmp_path / "a.parquet", DOCS[:80])      # 2 groups of 40 rows
    b = write(tmp_path / "b.parquet", DOCS[80:])
    chunk = max(pq.ParquetFile(p).metadata.row_group(g).column(1).total_uncompressed_size
                for p in (a, b) for g in range(2))
    first, last = expand_sources([str(a), str(b)])
    kept = pack._plan_source(first, 2, "text", None, chunk, last=False).row_slices
    cut = pack._plan_source(last, 2, "text", None, chunk, last=True).row_slices
    assert [(s.row_group, s.row_start) for s in kept] == [(0, 0), (1, 0)]
    assert len(cut) >= 2 * pack.CHUNKS_PER_WORKER and sum(s.row_stop - s.row_start for s in cut) == len(DOCS) - 80
    assert run(a, b, "-o", tmp_path / "o.pbin", "--workers", "2", "--chunk-mb", str(chunk / 2**20)) == 0
    assert (tmp_path / "o.pbin").read_bytes() == expected


READ_PEAK = """
import re, sys
from perfkit.prep.parquet_source import RowGroupReader, _pyarrow
def peak():  # VmHWM: this process image's own peak (ru_maxrss carries the parent's across exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
_pyarrow()   # its import is not the read
before = peak()
texts, bad, n = RowGroupReader("text").read(sys.argv[1], 0, 0, 2000, 0)
assert len(texts) == 2000 and not bad
print(peak() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_a_worker_streams_a_big_row_group_instead_of_reading_it_whole(tmp_path):
    # pyarrow's default reads the group's whole column chunk before the first batch: 10 GB per
    # worker for a 10 GB group. 2,000 rows (8 MB of text) of a 160 MB uncompressed group: the
    # whole chunk read first grew the process by ~196 MB here, the streamed read by ~40 MB.
    rows = 40_000
    texts = [f"{i:08d}" + "x" * 4000 for i in range(rows)]   # ~160 MB, unique: no dictionary
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), path, compression="none", use_dictionary=False)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    out = subprocess.run([sys.executable, "-c", READ_PEAK, str(path)], capture_output=True, text=True,
                         check=True)
    grew = int(out.stdout.strip())
    assert grew < 80e6, f"reading 2,000 rows grew the process by {grew / 1e6:.0f} MB"


def test_parquet_tasks_stay_a_few_integers():
    # the no-deadlock property of pack_messages.py holds for the new task kinds too
    assert len(pickle.dumps(ReadRows(2**40, 2**20, 2**30, 2**40, 2**40, 2**50))) < 512
    assert len(pickle.dumps(ReadLines(2**40, 2**50, 2**50, 2**20))) < 512


def _truncated(path, fmt):
    full = write(path.with_name("full." + fmt), DOCS * 40)   # several zstd blocks, not one
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("fmt,kind", [("jsonl.gz", "gzip"), ("jsonl.zst", "zstd")])
def test_truncated_stream_names_file_and_line(tmp_path, capsys, fmt, kind):
    src = _truncated(tmp_path / f"t.{fmt}", fmt)
    dst = tmp_path / "o.pbin"
    assert run(src, "-o", dst, "--workers", "2", "--on-bad-line", "skip") == 1
    err = capsys.readouterr().err
    line = err.split(f"{src}:")[1].split(":")[0]
    assert line.isdigit() and 1 < int(line) < len(DOCS) * 40 and f": truncated {kind} stream" in err
    assert no_output_left(tmp_path, dst)


@pytest.mark.parametrize("name,content,reason", [
    ("n.jsonl.gz", b"plain text, not gzip\n", "corrupt gzip stream"),
    ("n.jsonl.zst", b"plain text, not zstd\n", "corrupt zstd stream"),
])
def test_not_compressed_at_all(tmp_path, capsys, name, content, reason):
    src = tmp_path / name
    src.write_bytes(content)
    assert run(src, "-o", tmp_path / "o.pbin") == 1
    assert f"{src}:1: {reason}" in capsys.readouterr().err
    assert no_output_left(tmp_path, tmp_path / "o.pbin")


def test_corrupt_gzip_crc(tmp_path, capsys):
    src = write(tmp_path / "c.jsonl.gz", DOCS)
    data = bytearray(src.read_bytes())
    data[-6] ^= 0xFF   # the last member's CRC-32 (the 8-byte trailer is CRC-32, then the size)
    src.write_bytes(bytes(data))
    assert run(src, "-o", tmp_path / "o.pbin") == 1
    assert "corrupt gzip stream" in capsys.readouterr().err
    assert no_output_left(tmp_path, tmp_path / "o.pbin")


def test_bad_parquet_files(tmp_path, capsys):
    good = write(tmp_path / "g.parquet", DOCS)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "int.parquet")
    cases = {cut: f"{cut}: not a readable parquet file",
             tmp_path / "nocol.parquet": f"{tmp_path / 'nocol.parquet'}: no string column 'text' (columns: body (string))",
             tmp_path / "int.parquet": f"{tmp_path / 'int.parquet'}: no string column 'text' (columns: text (int64))"}
    for src, message in cases.items():
        assert run(good, src, "-o", tmp_path / "o.pbin") == 1
        assert message in capsys.readouterr().err
        assert no_output_left(tmp_path, tmp_path / "o.pbin")


@pytest.mark.parametrize("kind", ["large_string", "string_view", "dictionary"])
def test_every_arrow_text_type_of_a_utf8_column(tmp_path, expected, kind):
    # polars writes large_string, pandas' categorical gives a dictionary, and a file can store any
    # of them as its arrow schema: each is the same text
    arr = {"large_string": pa.array(DOCS, pa.large_string()), "string_view": pa.array(DOCS, pa.string_view()),
           "dictionary": pa.array(DOCS).dictionary_encode()}[kind]
    src = tmp_path / f"{kind}.parquet"
    pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": arr}), src, row_group_size=40)
    assert pq.ParquetFile(src).schema_arrow.field("text").type == arr.type   # what the reader sees
    assert run(src, "-o", tmp_path / "o.pbin", "--workers", "2") == 0
    assert (tmp_path / "o.pbin").read_bytes() == expected


def test_a_binary_column_is_not_text(tmp_path, capsys):
    src = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([d.encode() for d in DOCS], pa.binary())}), src)
    assert run(src, "-o", tmp_path / "o.pbin") == 1
    assert f"{src}: no string column 'text' (columns: text (binary))" in capsys.readouterr().err


def test_corrupt_pages_inside_an_intact_file(tmp_path, capsys):
    # the footer reads fine, a page of the second row group does not: the worker reading it names
    # the file, the group's first row and pyarrow's reason (read through the 1 MiB buffer)
    good = write(tmp_path / "g.parquet", DOCS)
    col = pq.ParquetFile(good).metadata.row_group(1).column(1)          # "text" of group 1
    start = col.dictionary_page_offset or col.data_page_offset
    for name, pos in (("header", col.data_page_offset + 2), ("dictionary", start + 30)):
        body = bytearray(good.read_bytes())
        for k in range(16):
            body[pos + k] ^= 0x5A
        bad = tmp_path / f"{name}.parquet"
        bad.write_bytes(bytes(body))
        assert run(bad, "-o", tmp_path / "o.pbin", "--workers", "2") == 1
        err = capsys.readouterr().err
        assert f"{bad}:row 41: cannot read row group 1: " in err, err
        assert no_output_left(tmp_path, tmp_path / "o.pbin")


def test_null_text_is_a_bad_row(tmp_path, capsys):
    src = tmp_path / "null.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "c", None]}), src, row_group_size=2)
    assert run(src, "-o", tmp_path / "o.pbin") == 1
    assert f"{src}:row 3: text is null" in capsys.readouterr().err
    assert no_output_left(tmp_path, tmp_path / "o.pbin")
    assert run(src, "-o", tmp_path / "o.pbin", "--on-bad-line", "skip") == 0
    out = capsys.readouterr()
    assert f"{src}:row 5: text is null (skipped)" in out.err and "(text is null: 2)" in out.out
    ref = write(tmp_path / "abc.jsonl", ["a", "b", "c"])
    assert (tmp_path / "o.pbin").read_bytes() == reference_pbin(ref)


def test_a_compressed_file_named_like_jsonl_is_read_as_what_it_is(tmp_path, expected):
    # issue 14: a gzip stream named .jsonl failed as ":1: invalid UTF-8"
    for name in ("c.jsonl.gz", "c.jsonl.zst", "c.parquet"):
        misnamed = tmp_path / f"{name.split('.')[-1]}-inside.jsonl"
        misnamed.write_bytes(write(tmp_path / name, DOCS).read_bytes())
        assert run(misnamed, "-o", tmp_path / "o.pbin", "--force", "--workers", "2") == 0
        assert (tmp_path / "o.pbin").read_bytes() == expected


@pytest.mark.parametrize("name", ["c.jsonl.gz", "c.parquet"])
def test_a_converted_tokenizer_is_checked_on_the_first_documents_of_any_format(tmp_path, capsys, name):
    # the corpus sample of prep/tokenizer_sample.py, taken from a compressed or parquet first source:
    # a split regex that drops '@' passes the load-time checks and only the corpus shows it
    from hf_tokenizers import llama3_style_bpe, reference_ids

    folder = llama3_style_bpe(tmp_path / "gappy", split_regex=r"[^@\s]+|\s+")
    texts = ["mail me at someone@example.org", "no at-sign here"]
    src = write(tmp_path / name, texts)
    dst = tmp_path / "o.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", str(folder), "--eod-token", "<|end_of_text|>",
                      "--no-progress"]) == 0
    assert "corpus document 0" in capsys.readouterr().err
    ids = reference_ids(folder, texts)
    assert read_pbin(dst).doc_tokens(0)[:-1].tolist() == list(ids[0])
