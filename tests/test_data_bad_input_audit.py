"""Bad input to `perfkit index / pack / inspect` found by an audit (cases not covered elsewhere):
each gets a one-line `path[:line]: reason`, exit 1, no traceback and no output left behind."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import tiktoken

from perfkit import inspect_cmd
from perfkit.prep import cli_paths, index_cmd as rawindex, pack_cmd as pack
from perfkit.formats.pbin import read_pbin

GOOD = [{"text": f"document number {i}"} for i in range(4)]
BOM = "UTF-8 byte-order mark (BOM)"


def run_pack(src, dst, *extra):
    return pack.main([str(src), "-o", str(dst), "--tokenizer", "gpt2", "--no-progress", *extra])


def run_index(src, dst, *extra):
    return rawindex.main([str(src), "-o", str(dst), *extra])


def nothing_written(tmp_path, *paths):
    return not any(p.exists() for p in paths) and not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("case,line_no,reason", [
    ("bom", 1, BOM),
    ("deep", 3, "JSON nested too deeply"),          # was a RecursionError traceback
    # A line split in two plus a line holding two objects: once packed silently as 3 documents.
    ("merged", 2, "malformed JSON"),
])
def test_bad_lines_pack_and_index(write_jsonl, tmp_path, capsys, case, line_no, reason):
    good = [json.dumps(g).encode() for g in GOOD]
    bad = {
        "bom": [b"\xef\xbb\xbf" + good[0]] + good[1:],
        "deep": good[:2] + [b'{"text": "t", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"] + good[2:],
        "merged": good[:1] + [b'{"text": "a", "x": [1', b'2]}', b'{"text": "b"},{"text": "c"}'] + good[1:],
    }[case]
    src = write_jsonl(bad)
    pbin, idx = tmp_path / "o.pbin", tmp_path / "o.idx"
    assert run_pack(src, pbin, "--workers", "2") == 1
    assert run_index(src, idx, "--workers", "2") == 1
    err = capsys.readouterr().err.splitlines()  # one line each, no traceback
    assert len(err) == 2
    assert err[0].startswith(f"perfkit pack: {src}:{line_no}: {reason}")
    assert err[1].startswith(f"perfkit index: {src}:{line_no}: {reason}")
    assert nothing_written(tmp_path, pbin, idx)
    n_bad = {"bom": 1, "deep": 1, "merged": 3}[case]
    assert run_pack(src, pbin, "--on-bad-line", "skip") == 0
    out = capsys.readouterr().out
    assert f"packed {len(bad) - n_bad} documents" in out and f"skipped {n_bad} lines" in out
    assert read_pbin(pbin).num_docs == len(GOOD) - (case == "bom")


def test_line_longer_than_the_read_ahead(write_jsonl, tmp_path, capsys):
    big = "word " * 600_000  # 3 MB: one line spans several chunks and read-ahead steps
    src = write_jsonl([GOOD[0], {"text": big}, GOOD[1]])
    dst = tmp_path / "big.pbin"
    assert run_pack(src, dst, "--workers", "2", "--chunk-mb", "0.5") == 0
    pb = read_pbin(dst)
    enc = tiktoken.get_encoding("r50k_base")
    assert pb.num_docs == 3
    assert pb.doc_tokens(1).tolist() == enc.encode_ordinary(big) + [50256]


def test_input_that_is_not_a_regular_file(tmp_path, capsys):
    folder = tmp_path / "corpus.jsonl"
    folder.mkdir()
    assert run_pack(folder, tmp_path / "a.pbin") == 1
    assert run_index(folder, tmp_path / "a.idx") == 1
    assert run_pack(os.devnull, tmp_path / "b.pbin") == 1
    assert inspect_cmd.main([str(folder)]) == 1
    err = capsys.readouterr().err.splitlines()
    # a folder is a source (issue 14: its corpus files in sorted order); this one holds none
    assert err[0].startswith(f"perfkit pack: {folder}: is a directory holding no corpus files (*.jsonl, ")
    assert err[1:] == [
                   f"perfkit index: {folder}: is a directory, not a file",
                   f"perfkit pack: {os.devnull}: not a regular file (a pipe or device); write it to a file first",
                   f"perfkit inspect: {folder}: not a regular file"]


def test_unreadable_input_is_named(write_jsonl, tmp_path, capsys, monkeypatch):
    # chmod 000 does not stop root, so the refusal the kernel would give is simulated.
    src = write_jsonl(GOOD)

    def denied(path, mode="r"):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cli_paths, "open", denied, raising=False)
    assert run_pack(src, tmp_path / "o.pbin") == 1
    assert capsys.readouterr().err.strip() == f"perfkit pack: {src}: cannot read the file: Permission denied"


def test_output_never_overwrites_an_input(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    original = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    idx = tmp_path / "c.idx"
    assert run_index(src, idx) == 0
    idx_bytes = idx.read_bytes()
    capsys.readouterr()
    assert run_pack(src, src, "--force") == 1                  # --force does not allow it
    assert run_pack(link, src, "--force") == 1                 # nor another name for the same file
    assert run_pack(src, idx, "--index", str(idx), "--force") == 1
    assert run_index(src, src, "--force") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"perfkit pack: {src}: the output is the input file {src}; choose another output path",
                   f"perfkit pack: {src}: the output is the input file {link}; choose another output path",
                   f"perfkit pack: {idx}: the output is the input file {idx}; choose another output path",
                   f"perfkit index: {src}: the output is the input file {src}; choose another output path"]
    assert src.read_bytes() == original and idx.read_bytes() == idx_bytes


def test_output_paths(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    folder = tmp_path / "out"
    folder.mkdir()
    assert run_pack(src, folder, "--force") == 1
    assert run_index(src, src / "x.idx") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"perfkit pack: {folder}: is a directory; give the output file's path",
                   f"perfkit index: {src / 'x.idx'}: cannot create the output folder: {src} is a file"]
    # a missing folder is created for a run that succeeds, and removed again when the run fails
    assert run_pack(src, tmp_path / "new" / "sub" / "o.pbin") == 0
    assert read_pbin(tmp_path / "new" / "sub" / "o.pbin").num_docs == len(GOOD)
    bad = write_jsonl(GOOD + [b"{oops"], name="bad.jsonl")
    assert run_pack(bad, tmp_path / "gone" / "sub" / "o.pbin") == 1
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("args,message", [
    (["--chunk-mb", "-1"], "--chunk-mb must be a positive number of megabytes, got -1.0"),
    (["--chunk-mb", "0"], "--chunk-mb must be a positive number of megabytes, got 0.0"),
    (["--chunk-mb", "inf"], "--chunk-mb must be a positive number of megabytes, got inf"),   # was a traceback
    (["--chunk-mb", "nan"], "--chunk-mb must be a positive number of megabytes, got nan"),
    (["--text-key", ""], "--text-key '': expected a key"),                 # was silently 'text'
    (["--text-key", ".a[0].text"], "--text-key '.a[0].text': '[' is not supported"),
    (["--text-key", '."text"'], "--text-key '.\"text\"': '\"' is not supported"),  # was a worker traceback
])
def test_bad_pack_options(write_jsonl, tmp_path, capsys, args, message):
    dst = tmp_path / "o.pbin"
    assert run_pack(write_jsonl(GOOD), dst, *args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"perfkit pack: {message}") and err.count("\n") == 1
    assert nothing_written(tmp_path, dst)


def test_bad_index_options(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    assert run_index(src, tmp_path / "o.idx", "--workers", "0") == 1   # was taken as the default
    assert "perfkit index: --workers must be >= 1, got 0" in capsys.readouterr().err
    # A key msgspec cannot follow made every pool worker fail at start: Pool restarted them forever.
    r = subprocess.run([sys.executable, "-m", "perfkit.prep.index_cmd", str(src), "-o", str(tmp_path / "q.idx"),
                        "--text-key", '."text"', "--workers", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "'\"' is not supported" in r.stderr and "Traceback" not in r.stderr
    assert nothing_written(tmp_path, tmp_path / "o.idx", tmp_path / "q.idx")


def test_zero_length_index_entry_is_a_blank_line(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    idx = tmp_path / "z.idx"
    idx.write_bytes(pickle.dumps([(0, 0)], protocol=4))  # was packed as 0 documents, exit 0
    dst = tmp_path / "o.pbin"
    assert run_pack(src, dst, "--index", str(idx)) == 1
    assert f"{src}: index entry 1 (byte offset 0): blank line" in capsys.readouterr().err
    assert nothing_written(tmp_path, dst)


@pytest.mark.parametrize("line,message", [
    ('text_key = ""', "$.settings.text_key '': expected a key"),
    ('jq_pattern = ".a[0].text"', "$.settings.jq_pattern '.a[0].text': '[' is not supported"),
    ('eod_token = ""', "$.settings.eod_token must not be empty"),
])
def test_config_values_name_their_key(write_jsonl, tmp_path, capsys, line, message):
    src = write_jsonl(GOOD)
    cfg = tmp_path / "tok.toml"
    cfg.write_text(f'[settings]\nsrc_path = "{src}"\ndst_path = "{tmp_path / "o.pbin"}"\n{line}\n'
                   '[tokenizer]\nname = "gpt2"\n')
    assert pack.main(["--config", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"perfkit pack: {cfg}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "o.pbin").exists()


def test_config_is_not_overwritten(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    cfg = tmp_path / "tok.toml"
    cfg.write_text(f'[settings]\nsrc_path = "{src}"\n[tokenizer]\nname = "gpt2"\n')
    before = cfg.read_bytes()
    assert pack.main(["--config", str(cfg), "-o", str(cfg), "--force", "--no-progress"]) == 1
    assert "the output is the input file" in capsys.readouterr().err and cfg.read_bytes() == before


def test_inspect_explicit_doc_on_empty_file_and_wrong_file(write_jsonl, tmp_path, capsys):
    empty = tmp_path / "e.pbin"
    assert run_pack(write_jsonl([]), empty) == 0
    capsys.readouterr()
    assert inspect_cmd.main([str(empty)]) == 0                   # no --doc: fine on 0 documents
    assert inspect_cmd.main([str(empty), "--doc", "5"]) == 1     # was ignored, exit 0
    src = write_jsonl(GOOD, name="not.pbin")
    assert inspect_cmd.main([str(src)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"perfkit inspect: --doc 5 is out of range: {empty} has 0 documents"
    assert err[1].startswith(f"perfkit inspect: {src}: header token width is ")
    assert err[1].endswith("(is it a .pbin file at all?)")


@pytest.mark.parametrize("where", ["tokens", "index"])
def test_full_output_disk_names_the_output_and_leaves_nothing(write_jsonl, tmp_path, capsys, monkeypatch, where):
    """ENOSPC while a worker writes tokens (forked workers inherit the patch) or while the main
    process writes the index: the message names DST (not the input), exit 1, no file left."""
    import errno

    from perfkit.prep import pack_pipeline, pack_worker

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack_worker if where == "tokens" else pack_pipeline, "pwrite_all", full)
    src, dst = write_jsonl(GOOD), tmp_path / "out" / "c.pbin"
    assert run_pack(src, dst, "--workers", "2") == 1
    err = capsys.readouterr().err
    assert f"perfkit pack: {dst}: cannot write the output: No space left on device" in err
    assert "Traceback" not in err and nothing_written(tmp_path, dst)
