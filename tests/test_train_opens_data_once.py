"""Startup opens each .pbin once (issue 13: a one-step run opened the training file 8 times).

Counted with an audit hook on the `open` event (Python's open and numpy's memory map both raise
it), so the count is of real opens, not of calls into perfkit."""

from __future__ import annotations

import sys
from pathlib import Path

from test_train import CPU_DEBUG
from test_train_data import make_dataset, tiny_overrides

_OPENS: list[str] | None = None


def _hook(event, args):
    if event == "open" and _OPENS is not None and isinstance(args[0], (str, Path)):
        _OPENS.append(str(args[0]))


sys.addaudithook(_hook)  # cannot be removed; it records only while _OPENS is a list


def _opens_of(fn, path: Path) -> int:
    global _OPENS
    _OPENS = []
    try:
        fn()
        return sum(Path(p).resolve() == path.resolve() for p in _OPENS)
    finally:
        _OPENS = None


def test_a_one_step_run_opens_train_and_val_once_each(tmp_path):
    from perfkit.formats.pbin import read_pbin
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4)
    once = {p: _opens_of(lambda: read_pbin(p), p) for p in (train, val)}  # header + index + memory map
    assert min(once.values()) >= 1
    argv = [CPU_DEBUG] + tiny_overrides(tmp_path, train, val, **{"training.max_steps": 1, "training.eval_every": 1})
    for path in (train, val):
        rc = []
        opened = _opens_of(lambda: rc.append(main(argv + [f"--run.experiment_id=once_{path.stem}"])), path)
        assert rc == [0]
        assert opened == once[path], f"{path.name} was opened {opened} times; one validated read opens it {once[path]}"


def test_train_weights_have_one_check_for_config_and_dataset(tmp_path):
    import pytest

    from perfkit.config import ConfigError, load_config
    from perfkit.data.windows import WindowDataset

    train, _ = make_dataset(tmp_path / "data", train_docs=4, val_docs=2)
    for weights in ([1.0, 2.0], [-1.0]):
        with pytest.raises(ConfigError) as from_config:
            load_config(CPU_DEBUG, [f'--data.train=["{train}"]', f"--data.train_weights={weights}"])
        with pytest.raises(ValueError) as from_dataset:
            WindowDataset([str(train)], 8, weights=weights)
        said = str(from_dataset.value)
        assert said.startswith("$.data.train_weights ") and said in str(from_config.value), (said, from_config.value)
