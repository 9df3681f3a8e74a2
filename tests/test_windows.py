"""Window math and gathers checked against a literal, list-slicing reading of docs/architecture.md."""

import os
import pickle
import struct

import numpy as np
import pytest

from perfkit.data.windows import WindowDataset, WindowError, num_windows, window_stride


def write_pbin(path, tokens, width=2, doc_lengths=None):
    """An independent minimal .pbin writer: header, tokens, pickled (byte_offset, byte_length) list."""
    tokens = list(tokens)
    dtype = {1: "<u1", 2: "<u2", 4: "<u4"}[width]
    data = np.asarray(tokens, dtype=dtype).tobytes()
    doc_lengths = doc_lengths or [len(tokens)]
    index, off = [], 0
    for n in doc_lengths:
        index.append((off, n * width))
        off += n * width
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(data)) + struct.pack("<I", width) + data)
        f.write(pickle.dumps(index, protocol=4))
    return str(path)


def spec_windows(tokens, S, reuse_last_target=True):
    """docs/architecture.md / Modalities, as written: list of samples of S + 1 tokens."""
    T = len(tokens)
    if reuse_last_target:
        n = (T - (S + 1)) // S + 1 if T >= S + 1 else 0
        return [tokens[i * S: i * S + S + 1] for i in range(n)]
    n = T // (S + 1)
    return [tokens[i * (S + 1): (i + 1) * (S + 1)] for i in range(n)]


@pytest.mark.parametrize("reuse", [True, False])
def test_num_windows_matches_the_spec_for_every_small_case(reuse):
    for T in range(0, 40):
        for S in range(1, 12):
            assert num_windows(T, S, reuse) == len(spec_windows(list(range(T)), S, reuse)), (T, S)


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("reuse", [True, False])
def test_gather_equals_spec_windows(tmp_path, width, reuse):
    rng = np.random.default_rng(width)
    high = {1: 256, 2: 65536, 4: 2 ** 32}[width]
    tokens = [int(t) for t in rng.integers(0, high, size=1003, dtype=np.int64)]
    S = 16
    ds = WindowDataset([write_pbin(tmp_path / "a.pbin", tokens, width, [500, 503])], S,
                       reuse_last_target=reuse)
    expected = spec_windows(tokens, S, reuse)
    assert ds.num_samples == len(expected)
    idx = rng.permutation(ds.num_samples)[:37]
    got = ds.gather(idx)
    assert got.shape == (37, S + 1)
    assert [list(map(int, row)) for row in got] == [expected[i] for i in idx]


def test_continuous_windows_overlap_by_one_token(tmp_path):
    ds = WindowDataset([write_pbin(tmp_path / "a.pbin", range(100))], 9)
    w = ds.gather(np.arange(ds.num_samples))
    assert (w[1:, 0] == w[:-1, -1]).all()  # last target of i is the first input of i + 1
    assert w[-1, -1] <= 99 and ds.num_samples == (100 - 10) // 9 + 1


def test_several_files_concatenate_index_wise(tmp_path):
    a = [int(x) for x in range(0, 50)]
    b = [int(x) for x in range(1000, 1077)]
    S = 7
    ds = WindowDataset([write_pbin(tmp_path / "a.pbin", a), write_pbin(tmp_path / "b.pbin", b)], S)
    expected = spec_windows(a, S) + spec_windows(b, S)  # windows never straddle the two files
    assert ds.num_samples == len(expected)
    got = ds.gather(np.arange(ds.num_samples)[::-1])
    assert [list(map(int, r)) for r in got] == expected[::-1]


def test_mixture_follows_weights_and_visits_every_window_once_per_pass(tmp_path):
    a = write_pbin(tmp_path / "a.pbin", range(0, 401))        # 100 windows of S=4
    b = write_pbin(tmp_path / "b.pbin", range(10000, 10201))  # 50 windows
    ds = WindowDataset([a, b], 4, weights=[1.0, 3.0], seed=5)
    assert ds.num_samples == 150                       # the epoch keeps the concatenated size
    assert list(ds.file_samples) == [38, 112]           # 150 * (1/4, 3/4), largest remainder
    for epoch in range(3):
        f, local = ds.locate(np.arange(150), epoch)
        assert (np.bincount(f) == [38, 112]).all()
        # b is up-weighted: 112 = 2 full passes + 12, and every full pass is a permutation
        b_local = local[f == 1]
        start = (epoch * 112) % 50
        stream = np.concatenate([b_local])
        first_pass_len = 50 - start
        assert len(set(stream[:first_pass_len].tolist())) == first_pass_len
        assert sorted(stream[first_pass_len:first_pass_len + 50].tolist()) == list(range(50))
    # a is down-weighted: three epochs walk 114 positions, so 100 distinct windows then repeats
    seen = np.concatenate([ds.locate(np.arange(38), e)[1] for e in range(3)])
    assert sorted(seen[:100].tolist()) == list(range(100))
    # the mixture is a pure function of (seed, epoch, index)
    again = WindowDataset([a, b], 4, weights=[1.0, 3.0], seed=5)
    assert (again.gather(np.arange(150), 2) == ds.gather(np.arange(150), 2)).all()
    assert not (WindowDataset([a, b], 4, weights=[1.0, 3.0], seed=6).gather(np.arange(150), 2)
                == ds.gather(np.arange(150), 2)).all()


def test_zero_weight_excludes_a_file(tmp_path):
    a = write_pbin(tmp_path / "a.pbin", range(0, 401))
    b = write_pbin(tmp_path / "b.pbin", range(10000, 10201))
    ds = WindowDataset([a, b], 4, weights=[0.0, 1.0])
    assert (ds.gather(np.arange(ds.num_samples)) >= 10000).all()


def test_memmap_is_reopened_after_fork_and_not_pickled(tmp_path):
    import pickle as pk
    ds = WindowDataset([write_pbin(tmp_path / "a.pbin", range(300))], 8)
    blob = pk.dumps(ds)
    assert len(blob) < 2000  # the token map is not serialized
    clone = pk.loads(blob)
    assert (clone.gather(np.arange(5)) == ds.gather(np.arange(5))).all()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must map the file itself, keyed by its pid
        try:
            f = ds.files[0]
            ok = bool((ds.gather(np.arange(3)) == np.array(spec_windows(list(range(300)), 8)[:3])).all())
            ok = ok and f._pid == os.getpid()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert ds.files[0]._pid == os.getpid()


def test_errors_name_the_file(tmp_path):
    small = write_pbin(tmp_path / "small.pbin", range(10))
    with pytest.raises(WindowError, match="small.pbin"):
        WindowDataset([small], 16)  # S larger than the data
    empty = write_pbin(tmp_path / "empty.pbin", [], doc_lengths=[0])
    with pytest.raises(ValueError, match="empty.pbin"):
        WindowDataset([empty], 4)
    with pytest.raises(WindowError, match=r"\$\.data\.train"):
        WindowDataset([], 4)
    a = write_pbin(tmp_path / "a.pbin", range(100), width=2)
    b = write_pbin(tmp_path / "b.pbin", range(100), width=4)
    with pytest.raises(WindowError, match="token widths"):
        WindowDataset([a, b], 4)


def test_window_stride():
    assert window_stride(1024, True) == 1024 and window_stride(1024, False) == 1025
