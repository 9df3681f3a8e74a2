"""Every bad input of issue 3 fails with a clear error naming the file (and never runs pickled code)."""

import pickle
import struct

import numpy as np
import pytest
import torch

from perfkit.config import DataConfig
from perfkit.data.loader import build_train_loader, build_val_loader

CPU = torch.device("cpu")


def pbin_bytes(tokens, width=2, index=None, data_len=None):
    data = np.asarray(tokens, dtype={1: "<u1", 2: "<u2", 4: "<u4"}.get(width, "<u2")).tobytes()
    index = [(0, len(data))] if index is None else index
    head = struct.pack("<QI", len(data) if data_len is None else data_len, width)
    return head + data + pickle.dumps(index, protocol=4)


def build(path, S=8, B=2, W=1, **cfg):
    return build_train_loader(DataConfig(train=[str(path)], **cfg), seq_len=S, micro_batch_size=B,
                              rank=0, world_size=W, device=CPU)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def bad_files(tmp_path):
    good = pbin_bytes(range(200))
    marker = tmp_path / "pwned"
    hostile = good[:12 + 400] + pickle.dumps([_Evil(str(marker))], protocol=4)
    return marker, {
        "truncated_header.pbin": good[:7],
        "truncated_data.pbin": good[:12 + 100],                       # header says 400 data bytes
        "size_mismatch.pbin": pbin_bytes(range(200), data_len=10 ** 6),
        "odd_length.pbin": pbin_bytes(range(200), data_len=399),
        "offsets_out_of_range.pbin": pbin_bytes(range(200), index=[(0, 100), (300, 200)]),
        "negative_offset.pbin": pbin_bytes(range(200), index=[(-2, 100)]),
        "width_3.pbin": pbin_bytes(range(200), width=3),
        "width_8.pbin": pbin_bytes(range(200), width=8),
        "hostile_pickle.pbin": hostile,
        "corrupt_pickle.pbin": good[:-5],
        "not_a_list.pbin": good[:12 + 400] + pickle.dumps({"a": 1}, protocol=4),
        "no_index.pbin": good[:12 + 400],
    }


def test_every_malformed_file_is_refused_by_name(tmp_path):
    marker, files = bad_files(tmp_path)
    for name, blob in files.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(ValueError) as err:
            build(path)
        assert name in str(err.value), (name, str(err.value))
    assert not marker.exists()  # the hostile pickle never ran


def test_empty_dataset_and_too_long_windows_name_the_file(tmp_path):
    empty = tmp_path / "empty.pbin"
    empty.write_bytes(pbin_bytes([], index=[]))
    with pytest.raises(ValueError, match="empty.pbin"):
        build(empty)
    short = tmp_path / "short.pbin"
    short.write_bytes(pbin_bytes(range(50)))
    with pytest.raises(ValueError, match=r"short.pbin.*50 tokens.*sequence length 64"):
        build(short, S=64)
    with pytest.raises(ValueError, match=r"short.pbin.*cannot fill one global micro-batch"):
        build(short, S=8, B=4, W=2)  # 6 windows < 8


def test_config_problems_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"\$\.data\.train is empty"):
        build_train_loader(DataConfig(), seq_len=8, micro_batch_size=1, rank=0, world_size=1, device=CPU)
    with pytest.raises(ValueError, match=r"\$\.data\.train: no such file .*nope.pbin"):
        build(tmp_path / "nope.pbin")
    ok = tmp_path / "ok.pbin"
    ok.write_bytes(pbin_bytes(range(40)))
    with pytest.raises(ValueError, match=r"\$\.data\.val: no such file"):
        build_val_loader(DataConfig(train=[str(ok)], val=[str(tmp_path / "v.pbin")]), seq_len=8,
                         micro_batch_size=1, rank=0, world_size=1, device=CPU)
    with pytest.raises(ValueError, match=r"\$\.data\.val.*4 validation windows of 9 tokens for 8 ranks"):
        build_val_loader(DataConfig(train=[str(ok)], val=[str(ok)]), seq_len=8, micro_batch_size=1,
                         rank=0, world_size=8, device=CPU)


def test_state_from_other_data_is_refused(tmp_path):
    ok = tmp_path / "ok.pbin"
    ok.write_bytes(pbin_bytes(range(400)))
    ld = build(ok)
    with pytest.raises(ValueError, match="num_samples"):
        ld.load_state_dict({"epoch": 0, "consumed_in_epoch": 0, "num_samples": 3})
    with pytest.raises(ValueError, match="consumed_in_epoch"):
        ld.load_state_dict({"epoch": 0})


def test_a_file_that_shrinks_after_validation_is_caught_in_a_child(tmp_path):
    path = tmp_path / "grow.pbin"
    path.write_bytes(pbin_bytes(range(400)))
    ld = build(path)
    f = ld.dataset.files[0]
    with open(path, "ab") as fh:
        fh.write(b"x")
    f._pid = -1  # as if in a forked child: the lazy reopen compares the size
    with pytest.raises(ValueError, match="grow.pbin: file changed size"):
        f.tokens
