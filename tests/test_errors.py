"""One base class for user-facing errors (perfkit.errors.UserError): bad input is one line, a bug
keeps its traceback - also a ValueError raised inside the model's forward, on one rank or all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import CPU_DEBUG, run_main
from test_train_data import make_dataset, tiny_overrides

PLANT = '''
import os, sys
from perfkit.model.gpt import GPT
from perfkit.train.train_cmd import main

forward = GPT.forward


def planted(self, *args, **kwargs):  # a bug in the model, not bad input
    if int(os.environ.get("RANK", "0")) in {ranks}:
        raise ValueError("planted bug in forward")
    return forward(self, *args, **kwargs)


GPT.forward = planted
from perfkit.process_exit import exit_process
exit_process(main(sys.argv[1:]))
'''


def test_every_domain_error_is_a_user_error():
    from perfkit.checkpoint.layout import CheckpointError
    from perfkit.config import ConfigError
    from perfkit.prep.jsonl import BadLineError
    from perfkit.formats.index_pickle import IndexPickleError
    from perfkit.prep.pack_worker import TokenOverflowError
    from perfkit.formats.pbin import PbinError
    from perfkit.train.steps import DataTooSmallError
    from perfkit.prep.tokenizer import TokenizerError
    from perfkit.data.windows import WindowError
    from perfkit.errors import UserError
    from perfkit.plot_cmd import MetricsError
    from perfkit.train.plan import PlanError

    for cls in (CheckpointError, ConfigError, BadLineError, IndexPickleError, TokenOverflowError, PbinError,
                DataTooSmallError, TokenizerError, WindowError, MetricsError, PlanError):
        assert issubclass(cls, UserError), cls
    assert not issubclass(ValueError, UserError)


def test_value_error_in_forward_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    from perfkit.model.gpt import GPT

    def planted(self, *args, **kwargs):
        raise ValueError("planted bug in forward")

    monkeypatch.setattr(GPT, "forward", planted)
    rc, _ = run_main(tmp_path, "bug", **{"training.max_steps": 2})
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback (most recent call last)" in err, err
    assert "in planted" in err and "ValueError: planted bug in forward" in err, err


def test_missing_pbin_stays_one_line(tmp_path, capsys):
    from perfkit.train.train_cmd import main

    train, val = make_dataset(tmp_path / "data", train_docs=8, val_docs=2)
    argv = [CPU_DEBUG] + tiny_overrides(tmp_path, tmp_path / "nope.pbin", val)
    assert main(argv) == 2  # bad input before the first step (EXIT_CODES)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"perfkit train: $.data.train: no such file {tmp_path / 'nope.pbin'}"], err


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [(1,), (0, 1)])
def test_value_error_in_forward_under_torchrun_shows_traceback_and_no_rank_hangs(tmp_path, ranks):
    script = tmp_path / "planted_train.py"
    script.write_text(PLANT.replace("{ranks}", repr(set(ranks))))
    train, val = make_dataset(tmp_path / "data", train_docs=16, val_docs=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", str(script), CPU_DEBUG,
           *tiny_overrides(tmp_path, train, val, **{"training.max_steps": 3})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr[-3000:]
    assert "ValueError: planted bug in forward" in proc.stderr, proc.stderr[-3000:]
