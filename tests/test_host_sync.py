"""The training loop reads device values on logging steps only (issue 5: no host-device sync in the step).

On a CPU box there is no device to synchronize with, so this checks the code instead: every call
that would copy a tensor's value to the host on CUDA (`.item()`, `.tolist()`, `.cpu()`, `.numpy()`,
`bool()`, `float()`, `int()`, `index`) made directly from perfkit's own code in the training thread is
recorded with the optimizer step it happened in. A step that neither logs, evaluates nor saves must
have none; logging steps must have some (so the detector is shown to see them). Reads inside
torch itself (e.g. foreach AdamW reading its CPU step counters) are not ours to change and are not
counted; tests/test_train_gpu.py checks the real thing with CUDA's sync debug mode.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path

import torch

from test_train import run_main

_OURS = tuple(str(Path(__file__).resolve().parents[1] / d) for d in ("perfkit", "kernels"))
_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def test_only_logging_steps_read_device_values(tmp_path, monkeypatch):
    import perfkit.train.loop as loop

    main_thread = threading.main_thread()
    step = {"n": 0}                        # the optimizer step being run (or logged) right now
    reads: Counter = Counter()             # step -> reads from perfkit code
    where: dict[int, set[str]] = {}

    def counting(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if threading.current_thread() is main_thread and caller.f_code.co_filename.startswith(_OURS):
                reads[step["n"]] += 1
                where.setdefault(step["n"], set()).add(
                    f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} .{name}")
            return original(self, *args, **kwargs)
        return read

    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))

    real_step = loop.train_step

    def numbered_step(*args, **kwargs):
        step["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", numbered_step)
    rc, run_dir = run_main(tmp_path, "sync", **{
        "training.max_steps": 9, "metrics.log_every": 3, "training.eval_every": 0, "data.val": "[]",
        "checkpoint.every_steps": 0, "checkpoint.save_at_end": "false"})
    assert rc == 0
    assert step["n"] == 9
    quiet = [s for s in range(1, 10) if s % 3]
    assert {s: sorted(where[s]) for s in quiet if reads[s]} == {}, "device reads outside logging steps"
    assert all(reads[s] > 0 for s in (3, 6, 9)), dict(reads)  # the logging steps are seen
