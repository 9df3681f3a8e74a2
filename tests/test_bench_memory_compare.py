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
