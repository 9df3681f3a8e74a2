"""Schedule values against their formulas, and onecycle against torch's OneCycleLR (the seed's)."""

import math

import pytest
import torch

from perfkit.config import (ConstantSchedule, CosineSchedule, OneCycleSchedule, OptimizerConfig,
                            WSDSchedule)
from perfkit.train.schedules import build_scheduler, lr_at


def _lrs_via_scheduler(sched, opt_cfg, total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=123.0)  # the scheduler must replace this
    s = build_scheduler(sched, opt_cfg, opt, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return out


@pytest.mark.parametrize("total,pct,strategy", [(200, 0.01, "cos"), (50, 0.3, "cos"), (37, 0.2, "linear"),
                                                 (1000, 0.01, "cos")])
def test_onecycle_equals_torch_onecycle(total, pct, strategy):
    cfg = OneCycleSchedule(max_lr=6e-4, div_factor=10, final_div_factor=1, pct_start=pct, anneal_strategy=strategy)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-4)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6e-4, total_steps=total, div_factor=10,
                                              final_div_factor=1, pct_start=pct, anneal_strategy=strategy,
                                              cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = _lrs_via_scheduler(cfg, OptimizerConfig(lr=1e-4), total)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_onecycle_single_step_warmup_does_not_divide_by_zero():
    # pct_start * total == 1: torch's OneCycleLR raises ZeroDivisionError at step 0; we start at max_lr.
    cfg = OneCycleSchedule(max_lr=6e-4, div_factor=10, final_div_factor=1, pct_start=0.01)
    lrs = _lrs_via_scheduler(cfg, OptimizerConfig(), 100)
    assert lrs[0] == pytest.approx(6e-4) and lrs[-1] == pytest.approx(6e-5)


def test_cosine_formula():
    peak, total, w, m = 1e-3, 100, 10, 0.1
    cfg = CosineSchedule(warmup_steps=w, min_lr_ratio=m)
    lrs = _lrs_via_scheduler(cfg, OptimizerConfig(lr=peak), total)
    for s in range(w):
        assert lrs[s] == pytest.approx(peak * (s + 1) / w)
    for s in range(w, total):
        pct = (s - w) / (total - 1 - w)
        assert lrs[s] == pytest.approx(peak * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * pct))))
    assert lrs[w] == pytest.approx(peak) and lrs[-1] == pytest.approx(m * peak)


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_formula(shape):
    peak, total, w = 2e-3, 100, 5
    cfg = WSDSchedule(warmup_steps=w, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.0)
    lrs = _lrs_via_scheduler(cfg, OptimizerConfig(lr=peak), total)
    assert lrs[:w] == pytest.approx([peak * (s + 1) / w for s in range(w)])
    assert lrs[w:80] == pytest.approx([peak] * (80 - w))  # stable phase
    for s in range(80, 100):
        pct = (s - 80) / 20
        f = {"linear": 1 - pct, "cosine": 0.5 * (1 + math.cos(math.pi * pct)), "sqrt": 1 - math.sqrt(pct)}[shape]
        assert lrs[s] == pytest.approx(peak * f)
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:]))  # never rises after warm-up


def test_constant_and_clamping():
    cfg = ConstantSchedule(warmup_steps=4)
    assert _lrs_via_scheduler(cfg, OptimizerConfig(lr=1.0), 8) == pytest.approx([.25, .5, .75, 1, 1, 1, 1, 1])
    # Past the end (e.g. a resumed run with a larger max_steps) the last value holds, no error.
    assert lr_at(CosineSchedule(min_lr_ratio=0.5), 1.0, 500, 100) == pytest.approx(0.5)


def test_scheduler_state_roundtrip():
    cfg = CosineSchedule(warmup_steps=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = build_scheduler(cfg, OptimizerConfig(lr=1.0), opt, 20)
    for _ in range(7):
        opt.step()
        s.step()
    state = s.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s2 = build_scheduler(cfg, OptimizerConfig(lr=1.0), opt2, 20)
    s2.load_state_dict(state)
    opt2.step()
    s2.step()
    opt.step()
    s.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
