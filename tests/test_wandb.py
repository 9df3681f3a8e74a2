"""Weights & Biases (perfkit/metrics_wandb.py): a fake wandb module that records its calls for the
behaviour (scalars, config, resume, failures, a slow W&B), and the real wandb offline for the files
it writes (WANDB_MODE=offline, WANDB_DIR in tmp: no network)."""

from __future__ import annotations

import json
import struct
import sys
import threading
import time
import types
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_train import CPU_DEBUG, records  # noqa: E402
from test_train_data import make_dataset, tiny_overrides  # noqa: E402

from perfkit import metrics_wandb  # noqa: E402
from perfkit.config import MetricsConfig  # noqa: E402
from perfkit.metrics import MetricsLogger  # noqa: E402

TRAIN = {"loss": 5.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s_per_gpu": 1234.0, "tflops_per_gpu": 0.1,
         "mfu": None, "peak_mem_gib": 1.5, "data_wait_frac": 0.0, "tokens_seen": 5120, "nonfinite_skips": 0}


class FakeWandb(types.ModuleType):
    """Records init/log/finish; `fail_init`, `fail_log` raise; `gate` (an Event) holds every log;
    `in_log` is set once a log call has begun (so a test knows the W&B thread holds a record)."""

    def __init__(self):
        super().__init__("wandb")
        self.calls: list[tuple] = []
        self.fail_init = self.fail_log = None
        self.gate: threading.Event | None = None
        self.in_log = threading.Event()
        fake = self

        class Run:
            def define_metric(self, name, **kw):
                fake.calls.append(("define_metric", name, kw))

            def log(self, data):
                fake.in_log.set()
                if fake.gate is not None:
                    fake.gate.wait(30)
                if fake.fail_log:
                    raise fake.fail_log
                fake.calls.append(("log", dict(data)))

            def finish(self, exit_code=0):
                fake.calls.append(("finish", exit_code))

        self._run = Run

    def Settings(self, **kw):  # noqa: N802 - wandb's name
        return kw

    def init(self, **kw):
        self.calls.append(("init", kw))
        if self.fail_init:
            raise self.fail_init
        return self._run()

    def of(self, kind):
        return [c[1] for c in self.calls if c[0] == kind]


@pytest.fixture
def fake(monkeypatch):
    module = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    return module


def _logger(run_dir, **cfg):
    return MetricsLogger(MetricsConfig(wandb=True, **cfg), run_dir, start_step=0,
                         run_config={"model": {"vocab_size": 256}, "run": {"experiment_id": run_dir.name}})


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "WARNING: W&B" in line]


def test_same_scalars_as_tensorboard_and_the_resolved_config(tmp_path, fake):
    run_dir = tmp_path / "exp1"
    log = _logger(run_dir, wandb_entity="team", wandb_tags=["a", "b"])
    log.log(10, TRAIN)
    log.log(10, {"val_loss": 4.5, "val_bpb": 1.25}, kind="val")
    log.close()
    (init,) = fake.of("init")
    stored = (run_dir / "wandb_run_id").read_text().strip()
    assert init["id"] == stored and init["resume"] == "allow" and init["name"] == "exp1"
    assert init["project"] == "perfkit" and init["entity"] == "team" and init["tags"] == ["a", "b"]
    assert init["config"] == {"model": {"vocab_size": 256}, "run": {"experiment_id": "exp1"}}
    assert init["dir"] == str(run_dir)  # offline files land in the run folder unless WANDB_DIR says otherwise
    assert ("define_metric", "*", {"step_metric": "step"}) in fake.calls

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tensorboard = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"]}
    logged = fake.of("log")
    assert [r["step"] for r in logged] == [10, 10]
    sent = {k: v for r in logged for k, v in r.items() if k != "step"}
    assert sent.keys() == tensorboard.keys() and "perf/mfu" not in sent  # None: absent, as in TensorBoard
    assert all(sent[k] == pytest.approx(v, rel=1e-6) for k, v in tensorboard.items())
    assert sent["val/bpb"] == 1.25 and fake.calls[-1] == ("finish", 0)


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, fake):
    run_dir = tmp_path / "exp"
    for _ in range(2):
        log = _logger(run_dir)
        log.log(1, TRAIN)
        log.close()
    first, second = fake.of("init")
    assert first["id"] == second["id"] == (run_dir / "wandb_run_id").read_text().strip()
    assert second["resume"] == "allow"
    (run_dir / "wandb_run_id").write_text("not an id!\n")  # damaged: a new id, stored again
    log = _logger(run_dir)
    log.close()
    third = fake.of("init")[-1]["id"]
    assert third != first["id"] and (run_dir / "wandb_run_id").read_text().strip() == third


def test_unreachable_wandb_is_one_warning_and_the_metrics_go_on(tmp_path, fake, capfd):
    fake.fail_init = ConnectionError("api.wandb.ai unreachable")
    log = _logger(tmp_path / "exp")
    for step in (1, 2, 3):
        log.log(step, TRAIN)
    log.close()
    assert _warnings(capfd.readouterr().err) == [
        "perfkit train: WARNING: W&B: init failed (ConnectionError: api.wandb.ai unreachable); "
        "training continues without W&B"]
    assert [r["step"] for r in records(tmp_path / "exp")] == [1, 2, 3] and not fake.of("log")


def test_a_failing_log_is_one_warning(tmp_path, fake, capfd):
    fake.fail_log = RuntimeError("HTTP 500\ndetails")
    log = _logger(tmp_path / "exp")
    for step in (1, 2, 3):
        log.log(step, TRAIN)
    log.close()
    assert _warnings(capfd.readouterr().err) == [
        "perfkit train: WARNING: W&B: log failed (RuntimeError: HTTP 500); W&B logging stops, training continues"]
    assert fake.calls[-1] == ("finish", 0)


def test_a_slow_wandb_never_stalls_the_logging_step(tmp_path, fake, monkeypatch, capfd):
    monkeypatch.setattr(metrics_wandb, "_QUEUE_RECORDS", 3)
    fake.gate = threading.Event()  # every wandb log call waits here until released
    log = _logger(tmp_path / "exp")
    start = time.perf_counter()
    log.log(1, TRAIN)
    assert fake.in_log.wait(10)  # the W&B thread holds step 1 (stuck at the gate): the queue is empty again
    for step in range(2, 9):
        log.log(step, TRAIN)  # would wait for the gate if the training thread called wandb itself
    assert time.perf_counter() - start < 5  # 8 records while W&B accepts none
    fake.gate.set()
    log.close()
    # step 1 was in wandb's log, 2-4 filled the queue of 3, 5-8 were dropped for W&B only
    assert [r["step"] for r in fake.of("log")] == [1, 2, 3, 4]
    assert len(_warnings(capfd.readouterr().err)) == 1  # "dropped for W&B", once
    assert [r["step"] for r in records(tmp_path / "exp")] == list(range(1, 9))  # jsonl keeps them all


def test_an_init_that_hangs_delays_the_end_of_the_run_only_briefly(tmp_path, fake, monkeypatch, capfd):
    monkeypatch.setattr(metrics_wandb, "_CLOSE_BEFORE_INIT_S", 0.5)  # 15 s in a run
    hang = threading.Event()
    real_init = fake.init
    monkeypatch.setattr(fake, "init", lambda **kw: (hang.wait(30), real_init(**kw))[1])  # the server never answers
    log = _logger(tmp_path / "exp")
    log.log(1, TRAIN)
    start = time.perf_counter()
    log.close()
    assert time.perf_counter() - start < 5
    (warning,) = _warnings(capfd.readouterr().err)
    assert "still waiting for the server in init after 0 s; the run ends without waiting" in warning
    hang.set()
    assert [r["step"] for r in records(tmp_path / "exp")] == [1]


def test_missing_wandb_stops_before_the_first_step(tmp_path, monkeypatch, capfd):
    from perfkit.train.train_cmd import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib finds no wandb
    train, val = make_dataset(tmp_path / "data", train_docs=8, val_docs=2, doc_len=100)
    rc = main([CPU_DEBUG, *tiny_overrides(tmp_path, train, val), "--metrics.wandb=true"])
    err = capfd.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "$.metrics.wandb = true but the wandb package is not installed: pip install 'perfkit[wandb]'" in err
    assert not (tmp_path / "runs").exists()


# ---- the real wandb, offline -------------------------------------------------------------------

def wandb_records(path: Path) -> list:
    """The records of an offline run's .wandb file: a 7-byte ':W&B' header, then LevelDB log records
    (4-byte CRC, u16 length, u8 type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks, each a
    protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    if len(raw) < 7:
        return []  # not written yet
    assert raw[:4] == b":W&B"
    out, pos, part = [], 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        length, kind = struct.unpack_from("<HB", raw, pos + 4)
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block trailer / padding
            continue
        part += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def history(path: Path) -> list[dict]:
    rows = []
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item})
    return rows


def config_of(path: Path) -> dict:
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "run":
            return {u.key: json.loads(u.value_json) for u in r.run.config.update}
    raise AssertionError("no run record")


@pytest.mark.slow
def test_offline_run_files_hold_the_scalars_and_config_and_a_resume_continues_them(tmp_path, monkeypatch, capfd):
    pytest.importorskip("wandb")
    from perfkit.train.train_cmd import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4, doc_len=100)
    base = [CPU_DEBUG, *tiny_overrides(tmp_path, train, val), "--metrics.wandb=true", "--metrics.log_every=2",
            "--training.eval_every=4", "--metrics.bpb_tokenizer=gpt2", "--checkpoint.save_at_end=true"]
    assert main(base + ["--training.max_steps=4"]) == 0
    # W&B names an attempt's folder offline-run-<local time to the second>-<run id>: a resume in the
    # same second as the first attempt's init would share its folder (it did once in CI: here an
    # attempt takes about a second from init to init); a real resume comes minutes later at least
    time.sleep(1.01 - time.time() % 1)
    assert main(base + ["--training.max_steps=6", "--checkpoint.resume=auto"]) == 0
    capfd.readouterr()
    run_dir = tmp_path / "runs" / "test"
    rid = (run_dir / "wandb_run_id").read_text().strip()
    runs = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{rid}/run-{rid}.wandb"))
    assert len(runs) == 2, list((tmp_path / "wb" / "wandb").iterdir())  # one W&B run id, two attempts
    deadline = time.monotonic() + 20  # the wandb-core process writes the file after finish() returns
    while not all([r.WhichOneof("record_type") for r in wandb_records(p)][-1:] == ["exit"] for p in runs):
        assert time.monotonic() < deadline, "no exit record in the offline run files"
        time.sleep(0.2)

    config = config_of(runs[0])
    assert config["model"]["vocab_size"] == 256 and config["run"]["experiment_id"] == "test"
    assert config["metrics"]["wandb"] is True and config["derived"]["tokens_per_step"] == 512
    rows = history(runs[0]) + history(runs[1])
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert [r["train/loss"] for r in train_rows] == pytest.approx([r["loss"] for r in records(run_dir)], rel=1e-6)
    val_rows = [r for r in rows if "val/bpb" in r]
    expected = records(run_dir, "val")
    assert [r["step"] for r in val_rows] == [r["step"] for r in expected] == [4, 6]
    assert [r["val/bpb"] for r in val_rows] == pytest.approx([r["val_bpb"] for r in expected], rel=1e-6)


@pytest.mark.parametrize("close_kwargs,code", [({}, 0), ({"exit_code": 143}, 143), ({"quiet": True}, 1)])
def test_the_wandb_run_ends_with_the_runs_exit_code(tmp_path, fake, close_kwargs, code):
    # 143: preempted by SIGTERM (saved, to be resumed); quiet: the close after a failed metrics write
    log = _logger(tmp_path / "exp")
    log.log(1, TRAIN)
    log.close(**close_kwargs)
    assert fake.calls[-1] == ("finish", code)
