"""TrainLoader / ValLoader on CPU: batch contents vs the spec, resume equality, rank disjointness."""

import pickle
import struct

import numpy as np
import pytest
import torch

from perfkit.config import DataConfig
from perfkit.data import loader as loader_mod
from perfkit.data.loader import build_train_loader, build_val_loader, widen

CPU = torch.device("cpu")


def write_pbin(path, tokens, width=2):
    data = np.asarray(list(tokens), dtype={1: "<u1", 2: "<u2", 4: "<u4"}[width]).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<QI", len(data), width) + data + pickle.dumps([(0, len(data))], protocol=4))
    return str(path)


def spec_sample(tokens, i, S):
    return tokens[i * S: i * S + S + 1]


def spec_rank_batches(N, seed, epoch, rank, W, B):
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(N, generator=g).tolist()
    mine = order[: len(order) // W * W][rank::W]
    return [mine[i:i + B] for i in range(0, len(mine) - B + 1, B)]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, 65536, size=4000)]  # uint16, half of them >= 32768
    return tokens, write_pbin(tmp_path / "train.pbin", tokens)


def take(loader, n):
    return [tuple(t.clone() for t in loader.next_batch()) for _ in range(n)]


def test_batches_are_the_spec_windows_in_modalities_order(corpus):
    tokens, path = corpus
    S, B, W = 32, 4, 2
    for rank in range(W):
        loader = build_train_loader(DataConfig(train=[path], seed=42), seq_len=S, micro_batch_size=B,
                                    rank=rank, world_size=W, device=CPU)
        N = (len(tokens) - (S + 1)) // S + 1
        assert loader.num_samples == N
        assert loader.samples_per_rank_per_epoch == N // W // B * B
        for (x, y), batch in zip(take(loader, 5), spec_rank_batches(N, 42, 0, rank, W, B)):
            assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, S)
            assert x.is_contiguous() and y.is_contiguous()
            rows = [spec_sample(tokens, i, S) for i in batch]
            assert x.tolist() == [r[:-1] for r in rows] and y.tolist() == [r[1:] for r in rows]
        loader.close()


@pytest.mark.parametrize("width,high", [(1, 256), (2, 65536), (4, 2 ** 32)])
@pytest.mark.parametrize("unsigned_staging", [True, False])
def test_widening_keeps_unsigned_values(tmp_path, monkeypatch, width, high, unsigned_staging):
    # both staging paths: torch's unsigned dtypes, and signed bytes + mask for builds without them
    monkeypatch.setattr(loader_mod, "_UNSIGNED_OK", {"cpu": unsigned_staging})
    tokens = [high - 1, high // 2, 0, 1, high // 2 - 1] * 10
    path = write_pbin(tmp_path / "w.pbin", tokens, width)
    loader = build_train_loader(DataConfig(train=[path], shuffle=False), seq_len=4, micro_batch_size=1,
                                rank=0, world_size=1, device=CPU)
    x, y = loader.next_batch()
    assert x.tolist() == [tokens[0:4]] and y.tolist() == [tokens[1:5]]
    loader.close()
    assert widen(torch.tensor([[-1, -2]], dtype=torch.int16), 0xFFFF)[0].tolist() == [[65535]]


def test_state_counts_handed_out_batches_not_prefetched_ones(corpus):
    _, path = corpus
    loader = build_train_loader(DataConfig(train=[path], prefetch=4), seq_len=16, micro_batch_size=3,
                                rank=1, world_size=2, device=CPU)
    assert loader.state_dict()["consumed_in_epoch"] == 0
    take(loader, 5)
    st = loader.state_dict()
    assert st["epoch"] == 0 and st["consumed_in_epoch"] == 5 * 3 * 2 and st["consumed_total"] == 30
    assert all(type(v) is int for v in st.values())
    assert loader.time_waiting_s >= 0.0
    loader.close()


def test_resume_same_world_size_gives_exactly_the_next_batches(corpus):
    _, path = corpus
    cfg = DataConfig(train=[path], seed=3, prefetch=3)
    kw = dict(seq_len=16, micro_batch_size=5, world_size=3, device=CPU)
    for rank in range(3):
        a = build_train_loader(cfg, rank=rank, **kw)
        take(a, 7)
        state = a.state_dict()
        expected = take(a, 30)  # crosses the epoch boundary (249 windows: 16 steps per epoch)
        assert a.state_dict()["epoch"] == 2
        a.close()
        b = build_train_loader(cfg, rank=rank, **kw)
        b.load_state_dict(state)
        got = take(b, 30)
        assert all(torch.equal(g[0], e[0]) and torch.equal(g[1], e[1]) for g, e in zip(got, expected))
        b.close()


def test_load_state_midway_discards_prefetched_batches(corpus):
    _, path = corpus
    cfg = DataConfig(train=[path], prefetch=4)
    kw = dict(seq_len=16, micro_batch_size=2, rank=0, world_size=1, device=CPU)
    a = build_train_loader(cfg, **kw)
    first = take(a, 6)
    a.load_state_dict({"epoch": 0, "consumed_in_epoch": 2})  # rewind while the thread ran ahead
    again = take(a, 5)
    assert all(torch.equal(g[0], e[0]) for g, e in zip(again, first[1:]))
    a.close()


def test_resume_on_another_world_size_with_the_same_global_batch(corpus):
    _, path = corpus
    cfg = DataConfig(train=[path], seed=9)

    def run(W, B, state=None, steps=6):
        loaders = [build_train_loader(cfg, seq_len=16, micro_batch_size=B, rank=r, world_size=W,
                                      device=CPU) for r in range(W)]
        for ld in loaders:
            if state is not None:
                ld.load_state_dict(state)
        global_steps = []
        for _ in range(steps):
            rows = []
            for ld in loaders:
                x, y = ld.next_batch()
                rows += [tuple(r) for r in torch.cat([x, y[:, -1:]], 1).tolist()]
            global_steps.append(sorted(rows))
        st = loaders[0].state_dict()
        for ld in loaders:
            ld.close()
        return global_steps, st

    before, state = run(4, 3, steps=4)          # 4 ranks x 3
    after_same, _ = run(4, 3, state, steps=6)
    after_two, _ = run(2, 6, state, steps=6)    # 2 ranks x 6: the same 12 samples per step
    after_one, _ = run(1, 12, state, steps=6)
    assert after_two == after_same == after_one
    straight, _ = run(2, 6, None, steps=10)
    assert straight == before + after_same


def test_ranks_are_disjoint_and_cover_an_epoch(corpus):
    tokens, path = corpus
    S, B, W = 16, 4, 3
    N = (len(tokens) - (S + 1)) // S + 1
    seen = []
    for rank in range(W):
        ld = build_train_loader(DataConfig(train=[path]), seq_len=S, micro_batch_size=B, rank=rank,
                                world_size=W, device=CPU)
        for _ in range(ld.samples_per_rank_per_epoch // B):
            x, _ = ld.next_batch()
            seen += [tuple(r) for r in x.tolist()]
        assert ld.state_dict()["epoch"] == 1
        ld.close()
    starts = {tuple(spec_sample(tokens, i, S)[:-1]): i for i in range(N)}
    idx = [starts[r] for r in seen]
    assert len(idx) == len(set(idx)) == N // (W * B) * W * B


def test_weighted_mixture_through_the_config(tmp_path):
    a = write_pbin(tmp_path / "a.pbin", [1] * 500)
    b = write_pbin(tmp_path / "b.pbin", [2] * 500)
    cfg = DataConfig(train=[a, b], train_weights=[1.0, 4.0], seed=1)
    ld = build_train_loader(cfg, seq_len=8, micro_batch_size=20, rank=0, world_size=1, device=CPU)
    xs = torch.cat([ld.next_batch()[0] for _ in range(5)])
    ld.close()
    frac_b = (xs[:, 0] == 2).float().mean().item()
    assert 0.7 < frac_b < 0.9  # 4:1 weights in a shuffled epoch of 124 windows


def test_val_loader_is_sequential_disjoint_and_finite(tmp_path):
    tokens = list(range(1000))
    v1 = write_pbin(tmp_path / "v1.pbin", tokens[:500])
    v2 = write_pbin(tmp_path / "v2.pbin", tokens[500:])
    cfg = DataConfig(train=[v1], val=[v1, v2])
    S, W, B = 10, 3, 4
    per_rank = []
    for rank in range(W):
        vl = build_val_loader(cfg, seq_len=S, micro_batch_size=B, rank=rank, world_size=W, device=CPU)
        batches = list(vl)
        assert len(batches) == len(vl) and list(vl)[0][0].tolist() == batches[0][0].tolist()
        per_rank.append([r[0] for x, y in batches for r in x.tolist()])
        assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in batches)
    # 49 windows per file, 98 in all -> 96 used; rank r gets windows r, r+3, ... in order
    all_windows = [t * 10 for t in range(49)] + [500 + t * 10 for t in range(49)]
    for rank in range(W):
        assert per_rank[rank] == all_windows[:96][rank::W]
    assert build_val_loader(DataConfig(train=[v1]), seq_len=S, micro_batch_size=B, rank=0,
                            world_size=1, device=CPU) is None


def test_an_unclosed_loader_is_collected_and_stops_its_thread(corpus):
    import gc
    _, path = corpus
    ld = build_train_loader(DataConfig(train=[path]), seq_len=16, micro_batch_size=2, rank=0,
                            world_size=1, device=CPU)
    ld.next_batch()
    thread = ld._thread
    assert thread.is_alive()
    del ld
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_producer_errors_reach_the_training_thread(corpus, monkeypatch):
    _, path = corpus
    ld = build_train_loader(DataConfig(train=[path]), seq_len=16, micro_batch_size=2, rank=0,
                            world_size=1, device=CPU)

    def broken(*a, **k):
        raise OSError("disk gone")
    monkeypatch.setattr(ld.dataset, "gather", broken)
    with pytest.raises(OSError, match="disk gone"):
        ld.next_batch()
    assert ld._thread is None and ld.state_dict()["consumed_total"] == 0


def test_non_overlapping_windows_through_the_config(tmp_path):
    tokens = list(range(1, 301))
    path = write_pbin(tmp_path / "n.pbin", tokens)
    S = 9  # blocks of 10 tokens at 0, 10, 20, ...: 30 samples, no shared token
    ld = build_train_loader(DataConfig(train=[path], reuse_last_target=False, shuffle=False),
                            seq_len=S, micro_batch_size=3, rank=0, world_size=1, device=CPU)
    assert ld.num_samples == 30
    x, y = ld.next_batch()
    assert x.tolist() == [tokens[i * 10:i * 10 + 9] for i in range(3)]
    assert y.tolist() == [tokens[i * 10 + 1:i * 10 + 10] for i in range(3)]
    ld.close()
