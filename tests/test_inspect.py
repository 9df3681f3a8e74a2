"""`perfkit inspect`: header, counts, stats, a decoded document and an integrity verdict."""

import json
import pickle
import struct

import numpy as np

from perfkit import inspect_cmd
from perfkit.prep import pack_cmd as pack


def make_pbin(write_jsonl, tmp_path):
    src = write_jsonl([{"text": "Hello world"}, {"text": ""}, {"text": "Grüße aus 東京"}])
    dst = tmp_path / "c.pbin"
    assert pack.main([str(src), "-o", str(dst), "--tokenizer", "gpt2", "--no-progress"]) == 0
    return dst


def test_json_report(write_jsonl, tmp_path, capsys):
    dst = make_pbin(write_jsonl, tmp_path)
    capsys.readouterr()
    assert inspect_cmd.main([str(dst), "--tokenizer", "gpt2", "--doc", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["header"] == {"data_bytes": 2 * r["tokens"], "token_width": 2}
    assert r["documents"] == 3 and r["verdict"] == "ok" and r["problems"] == []
    assert r["doc_tokens"]["min"] == 1  # the empty text: its EOD alone
    assert r["document"]["text"] == "Grüße aus 東京<|endoftext|>"


def test_text_report_and_modalities_style_file(tmp_path, capsys):
    # a file written the way Modalities writes it, with 4-byte tokens
    data = np.array([1, 2, 100257, 3, 100257], dtype="<u4").tobytes()
    path = tmp_path / "m.pbin"
    path.write_bytes(struct.pack("<QI", len(data), 4) + data + pickle.dumps([(0, 12), (12, 8)], protocol=4))
    assert inspect_cmd.main([str(path), "--doc", "-1"]) == 0
    out = capsys.readouterr().out
    assert "token width 4 bytes" in out and "documents:   2" in out and "integrity:   ok" in out
    assert "document 1: 2 tokens, first ids [3, 100257]" in out


def test_integrity_problems_are_reported(write_jsonl, tmp_path, capsys):
    data = np.array([5, 6, 50256, 7, 8], dtype="<u2").tobytes()  # second doc lacks its EOD
    path = tmp_path / "gap.pbin"
    path.write_bytes(struct.pack("<QI", len(data), 2) + data + pickle.dumps([(0, 6), (6, 4)], protocol=4))
    assert inspect_cmd.main([str(path), "--tokenizer", "gpt2"]) == 1
    out = capsys.readouterr().out
    assert "1 documents do not end with the EOD token 50256" in out and "documents cover 10 of the 10" not in out
    path.write_bytes(struct.pack("<QI", len(data), 2) + data + pickle.dumps([(0, 6)], protocol=4))
    assert inspect_cmd.main([str(path), "--json"]) == 1
    assert "documents cover 6 of the 10 data bytes" in json.loads(capsys.readouterr().out)["problems"][0]


def test_broken_file_is_named(tmp_path, capsys):
    path = tmp_path / "broken.pbin"
    path.write_bytes(b"\x00" * 5)
    assert inspect_cmd.main([str(path)]) == 1
    assert "broken.pbin" in capsys.readouterr().err


def test_windows_is_delegated(tmp_path, monkeypatch):
    from perfkit.data import inspect_windows_cmd as inspect_samples
    seen = []
    monkeypatch.setattr(inspect_samples, "main", lambda argv: seen.append(argv) or 7)
    assert inspect_cmd.main(["f.pbin", "--windows", "16"]) == 7 and seen == [["f.pbin", "--windows", "16"]]
