"""Issue 13 item 1 for the data and model commands: only a perfkit.errors.UserError (bad input)
becomes a one-line message; a ValueError from a bug keeps its traceback (it propagates out of the
command's main, which the CLI then shows)."""

from __future__ import annotations

import json

import pytest

from perfkit.checkpoint import export_cmd
from perfkit.data import inspect_windows_cmd
from perfkit import generate_cmd
from perfkit.prep import index_cmd, pack_cmd


def _planted(*args, **kwargs):
    raise ValueError("planted bug")


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(4)))
    return p


def test_pack_bug_keeps_its_traceback_and_bad_input_stays_one_line(jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pack_cmd, "pack", _planted)
    with pytest.raises(ValueError, match="planted bug"):
        pack_cmd.main([str(jsonl), "-o", str(tmp_path / "o.pbin"), "--tokenizer", "gpt2", "--workers", "1"])
    monkeypatch.undo()
    rc = pack_cmd.main([str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.pbin"), "--tokenizer", "gpt2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"perfkit pack: {tmp_path / 'missing.jsonl'}: no such file"], err


def test_index_bug_keeps_its_traceback_and_bad_input_stays_one_line(jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(index_cmd, "build_raw_index", _planted)
    with pytest.raises(ValueError, match="planted bug"):
        index_cmd.main([str(jsonl), "-o", str(tmp_path / "c.idx"), "--workers", "1"])
    monkeypatch.undo()
    rc = index_cmd.main([str(jsonl), "-o", str(tmp_path / "c.idx"), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--workers must be >= 1" in err[0], err


def test_export_and_generate_bugs_keep_their_tracebacks(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    ckpt.mkdir(parents=True)
    monkeypatch.setattr(export_cmd, "refuse_output_inside", lambda *a: None)
    monkeypatch.setattr(export_cmd, "resolve_checkpoint", lambda s: ckpt)
    monkeypatch.setattr(export_cmd, "export_checkpoint", _planted)
    with pytest.raises(ValueError, match="planted bug"):
        export_cmd.main([str(ckpt), "-o", str(tmp_path / "m.pt")])
    monkeypatch.setattr(generate_cmd, "load_model", _planted)
    with pytest.raises(ValueError, match="planted bug"):
        generate_cmd.main([str(ckpt), "--prompt", "hi", "--device", "cpu"])
    monkeypatch.undo()
    rc = generate_cmd.main([str(tmp_path / "nothing.pt"), "--prompt", "hi", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("perfkit generate: ") and "Traceback" not in err[0], err


def test_inspect_windows_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(inspect_windows_cmd, "describe", _planted)
    with pytest.raises(ValueError, match="planted bug"):
        inspect_windows_cmd.main(["any.pbin", "--windows", "64"])
