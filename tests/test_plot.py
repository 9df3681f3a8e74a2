"""`perfkit plot`: reading metrics.jsonl (as perfkit.metrics writes it) and drawing the PNG."""

import json
import sys

import pytest

from perfkit import cli, plot_cmd as plot
from perfkit.config import MetricsConfig
from perfkit.metrics import MetricsLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, steps=(10, 20, 30), val_steps=(20, 30), loss0=10.0):
    """A run folder written by the trainer's own MetricsLogger (no TensorBoard), so the reader is
    tested against the real record layout, not a copy of it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLogger(MetricsConfig(tensorboard=False), run_dir, max_steps=max(steps))
    for i, step in enumerate(steps):
        log.log(step, {"loss": loss0 - i, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s_per_gpu": 1000.0 + i,
                       "tflops_per_gpu": 0.01, "mfu": None, "peak_mem_gib": 1.0, "data_wait_frac": 0.0,
                       "tokens_seen": 1024 * step, "nonfinite_skips": 0})
        if step in val_steps:
            log.log(step, {"val_loss": loss0 - i + 0.5}, kind="val")
    log.close()
    return run_dir


def test_reads_trainer_records(tmp_path, capsys):
    run = _write_run(tmp_path / "runA")
    m = plot.read_metrics(run)
    assert m.label == "runA"
    assert m.train_steps == [10, 20, 30] and m.train_loss == [10.0, 9.0, 8.0]
    assert m.tok_steps == [10, 20, 30] and m.tokens_per_s == [1000.0, 1001.0, 1002.0]
    assert m.val_steps == [20, 30] and m.val_loss == [9.5, 8.5]
    # the metrics.jsonl path itself works as well
    assert plot.read_metrics(run / "metrics.jsonl").train_steps == [10, 20, 30]


def test_resumed_run_later_record_wins(tmp_path):
    # a run that crashed after logging step 30 and resumed from its step-20 checkpoint logs steps
    # 30 and 40 again: the resumed values are the ones to plot (the trainer moves the lost step-30
    # record aside; a file written without that, e.g. by an older perfkit, still plots right)
    run = _write_run(tmp_path / "r", steps=(10, 20, 30), val_steps=())
    log = MetricsLogger(MetricsConfig(tensorboard=False), run)  # start_step not given: appends only
    for step, loss in ((30, 7.5), (40, 7.0)):
        log.log(step, {"loss": loss, "tokens_per_s_per_gpu": 5.0})
    log.close()
    m = plot.read_metrics(run)
    assert m.train_steps == [10, 20, 30, 40]
    assert m.train_loss == [10.0, 9.0, 7.5, 7.0]


def test_nan_and_none_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "loss": NaN, "tokens_per_s_per_gpu": null}\n'
                    '{"step": 2, "kind": "train", "loss": 3.0, "tokens_per_s_per_gpu": 10.0}\n'
                    '{"step": 2, "kind": "eval_other", "x": 1}\n')
    m = plot.read_metrics(path)
    assert m.train_steps == [1, 2] and m.train_loss[1] == 3.0
    assert m.tok_steps == [2]


def test_missing_metrics_names_the_file(tmp_path, capsys):
    run = tmp_path / "empty_run"
    run.mkdir()
    out = tmp_path / "out.png"
    assert plot.main([str(run), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(run / "metrics.jsonl") in err and "no such file" in err
    assert not out.exists()
    assert plot.main([str(tmp_path / "nowhere"), "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("body, expect", [
    ('{"step": 1, "loss": 2.0}\nnot json\n', ":2: not a JSON line"),
    ('[1, 2]\n', ":1: expected a JSON object"),
    ('{"loss": 2.0}\n', ":1: record has no integer `step`"),
    ('{"step": "3", "loss": 2.0}\n', ":1: record has no integer `step`"),
    ('{"step": 3, "kind": "train", "loss": "low"}\n', ":1: `loss` must be a number"),
    ('', "no training or validation records"),
    ('\n\n', "no training or validation records"),
])
def test_corrupt_metrics_names_file_and_line(tmp_path, capsys, body, expect):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text(body)
    assert plot.main([str(path.parent), "-o", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and expect in err, err


def test_binary_garbage_is_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    assert plot.main([str(path), "-o", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "cannot read" in err


def test_cut_last_line_is_skipped_with_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "loss": 2.0}\n{"step": 2, "kind": "tr')
    m = plot.read_metrics(path)
    assert m.train_steps == [1]
    assert len(m.warnings) == 1 and f"{path}:2" in m.warnings[0]


def test_labels(tmp_path):
    a = _write_run(tmp_path / "a" / "run")
    b = _write_run(tmp_path / "b" / "run")
    runs = [plot.read_metrics(a), plot.read_metrics(b)]
    plot._unique_labels(runs)
    assert [r.label for r in runs] == [str(a), str(b)]
    assert plot.read_metrics(a, "baseline").label == "baseline"


def test_label_count_must_match(tmp_path, capsys):
    a = _write_run(tmp_path / "a")
    with pytest.raises(SystemExit) as e:
        plot.main([str(a), "-o", str(tmp_path / "o.png"), "--label", "x", "--label", "y"])
    assert e.value.code == 2


def test_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    run = _write_run(tmp_path / "r")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "o.png"
    assert plot.main([str(run), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    # not `pip install 'perfkit[plot]'`: perfkit is not on PyPI, that command fails
    assert f"matplotlib is not installed; install it with: {sys.executable} -m pip install 'matplotlib>=3.7'" in err
    assert not out.exists()


def test_writes_png_for_two_runs_via_cli(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = _write_run(tmp_path / "runA")
    b = _write_run(tmp_path / "runB", steps=(10, 20, 30, 40), val_steps=(40,), loss0=11.0)
    out = tmp_path / "plots" / "loss.png"
    assert cli.main(["plot", str(a), str(b), "-o", str(out), "--title", "two runs"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    text = capsys.readouterr().out
    assert "runA: steps 10..30, train loss 10.0000 -> 8.0000, val loss 8.5000 (step 30)" in text
    assert "runB: steps 10..40" in text and "median 1,002 tokens/s per GPU" in text
    assert f"wrote {out}" in text


def test_val_only_and_svg(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 5, "kind": "val", "val_loss": 4.0}) + "\n")
    out = tmp_path / "o.svg"
    assert plot.main([str(path), "-o", str(out), "--log-loss"]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_unwritable_output_is_reported(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = _write_run(tmp_path / "r")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert plot.main([str(run), "-o", str(blocker / "o.png")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_help_lists_plot(capsys):
    assert cli.main(["--help"]) == 0
    assert "plot" in capsys.readouterr().out


def test_tokens_axis_interpolates_val_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "kind": "train", "loss": 3.0, "tokens_seen": 1000}\n'
                    '{"step": 20, "kind": "train", "loss": 2.0, "tokens_seen": 2000}\n'
                    '{"step": 15, "kind": "val", "val_loss": 2.5}\n'
                    '{"step": 25, "kind": "val", "val_loss": 2.4}\n')
    m = plot.read_metrics(path)
    assert m.tokens_at(m.train_steps) == [1000.0, 2000.0]
    assert m.tokens_at([5, 15, 25]) == [500.0, 1500.0, 2500.0]  # from (0, 0); past the end extrapolated


def test_tokens_axis_needs_tokens_seen(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "kind": "train", "loss": 3.0}\n')
    assert plot.main([str(path), "-o", str(tmp_path / "o.png"), "--x", "tokens"]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "tokens_seen" in err


def test_tokens_axis_png(tmp_path):
    pytest.importorskip("matplotlib")
    a = _write_run(tmp_path / "a")
    out = tmp_path / "t.png"
    assert plot.main([str(a), "-o", str(out), "--x", "tokens"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_runs_root_points_at_its_run_folders(tmp_path, capsys):
    _write_run(tmp_path / "runs" / "a")
    _write_run(tmp_path / "runs" / "b")
    assert plot.main([str(tmp_path / "runs"), "-o", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert "holds run folders (a, b)" in err and str(tmp_path / "runs" / "*") in err
