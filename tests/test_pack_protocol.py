"""The pack worker protocol cannot deadlock (issue 12, item 1): `pack --index` over many short
lines hung forever, main blocked sending a task's offset arrays while both workers were blocked
sending their token counts. Each run here is a subprocess with a timeout, so a regression fails
instead of hanging CI."""

import functools
import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import tiktoken

from perfkit.prep.pack_messages import ReadEntries, WriteTokens
from perfkit.prep.pack_pipeline import MAX_OUTSTANDING, plan_byte_chunks, plan_index_chunks

LINE = b'{"text": "a"}\n'
# The repro had 300,000 lines; on this 2-core box the old code hung from about 1M (14 MB):
# main, blocked sending a task of ~75k entries (1.2 MB), and both workers, blocked sending counts.
N_LINES = 1_000_000
TIMEOUT_S = 180          # a healthy run takes under 10 s, even on 2 busy cores


@functools.lru_cache(maxsize=2)
def expected_pbin(n_docs: int) -> bytes:
    """n_docs documents of text "a": each is its token and EOD (GPT-2, 2 bytes per token)."""
    a = tiktoken.get_encoding("r50k_base").encode_ordinary("a")  # r50k_base: GPT-2's ranks
    doc = np.array(a + [50256], dtype="<u2")
    data = np.tile(doc, n_docs).tobytes()
    step = doc.nbytes
    index = pickle.dumps([(i * step, step) for i in range(n_docs)], protocol=4)
    return struct.pack("<QI", len(data), 2) + data + index


def cli(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "perfkit.cli", *args], capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"perfkit {' '.join(args)} hung for {TIMEOUT_S} s (the pack protocol deadlocked)")


@pytest.fixture(scope="module")
def many_lines(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    src, idx = folder / "t.jsonl", folder / "t.idx"
    src.write_bytes(LINE * N_LINES)
    r = cli("index", str(src), "-o", str(idx), "--workers", "2")
    assert r.returncode == 0, r.stderr
    return src, idx


@pytest.mark.parametrize("chunk", [[], ["--chunk-mb", "0.5"]], ids=["default-chunk", "small-chunks"])
def test_pack_index_with_many_short_lines_finishes(many_lines, tmp_path, chunk):
    src, idx = many_lines
    dst = tmp_path / "t.pbin"
    r = cli("pack", str(src), "--index", str(idx), "-o", str(dst), "--tokenizer", "gpt2", "--workers", "2",
            "--no-progress", *chunk)
    assert r.returncode == 0, r.stderr
    assert dst.read_bytes() == expected_pbin(N_LINES)


def test_pack_config_with_index_path_finishes(many_lines, tmp_path):
    src, idx = many_lines
    dst = tmp_path / "cfg.pbin"
    cfg = tmp_path / "tok.toml"
    cfg.write_text(f'[settings]\nsrc_path = "{src}"\ndst_path = "{dst}"\nindex_path = "{idx}"\nnum_cpus = 2\n'
                   '[tokenizer]\nname = "gpt2"\n')
    r = cli("pack", "--config", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert dst.read_bytes() == expected_pbin(N_LINES)


def test_spawned_workers_read_the_index_too(write_jsonl, tmp_path, monkeypatch):
    # macOS starts workers with spawn: the index must reach them without the fork.
    import multiprocessing as mp

    from perfkit.prep import pack_cmd as pack, pack_pipeline
    monkeypatch.setattr(pack_pipeline, "_mp_context", lambda: mp.get_context("spawn"))
    src = tmp_path / "s.jsonl"
    src.write_bytes(LINE * 5000)
    idx = tmp_path / "s.idx"
    from perfkit.prep import index_cmd as rawindex
    assert rawindex.main([str(src), "-o", str(idx), "--workers", "1"]) == 0
    dst = tmp_path / "s.pbin"
    assert pack.main([str(src), "--index", str(idx), "-o", str(dst), "--tokenizer", "gpt2", "--workers", "2",
                      "--chunk-mb", "0.01", "--no-progress"]) == 0
    assert dst.read_bytes() == expected_pbin(5000)


def test_main_to_worker_messages_stay_small_for_any_index():
    """The invariant behind "cannot deadlock": all a worker can have unread from main (a task and a
    write message per outstanding chunk) fits even a one-page (4 KiB) pipe buffer, whatever the
    index size, so main never blocks in send()."""
    lengths = np.full(10_000_000, 13, dtype=np.int64)
    tasks = plan_index_chunks(lengths, 1 << 20)
    assert all(isinstance(t, ReadEntries) for t in tasks)
    assert sum(t.stop - t.first for t in tasks) == lengths.size
    biggest_task = max(len(pickle.dumps(t)) for t in tasks)
    biggest_write = len(pickle.dumps(WriteTokens(2**62, 2**62)))
    assert MAX_OUTSTANDING * (biggest_task + biggest_write) < 4096
    assert max(len(pickle.dumps(t)) for t in plan_byte_chunks(2**50, 2**40)[-5:]) < 512


def test_the_first_failure_in_input_order_is_the_one_reported(tmp_path, monkeypatch, capsys):
    """Two chunks fail, the later one first (the earlier one is slow): the error names the earlier
    chunk, as a bad line does, whatever order the workers finish in (it used to be whichever
    failure arrived first, or "worker died (exit code 0)" when its exit was seen before its message)."""
    import time

    from perfkit.prep import pack_cmd, pack_worker

    # ~6 MB in 1 MB chunks: chunks 0-2 go to worker 0, chunks 3-5 to worker 1 (MAX_OUTSTANDING = 3)
    assert MAX_OUTSTANDING == 3
    lines = [json.dumps({"text": f"doc {i} " + "x" * 2000}) for i in range(3000)]  # ~2 kB each
    lines[10] = json.dumps({"text": "FAIL_EARLY " + "x" * 2000})   # chunk 0, worker 0
    lines[1800] = json.dumps({"text": "FAIL_LATE " + "x" * 2000})  # chunk 3 (bytes 3.6 M), worker 1
    src = tmp_path / "two_failures.jsonl"
    src.write_text("\n".join(lines) + "\n")
    real = pack_worker.tokenize_texts

    def failing(texts, *args, **kwargs):  # runs in the forked workers
        if any(t.startswith("FAIL_EARLY") for t in texts):
            time.sleep(1.0)
            raise RuntimeError("planted failure in the first chunk")
        if any(t.startswith("FAIL_LATE") for t in texts):
            raise RuntimeError("planted failure in the last chunk")
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(pack_worker, "tokenize_texts", failing)
    dst = tmp_path / "out.pbin"
    rc = pack_cmd.main([str(src), "-o", str(dst), "--tokenizer", "gpt2", "--workers", "2", "--chunk-mb", "1",
                        "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{src}: pack worker failed on chunk 0: " in err and "planted failure in the first chunk" in err, err
    assert "last chunk" not in err and not dst.exists()
