"""Ctrl-C, SIGTERM, or a worker killed with SIGKILL: a non-zero exit within seconds, no hang,
no DST and no temporary file left, no worker left running."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DEMO_TRAIN = Path(__file__).resolve().parents[1] / "data" / "raw" / "shakespeare_train.jsonl"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc to find workers")


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """The demo corpus three times (~30 MB): packing it takes several seconds on 2 cores."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    data = DEMO_TRAIN.read_bytes()
    path.write_bytes(data * 3)
    return path


def start_pack(src: Path, dst: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-m", "perfkit.cli", "pack", str(src), "-o", str(dst),
                             "--tokenizer", "gpt2", "--workers", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = children_of(proc.pid)
        if len(kids) >= 2:
            time.sleep(0.3)  # let them get into their first chunk
            return proc, kids
        if proc.poll() is not None:
            pytest.fail(f"pack exited early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("pack workers never started")


def finish(proc: subprocess.Popen, kids: list[int], dst: Path, sent_at: float):
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("pack hung after the signal")
    assert time.monotonic() - sent_at < 10
    assert not dst.exists() and not list(dst.parent.glob(".*.tmp"))
    time.sleep(0.2)
    assert not [k for k in kids if alive(k)], "workers left running"
    return proc.returncode, err


def test_sigterm_of_the_parent(big_corpus, tmp_path):
    dst = tmp_path / "out.pbin"
    proc, kids = start_pack(big_corpus, dst)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, kids, dst, time.monotonic())
    assert rc == 143 and "terminated" in err


def test_ctrl_c_reaches_the_whole_process_group(big_corpus, tmp_path):
    dst = tmp_path / "out.pbin"
    proc, kids = start_pack(big_corpus, dst)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    rc, err = finish(proc, kids, dst, time.monotonic())
    assert rc == 130 and "interrupted" in err and "Traceback" not in err


def test_sigkill_of_a_worker(big_corpus, tmp_path):
    dst = tmp_path / "out.pbin"
    proc, kids = start_pack(big_corpus, dst)
    os.kill(kids[0], signal.SIGKILL)
    rc, err = finish(proc, kids, dst, time.monotonic())
    assert rc == 1 and "killed by SIGKILL" in err


def test_sigterm_of_perfkit_index(big_corpus, tmp_path):
    dst = tmp_path / "out.idx"
    proc = subprocess.Popen([sys.executable, "-m", "perfkit.cli", "index", str(big_corpus), "-o", str(dst),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while len(children_of(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    kids = children_of(proc.pid)
    if proc.poll() is not None:
        pytest.skip("indexing finished before the signal could be sent")
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, kids, dst, time.monotonic())
    assert rc == 143 and "terminated" in err
