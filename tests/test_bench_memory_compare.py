"""perfkit.bench.memory_compare: every variant of every axis is a valid config with the shape the
issue's targets name (the benchmark itself runs minutes; its records are in bench/results/)."""

import pytest

from perfkit.bench.memory_compare import AXES
from perfkit.config import load_config


def _cfg(axis, overrides):
    shape = AXES[axis][0]
    return load_config("configs/cpu_debug.toml", [*shape, "--training.grad_accum_steps=1", *overrides])


@pytest.mark.parametrize("axis", sorted(AXES))
def test_variants_are_valid_configs_that_differ_only_in_the_axis(axis):
    cfgs = {name: _cfg(axis, o) for name, o in AXES[axis][2]}
    first = next(iter(cfgs.values()))
    tokens = first.training.micro_batch_size * first.model.sequence_length
    if axis == "loss":
        assert first.model.vocab_size == 128256 and tokens == 4096
        assert [c.model.fused_linear_cross_entropy for c in cfgs.values()] == [False, True]
    else:
        assert first.model.n_layer == 8 and first.model.sequence_length == 1024
        assert [c.parallel.activation_checkpointing for c in cfgs.values()] == ["none", "full", "op"]
    for c in cfgs.values():  # the shape is the same for every variant
        assert (c.model.n_layer, c.model.n_embd, c.model.vocab_size) == \
            (first.model.n_layer, first.model.n_embd, first.model.vocab_size)


@pytest.mark.parametrize("threshold", [65536, 0])
def test_each_variant_runs_under_the_chosen_malloc_threshold(tmp_path, monkeypatch, threshold):
    # the variants' processes get MALLOC_MMAP_THRESHOLD_ (or glibc's default: none set, even when
    # the caller's environment has one) and each record says which
    import json
    import subprocess

    from perfkit.bench import memory_compare

    seen = []

    def fake_run(cmd, check, env):
        seen.append(env.get("MALLOC_MMAP_THRESHOLD_"))
        out = cmd[cmd.index("--json") + 1]
        with open(out, "a") as f:
            f.write(json.dumps({"host_peak_rss_gib": 2.0 - len(seen) / 4, "step_time_s": {"median": 1.0}}) + "\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "12345")
    out = tmp_path / "r.jsonl"
    assert memory_compare.main(["checkpointing", "--mmap-threshold", str(threshold), "--json", str(out)]) == 0
    assert seen == ([str(threshold)] * 3 if threshold else [None] * 3)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["variant"] for r in records] == ["none", "full", "op"]
    assert {r["malloc_mmap_threshold"] for r in records} == {threshold or None}
