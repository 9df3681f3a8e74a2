"""Randomized differential tests of the training data order against an independent reference.

The reference below is written from the definitions (docs/architecture.md "Data formats", Modalities'
PackedMemMapDatasetContinuous / CombinedDataset / ResumableDistributedSampler) and never calls
perfkit's window or sampler code. Each seed generates cases with token widths 1/2/4, 1-4 files (some
with exactly one window), S in 1..64, both window kinds, B in 1..8, world sizes 1..4, shuffle on/off,
and drives the real TrainLoader / ValLoader on the CPU; every batch is compared token for token.
A wrong sample after a resume or on one rank would silently corrupt a run, so resume is checked
at step 0, around epoch ends and at random points, on the same and on other world sizes with the
same global batch, and from raw (epoch, skip) positions that are no batch multiple.
Mixtures (data.train_weights) follow perfkit's own order; for them the test checks properties.
"""

import itertools
import pickle
import struct
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
import torch

from perfkit.config import DataConfig
from perfkit.data.loader import build_train_loader, build_val_loader
from perfkit.data.windows import WindowDataset
from perfkit.formats.pbin import write_pbin as perfkit_write_pbin

CPU = torch.device("cpu")
DTYPES = {1: "<u1", 2: "<u2", 4: "<u4"}


# ---- the reference ------------------------------------------------------------------------------
def ref_windows(tokens: np.ndarray, S: int, reuse_last_target: bool) -> np.ndarray:
    """(n, S+1) int64 samples of one file, written out sample by sample."""
    T = len(tokens)
    if reuse_last_target:  # Modalities: block = S+1, start i*(block-1), (T-block)//(block-1)+1 samples
        n = (T - (S + 1)) // S + 1 if T >= S + 1 else 0
        rows = [tokens[i * S: i * S + S + 1] for i in range(n)]
    else:                  # Modalities reuse_last_target=False: start i*block, T//block samples
        n = T // (S + 1)
        rows = [tokens[i * (S + 1): (i + 1) * (S + 1)] for i in range(n)]
    return np.array([[int(t) for t in r] for r in rows], dtype=np.int64).reshape(n, S + 1)


@lru_cache(maxsize=512)
def ref_order(N: int, seed: int, epoch: int, shuffle: bool) -> tuple:
    if not shuffle:
        return tuple(range(N))
    g = torch.Generator().manual_seed(seed + epoch)
    return tuple(torch.randperm(N, generator=g).tolist())


def ref_rank_lists(N, seed, epoch, skip, W, shuffle):
    """ResumableDistributedSampler(drop_last=True), literally: skip, truncate to k*W, deal."""
    order = list(ref_order(N, seed, epoch, shuffle))[skip:]
    order = order[: len(order) // W * W]
    return [order[r::W] for r in range(W)]


def ref_steps(N, seed, W, B, shuffle, epoch=0, skip=0):
    """Endless (epoch, [rank 0 batch, ..., rank W-1 batch]) with drop_last micro-batches of B."""
    while True:
        lists = ref_rank_lists(N, seed, epoch, skip, W, shuffle)
        for k in range(len(lists[0]) // B):
            yield epoch, [lst[k * B:(k + 1) * B] for lst in lists]
        epoch, skip = epoch + 1, 0


def ref_allocate(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of `total` by weight in exact rational arithmetic, ties to the earlier file."""
    fr = [Fraction(repr(w)) for w in weights]  # the decimal the user wrote
    exact = [f / sum(fr) * total for f in fr]
    base = [int(e) for e in exact]  # floor: all non-negative
    ranked = sorted(range(len(exact)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in ranked[: total - sum(base)]:
        base[i] += 1
    return base


# ---- random cases -------------------------------------------------------------------------------
def write_by_hand(path, tokens, width):
    data = np.asarray(tokens, dtype=DTYPES[width]).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<QI", len(data), width) + data + pickle.dumps([(0, len(data))], protocol=4))


def random_files(rng, tmp_path, tag, width, S, reuse, nfiles, max_windows=60, disjoint=False):
    """nfiles .pbin files; returns (paths, [token arrays]). disjoint: file f's tokens lie in the
    f-th quarter of the width's range, so a row names its file (tokens[0] // quarter)."""
    paths, streams = [], []
    top = 1 << (8 * width)
    for f in range(nfiles):
        n = 1 if rng.random() < 0.25 else int(rng.integers(1, max_windows + 1))
        if reuse:  # exactly n windows: S*(n-1) + S+1 tokens plus fewer than S spare ones
            T = S * (n - 1) + S + 1 + int(rng.integers(0, S))
        else:
            T = (S + 1) * n + int(rng.integers(0, S + 1))
        if disjoint:
            q = top // 4
            tokens = rng.integers(f * q, (f + 1) * q, size=T, dtype=np.uint64)
        else:
            tokens = rng.integers(0, top, size=T, dtype=np.uint64)
            tokens[rng.integers(0, T)] = top - 1  # the largest id must survive widening
        path = tmp_path / f"{tag}_{f}.pbin"
        if rng.random() < 0.5:
            docs = np.diff(np.unique(np.concatenate([[0, T], rng.integers(1, T + 1, size=3)])))
            perfkit_write_pbin(path, tokens, docs, width)
        else:
            write_by_hand(path, tokens, width)
        paths.append(str(path))
        streams.append(tokens)
    return paths, streams


def random_case(rng, tmp_path, tag, weighted=False):
    width = int(rng.choice([1, 2, 4]))
    S = int(rng.integers(1, 65)) if rng.random() < 0.5 else int(rng.integers(1, 9))
    reuse = bool(rng.random() < 0.6)
    nfiles = int(rng.integers(1 + weighted, 5))
    paths, streams = random_files(rng, tmp_path, tag, width, S, reuse, nfiles, disjoint=weighted)
    wins = [ref_windows(t, S, reuse) for t in streams]
    weights = None
    if weighted:
        choices = [0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 7.0]
        weights = [float(rng.choice(choices)) for _ in paths]
        if sum(weights) == 0:
            weights[0] = 1.0
    cfg = DataConfig(train=paths, train_weights=weights, reuse_last_target=reuse,
                     shuffle=bool(rng.random() < 0.8), seed=int(rng.choice([0, 1, 42, 12345, 2 ** 40 + 7])),
                     prefetch=int(rng.integers(1, 5)))
    return dict(cfg=cfg, S=S, width=width, wins=wins, B=int(rng.integers(1, 9)), W=int(rng.integers(1, 5)))


# ---- driving the real loader --------------------------------------------------------------------
def loaders(case, W, B, state=None):
    out = [build_train_loader(case["cfg"], seq_len=case["S"], micro_batch_size=B, rank=r,
                              world_size=W, device=CPU) for r in range(W)]
    if state is not None:
        for ld in out:
            ld.load_state_dict(dict(state))
    return out


def step(lds):
    """One micro-step of every rank: [(x, y)] with (B, S) int64 each."""
    return [tuple(t.clone() for t in ld.next_batch()) for ld in lds]


def close(lds):
    for ld in lds:
        ld.close()


def assert_rows(batch, rows, S, what):
    x, y = batch
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (len(rows), S), what
    assert np.array_equal(x.numpy(), rows[:, :-1]), what
    assert np.array_equal(y.numpy(), rows[:, 1:]), what


def concat_rows(case):
    allw = np.concatenate(case["wins"])  # files concatenated index-wise (CombinedDataset)
    return lambda idx, epoch: allw[np.asarray(idx, dtype=np.int64)]


def global_rows(batches):
    """The samples of one global step as a sorted list (rank assignment ignored)."""
    return sorted(tuple(r) for x, y in batches for r in torch.cat([x, y[:, -1:]], 1).tolist())


def check_train_case(case, rows_of, tag, rng):
    """Uninterrupted run vs the reference, then resumes from snapshots of that run."""
    cfg, S, W, B = case["cfg"], case["S"], case["W"], case["B"]
    N = sum(len(w) for w in case["wins"]) if cfg.train_weights is None else None
    lds = loaders(case, W, B)
    N = lds[0].num_samples if N is None else N
    assert all(ld.num_samples == N for ld in lds)
    spe = N // (W * B)  # whole global micro-batches per epoch
    assert lds[0].samples_per_rank_per_epoch == spe * B, tag
    K = min(2 * spe + 3, 40)  # crosses at least one epoch end
    ref = ref_steps(N, cfg.seed, W, B, cfg.shuffle)
    states, straight = [], []
    for k in range(K):
        states.append([ld.state_dict() for ld in lds])
        epoch, want = next(ref)
        assert all(s == states[-1][0] for s in states[-1]), f"{tag}: ranks disagree on the position"
        assert states[-1][0]["epoch"] == epoch and states[-1][0]["consumed_total"] == k * W * B, tag
        got = step(lds)
        for r in range(W):
            assert_rows(got[r], rows_of(want[r], epoch), S, f"{tag} step {k} rank {r}")
        straight.append(got)
    states.append([ld.state_dict() for ld in lds])
    close(lds)

    # resume points: start, around each epoch end, random; on W and on other W' with W'*B' == W*B
    G = W * B
    points = {0, spe - 1, spe, spe + 1, 2 * spe, int(rng.integers(0, K + 1))}
    for k in sorted(p for p in points if 0 <= p <= K):
        for W2 in sorted({W} | {int(rng.choice([w for w in (1, 2, 3, 4) if G % w == 0]))}):
            B2 = G // W2
            more = min(K - k, spe + 2)
            ref2 = ref_steps(N, cfg.seed, W2, B2, cfg.shuffle, states[k][0]["epoch"],
                             states[k][0]["consumed_in_epoch"])
            lds2 = loaders(case, W2, B2, states[k][0])
            for j in range(more):
                epoch, want = next(ref2)
                got = step(lds2)
                what = f"{tag}: resume at step {k} on {W2}x{B2}, step {k + j}"
                for r in range(W2):
                    assert_rows(got[r], rows_of(want[r], epoch), S, what)
                if W2 == W:  # exactly the tensors the uninterrupted run handed each rank
                    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                               for a, b in zip(got, straight[k + j])), what
                else:        # the same global batch, dealt to ranks differently
                    assert global_rows(got) == global_rows(straight[k + j]), what
            st = lds2[0].state_dict()
            assert (st["epoch"], st["consumed_in_epoch"]) == (
                states[k + more][0]["epoch"], states[k + more][0]["consumed_in_epoch"]), tag
            assert st["consumed_total"] == (k + more) * G, tag
            close(lds2)
    return N


# ---- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(24))
def test_train_loader_equals_reference_with_resume(tmp_path, seed):
    rng = np.random.default_rng(1000 + seed)
    for c in range(3):
        case = random_case(rng, tmp_path, f"c{c}")
        N = sum(len(w) for w in case["wins"])
        tag = (f"seed={seed} case={c} width={case['width']} S={case['S']} W={case['W']} B={case['B']} "
               f"files={[len(w) for w in case['wins']]} cfg={case['cfg']}")
        if N < case["W"] * case["B"]:  # cannot fill one global micro-batch: refused up front
            with pytest.raises(ValueError, match="cannot fill one global micro-batch"):
                loaders(case, case["W"], case["B"])
            continue
        check_train_case(case, concat_rows(case), tag, rng)


@pytest.mark.parametrize("seed", range(8))
def test_restore_from_raw_positions_follows_modalities_skip(tmp_path, seed):
    """A position that is no batch multiple (a Modalities skip_num_global_samples, or an epoch with
    less than one global batch left) continues as the sampler with that skip, then the next epochs."""
    rng = np.random.default_rng(2000 + seed)
    case = random_case(rng, tmp_path, "raw")
    N = sum(len(w) for w in case["wins"])
    W, B = case["W"], case["B"]
    if N < W * B:
        W, B = 1, 1
    rows_of = concat_rows(case)
    for _ in range(4):
        epoch = int(rng.integers(0, 4))
        skip = int(rng.choice([0, int(rng.integers(0, N + 1)), N - 1, N - W * B + 1, N, N + 3]))
        skip = max(skip, 0)
        lds = loaders(case, W, B, {"epoch": epoch, "consumed_in_epoch": skip})
        ref = ref_steps(N, case["cfg"].seed, W, B, case["cfg"].shuffle, epoch, skip)
        for j in range(N // (W * B) + 2):
            e, want = next(ref)
            got = step(lds)
            for r in range(W):
                assert_rows(got[r], rows_of(want[r], e), case["S"],
                            f"seed={seed} epoch={epoch} skip={skip} W={W} B={B} N={N} step {j}")
        close(lds)


@pytest.mark.parametrize("seed", range(10))
def test_weighted_mixture_properties(tmp_path, seed):
    rng = np.random.default_rng(3000 + seed)
    case = random_case(rng, tmp_path, "mix", weighted=True)
    cfg, S, W, B = case["cfg"], case["S"], case["W"], case["B"]
    wins, weights = case["wins"], cfg.train_weights
    Ns = [len(w) for w in wins]
    total = sum(Ns)
    if total < W * B:
        W, B = 1, 1
        case = dict(case, W=W, B=B)
    tag = f"seed={seed} files={Ns} weights={weights} S={S} W={W} B={B} cfg={cfg}"
    ld = loaders(case, 1, 1)[0]
    ds = ld.dataset
    ld.close()
    m = ref_allocate(total, weights)
    assert ds.num_samples == total and list(ds.file_samples) == m, tag  # documented proportions
    cum = np.concatenate([[0], np.cumsum(m)])

    # every index valid; file f owns positions [cum_f, cum_f+1); per file, the windows of
    # consecutive epochs form one stream in which every pass of N_f positions is a permutation
    epochs = 4
    streams = [[] for _ in Ns]
    for e in range(epochs):
        f, local = ds.locate(np.arange(total), e)
        assert np.array_equal(f, np.repeat(np.arange(len(Ns)), m)), tag
        assert ((local >= 0) & (local < np.asarray(Ns)[f])).all(), tag
        for i in range(len(Ns)):
            streams[i] += local[f == i].tolist()
    for i, (n, s) in enumerate(zip(Ns, streams)):
        assert len(s) == epochs * m[i]
        for p in range(0, len(s), n):
            chunk = s[p:p + n]
            assert len(set(chunk)) == len(chunk), f"{tag}: file {i} repeats a window within pass {p // n}"
            if len(chunk) == n:
                assert sorted(chunk) == list(range(n)), tag

    def rows_of(idx, epoch):  # the sampler's order is the reference; the mixture maps index -> window
        f, local = ds.locate(np.asarray(idx, dtype=np.int64), epoch)
        return np.stack([wins[a][b] for a, b in zip(f, local)]) if len(idx) else np.zeros((0, S + 1))

    check_train_case(case, rows_of, tag, rng)

    # per-epoch sample counts per file, read off the tokens the ranks receive over one epoch
    lds = loaders(case, W, B)
    spe = total // (W * B)
    quarter = (1 << (8 * case["width"])) // 4
    counts = np.zeros(len(Ns), dtype=np.int64)
    seen_steps = []
    for _ in range(spe):
        got = step(lds)
        firsts = np.concatenate([x[:, 0].numpy() for x, _ in got])
        counts += np.bincount(firsts // quarter, minlength=len(Ns))
        seen_steps.append(got)
    assert lds[0].state_dict()["epoch"] == 1
    close(lds)
    used = list(ref_order(total, cfg.seed, 0, cfg.shuffle))[: spe * W * B]
    want = np.bincount(np.searchsorted(cum, used, side="right") - 1, minlength=len(Ns))
    assert np.array_equal(counts, want), tag
    dropped = total - spe * W * B
    assert all(m_i - dropped <= c <= m_i for c, m_i in zip(counts, m)), tag
    # determinism: the same config gives the same tensors
    lds = loaders(case, W, B)
    for k in range(min(spe, 5)):
        again = step(lds)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(again, seen_steps[k])), tag
    close(lds)


@pytest.mark.parametrize("seed", range(6))
def test_val_loader_equals_reference(tmp_path, seed):
    rng = np.random.default_rng(4000 + seed)
    for c in range(6):
        width = int(rng.choice([1, 2, 4]))
        S = int(rng.integers(1, 65))
        reuse = bool(rng.random() < 0.5)
        paths, streams = random_files(rng, tmp_path, f"v{c}", width, S, reuse, int(rng.integers(1, 5)),
                                      max_windows=25)
        allw = np.concatenate([ref_windows(t, S, reuse) for t in streams])
        N, W, B = len(allw), int(rng.integers(1, 5)), int(rng.integers(1, 9))
        cfg = DataConfig(train=paths[:1], val=paths, reuse_last_target=reuse,
                         seed=int(rng.integers(0, 100)), shuffle=bool(rng.random() < 0.5))
        tag = f"seed={seed} case={c} width={width} S={S} reuse={reuse} N={N} W={W} B={B}"
        if N < W:
            with pytest.raises(ValueError, match="every rank needs at least one"):
                build_val_loader(cfg, seq_len=S, micro_batch_size=B, rank=0, world_size=W, device=CPU)
            continue
        usable = N // W * W
        for r in range(W):
            vl = build_val_loader(cfg, seq_len=S, micro_batch_size=B, rank=r, world_size=W, device=CPU)
            mine = list(range(usable))[r::W]  # sequential, every W-th window, no shuffle, no seed
            want = [mine[i:i + B] for i in range(0, len(mine), B)]  # the last batch may be short
            got = list(vl)
            assert len(vl) == len(got) == len(want), tag
            for k, (batch, idx) in enumerate(zip(got, want)):
                assert_rows(batch, allw[idx], S, f"{tag} rank {r} batch {k}")
            again = list(vl)  # a second pass is the same pass
            assert all(torch.equal(a[0], b[0]) for a, b in zip(again, got)), tag


# ---- reproducers of mismatches the fuzzing found ------------------------------------------------
def test_mixture_split_breaks_ties_exactly_and_is_scale_invariant(tmp_path):
    """Found here: the float split w / sum(w) * total put the tied remainders of [0.3, 0.1] an ulp
    apart (0.3 / 0.4 = 0.7499999999999999), so 2 windows went [1, 1] while [3, 1] gave [2, 0]."""
    a = tmp_path / "a.pbin"
    b = tmp_path / "b.pbin"
    write_by_hand(a, [1, 2], 2)  # exactly one window of S = 1 each
    write_by_hand(b, [7, 8], 2)
    for weights in ([0.3, 0.1], [3.0, 1.0], [30.0, 10.0]):
        cfg = DataConfig(train=[str(a), str(b)], train_weights=weights, shuffle=False)
        ld = build_train_loader(cfg, seq_len=1, micro_batch_size=2, rank=0, world_size=1, device=CPU)
        x, y = ld.next_batch()
        ld.close()
        assert list(ld.dataset.file_samples) == [2, 0], weights  # 1.5 : 0.5, the tie to file a
        assert x.tolist() == [[1], [1]] and y.tolist() == [[2], [2]], weights


def test_mixture_split_equals_exact_largest_remainder_for_random_weights(tmp_path):
    from perfkit.data.windows import _allocate
    rng = np.random.default_rng(7)
    choices = [0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 1.0, 1.5, 2.0, 3.0, 7.0, 1 / 3, 1e-9, 1e300]
    for _ in range(3000):
        weights = [float(rng.choice(choices)) for _ in range(int(rng.integers(1, 5)))]
        if sum(weights) == 0:
            continue
        total = int(rng.integers(1, 300))
        got = _allocate(total, weights)
        assert got.dtype == np.int64 and list(got) == ref_allocate(total, weights), (total, weights)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_mixture_weights_are_refused_by_key(tmp_path, bad):
    """Found here: NaN passes `w < 0` / `sum > 0` and gave negative per-file sample counts."""
    a = tmp_path / "a.pbin"
    write_by_hand(a, list(range(10)), 1)
    with pytest.raises(ValueError, match=r"\$\.data\.train_weights must be finite"):
        DataConfig(train=[str(a), str(a)], train_weights=[bad, 1.0])  # the one check: config and dataset
    with pytest.raises(ValueError, match=r"\$\.data\.train_weights must be finite"):
        WindowDataset([str(a), str(a)], 2, weights=[bad, 1.0])
