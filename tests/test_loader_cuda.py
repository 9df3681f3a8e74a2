"""The CUDA path of the loader (pinned staging, side-stream copy, device widening); skipped without a GPU."""

import pickle
import struct

import numpy as np
import pytest
import torch

from perfkit.config import DataConfig
from perfkit.data.loader import build_train_loader, build_val_loader

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def write_pbin(path, tokens, width):
    data = np.asarray(tokens, dtype={1: "<u1", 2: "<u2", 4: "<u4"}[width]).tobytes()
    path.write_bytes(struct.pack("<QI", len(data), width) + data + pickle.dumps([(0, len(data))], protocol=4))
    return str(path)


@pytest.mark.parametrize("width,high", [(1, 256), (2, 50304), (2, 65536), (4, 100277), (4, 2 ** 32)])
def test_cuda_batches_equal_cpu_batches(tmp_path, width, high):
    tokens = np.random.default_rng(width).integers(0, high, size=20000, dtype=np.int64)
    path = write_pbin(tmp_path / "t.pbin", tokens, width)
    kw = dict(seq_len=64, micro_batch_size=8, rank=1, world_size=2)
    cfg = DataConfig(train=[path], val=[path], prefetch=3)
    gpu = build_train_loader(cfg, device=torch.device("cuda"), **kw)
    cpu = build_train_loader(cfg, device=torch.device("cpu"), **kw)
    for _ in range(25):  # more than the pinned ring, so buffers are reused
        (xg, yg), (xc, yc) = gpu.next_batch(), cpu.next_batch()
        assert xg.is_cuda and xg.dtype == torch.int64 and xg.shape == (8, 64)
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
    assert gpu.state_dict() == cpu.state_dict()
    gpu.close()
    cpu.close()
    vg = [x.cpu() for x, _ in build_val_loader(cfg, device=torch.device("cuda"), **kw)]
    vc = [x for x, _ in build_val_loader(cfg, device=torch.device("cpu"), **kw)]
    assert all(torch.equal(a, b) for a, b in zip(vg, vc)) and len(vg) == len(vc)


def test_cuda_resume_and_batches_survive_later_allocations(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=50000, dtype=np.int64)
    path = write_pbin(tmp_path / "t.pbin", tokens, 2)
    cfg = DataConfig(train=[path], prefetch=2)
    kw = dict(seq_len=128, micro_batch_size=4, rank=0, world_size=1, device=torch.device("cuda"))
    a = build_train_loader(cfg, **kw)
    held = [a.next_batch() for _ in range(3)]
    copies = [(x.clone(), y.clone()) for x, y in held]
    junk = [torch.randn(1 << 20, device="cuda") for _ in range(20)]  # churn the caching allocator
    torch.cuda.synchronize()
    assert all(torch.equal(x, cx) and torch.equal(y, cy) for (x, y), (cx, cy) in zip(held, copies))
    state = a.state_dict()
    expected = [a.next_batch()[0].cpu() for _ in range(10)]
    a.close()
    b = build_train_loader(cfg, **kw)
    b.load_state_dict(state)
    assert all(torch.equal(b.next_batch()[0].cpu(), e) for e in expected)
    b.close()
    del junk
