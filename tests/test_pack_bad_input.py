"""Every bad input of issue 2: a clear `path:line: reason`, a non-zero exit and no DST left behind;
with --on-bad-line skip, bad lines are skipped and counted per reason (never silently)."""

import json

import pytest

from perfkit.prep import pack_cmd as pack
from perfkit.formats.pbin import read_pbin

GOOD = [{"text": f"document number {i}"} for i in range(6)]

BAD_LINES = {
    "malformed JSON": b'{"text": "unterminated',
    "not a JSON object": b'["text", "in a list"]',
    "missing text field": b'{"body": "no text key"}',
    "text field is not a string": b'{"text": 42}',
    "invalid UTF-8": b'{"text": "bad \xff\xfe bytes"}',
    "blank line": b"   ",
}


def run(src, dst, *extra):
    return pack.main([str(src), "-o", str(dst), "--tokenizer", "gpt2", "--no-progress", *extra])


def no_output_left(tmp_path, dst):
    return not dst.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_bad_line_stops_with_path_line_reason(write_jsonl, tmp_path, capsys, reason):
    src = write_jsonl(GOOD[:3] + [BAD_LINES[reason]] + GOOD[3:])
    dst = tmp_path / "out.pbin"
    assert run(src, dst, "--workers", "2", "--chunk-mb", "0.00005") == 1
    assert f"{src}:4: {reason}" in capsys.readouterr().err
    assert no_output_left(tmp_path, dst)


def test_truncated_last_line(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD + [b'{"text": "cut off in the mid'], final_newline=False)
    dst = tmp_path / "out.pbin"
    assert run(src, dst) == 1
    assert f"{src}:7: truncated last line" in capsys.readouterr().err
    assert no_output_left(tmp_path, dst)


def test_first_bad_line_in_file_order_is_reported(write_jsonl, tmp_path, capsys):
    lines = [json.dumps(g).encode() for g in GOOD * 40]
    lines[150] = b"{oops"
    lines[30] = b'{"text": null}'
    src = write_jsonl(lines)
    assert run(src, tmp_path / "o.pbin", "--workers", "3", "--chunk-mb", "0.0002") == 1
    err = capsys.readouterr().err
    assert f"{src}:31: text field is not a string" in err and ":151:" not in err


def test_skip_counts_every_reason_and_keeps_the_good_documents(write_jsonl, tmp_path, capsys):
    records = []
    for reason, line in BAD_LINES.items():
        records += [GOOD[len(records) % 6], line]
    src = write_jsonl(records + [b'{"text": "no newline and cut'], final_newline=False)
    dst = tmp_path / "skip.pbin"
    assert run(src, dst, "--on-bad-line", "skip", "--workers", "2", "--chunk-mb", "0.0001") == 0
    out, err = capsys.readouterr()
    assert "skipped 7 lines" in out
    for reason in list(BAD_LINES) + ["truncated last line"]:
        assert f"{reason}: 1" in out
    assert err.count("(skipped)") == 7
    good_src = write_jsonl([r for r in records if isinstance(r, dict)], name="good.jsonl")
    assert run(good_src, tmp_path / "good.pbin") == 0
    assert dst.read_bytes() == (tmp_path / "good.pbin").read_bytes()


def test_existing_dst_needs_force(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    dst = tmp_path / "out.pbin"
    dst.write_bytes(b"precious")
    assert run(src, dst) == 1
    assert "exists; pass --force" in capsys.readouterr().err and dst.read_bytes() == b"precious"
    assert run(src, dst, "--force") == 0
    assert read_pbin(dst).num_docs == len(GOOD)


def test_failed_run_keeps_the_previous_dst(write_jsonl, tmp_path):
    src = write_jsonl(GOOD + [b"{broken"])
    dst = tmp_path / "out.pbin"
    dst.write_bytes(b"old")
    assert run(src, dst, "--force") == 1
    assert dst.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))


def test_token_id_overflow_is_an_error_not_a_wrap(write_jsonl, tmp_path, capsys):
    src = write_jsonl(GOOD)
    dst = tmp_path / "narrow.pbin"
    assert run(src, dst, "--token-width", "1") == 1
    assert "does not fit the 1-byte token width" in capsys.readouterr().err
    assert no_output_left(tmp_path, dst)


@pytest.mark.parametrize("args,message", [
    (["--tokenizer", "no_such_encoding"], "unknown tokenizer 'no_such_encoding'"),
    (["--tokenizer", "/nonexistent/x.tiktoken"], "does not exist"),
    (["--eod-token", "<|not a token|>"], "is not a single token"),
    (["--text-key", "a..b"], "--text-key"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bad_options_are_explained(write_jsonl, tmp_path, capsys, args, message):
    src = write_jsonl(GOOD)
    rc = pack.main([str(src), "-o", str(tmp_path / "o.pbin"), "--tokenizer", "gpt2", *args])
    assert rc == 1 and message in capsys.readouterr().err


def test_missing_source(tmp_path, capsys):
    assert run(tmp_path / "nope.jsonl", tmp_path / "o.pbin") == 1
    assert "nope.jsonl: no such file" in capsys.readouterr().err
