"""The seed's number conversions, checked on hand-computed cases."""

import pickle
import struct

import numpy as np
import pytest

from perfkit.train.steps import (DataTooSmallError, local_batches_from_samples, steps_from_samples,
                                steps_from_tokens, tokens_from_steps, tokens_per_step, training_target,
                                training_target_from_files)


def test_seed_tutorial_numbers():
    # The seed's run: S=256, B=64, A=1 on one GPU. A dataset of 1,000,001 tokens has
    # (1_000_001 - 257) // 256 + 1 = 3906 windows -> 3906 // 64 = 61 steps -> 61 * 64 * 256 tokens.
    t = training_target(3906, seq_len=256, micro_batch_size=64, grad_accum=1, world_size=1)
    assert (t.num_steps, t.num_tokens, t.tokens_per_step) == (61, 61 * 64 * 256, 16384)
    # on 8 GPUs: 3906 // 8 // 64 = 7 steps
    t8 = training_target(3906, seq_len=256, micro_batch_size=64, grad_accum=1, world_size=8)
    assert (t8.num_steps, t8.num_tokens) == (7, 7 * 8 * 64 * 256)


def test_conversions_round_trip_and_floor():
    kw = dict(seq_len=1024, micro_batch_size=16, grad_accum=4, world_size=8)
    assert tokens_per_step(**kw) == 8 * 16 * 4 * 1024
    assert tokens_from_steps(10, **kw) == 10 * 524288
    assert steps_from_tokens(10 * 524288, **kw) == 10
    assert steps_from_tokens(10 * 524288 - 1, **kw) == 9       # partial steps are dropped
    assert steps_from_samples(512 * 3 + 511, micro_batch_size=16, grad_accum=4, world_size=8) == 3
    assert local_batches_from_samples(1000, micro_batch_size=16, world_size=8) == 7  # 1000 // 8 // 16


def test_chained_floor_equals_one_division_by_the_product():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n, w, b, a = (int(v) for v in rng.integers(1, 50, size=4))
        n *= int(rng.integers(1, 1000))
        assert steps_from_samples(n, micro_batch_size=b, grad_accum=a, world_size=w) == n // (w * b * a)


def test_too_small_for_one_step_names_the_source():
    with pytest.raises(DataTooSmallError, match=r"tiny\.pbin.*needs 32 .*world_size 2 x micro_batch_size 4 x gradient_accumulation 4"):
        training_target(31, seq_len=8, micro_batch_size=4, grad_accum=4, world_size=2, source="tiny.pbin")


def test_bad_numbers_are_rejected():
    with pytest.raises(ValueError, match="micro_batch_size"):
        steps_from_samples(10, micro_batch_size=0, grad_accum=1, world_size=1)
    with pytest.raises(ValueError, match="num_tokens"):
        steps_from_tokens(-1, seq_len=4, micro_batch_size=1, grad_accum=1, world_size=1)


def test_training_target_from_files(tmp_path):
    paths = []
    for name, n in (("a", 1000), ("b", 530)):
        data = np.arange(n, dtype="<u2").tobytes()
        p = tmp_path / f"{name}.pbin"
        p.write_bytes(struct.pack("<QI", len(data), 2) + data + pickle.dumps([(0, len(data))], protocol=4))
        paths.append(str(p))
    # S=16: (1000-17)//16+1 = 62 and (530-17)//16+1 = 33 windows -> 95 -> 95 // (2*4*1) = 11 steps
    t = training_target_from_files(paths, seq_len=16, micro_batch_size=4, grad_accum=1, world_size=2)
    assert (t.num_samples, t.num_steps, t.num_tokens) == (95, 11, 11 * 2 * 4 * 16)
    with pytest.raises(DataTooSmallError, match="a.pbin"):
        training_target_from_files(paths[:1], seq_len=16, micro_batch_size=64, grad_accum=1, world_size=1)
