"""The sampler against a literal list-based reading of Modalities' ResumableDistributedSampler + BatchSampler."""

import math

import numpy as np
import pytest
import torch

from perfkit.data.sampler import ResumableDistributedSampler, global_order, rank_indices


def reference_rank_samples(N, seed, epoch, skip, rank, W, shuffle=True):
    """docs/architecture.md, step by step, with Python lists (independent of the vectorized code)."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        indices = torch.randperm(N, generator=g).tolist()
    else:
        indices = list(range(N))
    indices = indices[skip:]
    rest = len(indices)
    per_rank = math.ceil((rest - W) / W) if rest % W else math.ceil(rest / W)  # drop_last
    total = per_rank * W
    return indices[:total][rank:total:W]


def reference_batches(N, seed, epoch, skip, rank, W, B, shuffle=True):
    samples = reference_rank_samples(N, seed, epoch, skip, rank, W, shuffle)
    return [samples[i:i + B] for i in range(0, len(samples) - B + 1, B)]  # BatchSampler(drop_last)


def sampler_batches(s: ResumableDistributedSampler, epoch, consumed):
    out = []
    while s.batches_left(consumed) > 0:
        out.append(s.batch(epoch, consumed).tolist())
        consumed += s.global_batch
    return out


CASES = [(30, 1, 1), (30, 4, 2), (31, 4, 2), (97, 3, 5), (100, 8, 3), (7, 7, 1), (1000, 6, 16)]


@pytest.mark.parametrize("N,W,B", CASES)
@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_equal_the_reference(N, W, B, shuffle):
    for seed, epoch in [(42, 0), (42, 3), (0, 1)]:
        for rank in range(W):
            s = ResumableDistributedSampler(N, rank=rank, world_size=W, micro_batch_size=B,
                                            seed=seed, shuffle=shuffle)
            assert sampler_batches(s, epoch, 0) == reference_batches(N, seed, epoch, 0, rank, W, B, shuffle)
            assert rank_indices(N, seed=seed, epoch=epoch, skip=0, rank=rank, world_size=W,
                                shuffle=shuffle).tolist() == reference_rank_samples(N, seed, epoch, 0, rank, W, shuffle)


@pytest.mark.parametrize("N,W,B", CASES)
def test_skip_equals_the_reference_for_every_global_batch_boundary(N, W, B):
    for rank in range(W):
        s = ResumableDistributedSampler(N, rank=rank, world_size=W, micro_batch_size=B, seed=7)
        for skip in range(0, N // (W * B) * W * B + 1, W * B):
            assert sampler_batches(s, 2, skip) == reference_batches(N, 7, 2, skip, rank, W, B)


def test_skip_that_is_no_batch_multiple_still_follows_the_spec():
    N, W = 50, 4
    for skip in range(0, 20):
        for rank in range(W):
            assert rank_indices(N, seed=1, epoch=0, skip=skip, rank=rank, world_size=W).tolist() == \
                reference_rank_samples(N, 1, 0, skip, rank, W)


def test_global_order_is_torch_randperm_of_seed_plus_epoch():
    g = torch.Generator().manual_seed(45)
    assert global_order(1000, 42, 3).tolist() == torch.randperm(1000, generator=g).tolist()
    assert global_order(5, 42, 3, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("N,W,B", CASES)
def test_ranks_are_disjoint_and_cover_all_whole_global_batches(N, W, B):
    per_rank = [sum(sampler_batches(ResumableDistributedSampler(
        N, rank=r, world_size=W, micro_batch_size=B, seed=3), 0, 0), []) for r in range(W)]
    flat = sum(per_rank, [])
    assert len(flat) == len(set(flat))                       # disjoint
    steps = N // (W * B)
    assert sorted(flat) == sorted(global_order(N, 3, 0)[:steps * W * B].tolist())  # coverage
    assert all(len(p) == steps * B for p in per_rank)          # equal work per rank


def test_advance_rolls_epochs_over_and_reshuffles():
    N, W, B = 23, 2, 3  # 3 steps per epoch (18 samples), 5 dropped
    s = ResumableDistributedSampler(N, rank=1, world_size=W, micro_batch_size=B, seed=10)
    pos, seen = (0, 0), []
    for _ in range(7):
        seen.append((pos, s.batch(*pos).tolist()))
        pos = s.advance(*pos)
    assert [p for p, _ in seen] == [(0, 0), (0, 6), (0, 12), (1, 0), (1, 6), (1, 12), (2, 0)]
    for (epoch, consumed), batch in seen:
        k = consumed // (W * B)
        assert batch == reference_batches(N, 10, epoch, 0, 1, W, B)[k]
    assert s.samples_per_rank_per_epoch == 9


def test_same_global_batch_on_another_world_size_gives_the_same_global_batches():
    N = 200
    def global_steps(W, B, skip):
        ranks = [ResumableDistributedSampler(N, rank=r, world_size=W, micro_batch_size=B, seed=4)
                 for r in range(W)]
        steps = []
        c = skip
        while ranks[0].batches_left(c) > 0:
            steps.append(sorted(sum((rk.batch(0, c).tolist() for rk in ranks), [])))
            c += W * B
        return steps
    a = global_steps(8, 2, 0)
    assert global_steps(4, 4, 0) == a == global_steps(1, 16, 0) == global_steps(2, 8, 0)
    assert global_steps(4, 4, 5 * 16) == a[5:]  # resume after 5 steps on another layout


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="rank"):
        ResumableDistributedSampler(10, rank=2, world_size=2, micro_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="my.pbin.*cannot fill one global micro-batch"):
        ResumableDistributedSampler(10, rank=0, world_size=4, micro_batch_size=3, seed=0, source="my.pbin")
    s = ResumableDistributedSampler(10, rank=0, world_size=2, micro_batch_size=2, seed=0)
    with pytest.raises(IndexError):
        s.batch(0, 8)
    assert s.normalize(0, 8) == (1, 0)
    with pytest.raises(ValueError):
        s.normalize(0, -1)


def test_vectorized_batch_is_cheap_for_large_datasets():
    # 10 M windows: the per-batch work is O(B) once the epoch order exists (no per-sample Python)
    s = ResumableDistributedSampler(10_000_000, rank=3, world_size=8, micro_batch_size=4, seed=0,
                                    shuffle=False)
    assert s.batch(0, 800).tolist() == [803, 811, 819, 827]
    assert np.asarray(s.batch(0, 0)).dtype == np.int64


def test_batch_at_any_skip_equals_the_reference_first_batch():
    # skips that are no multiple of W (a resume after the global batch size changed)
    N, W, B = 61, 4, 3
    for rank in range(W):
        s = ResumableDistributedSampler(N, rank=rank, world_size=W, micro_batch_size=B, seed=11)
        for skip in range(0, N - W * B + 1):
            ref = reference_batches(N, 11, 1, skip, rank, W, B)
            assert s.batch(1, skip).tolist() == ref[0], (rank, skip)
            assert s.batches_left(skip) == len(ref)
