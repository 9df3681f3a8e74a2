"""Issue 18, on CPU: what a read of the CUDA-only branches found that could cost the first GPU run.

Root module kept gathered after forward, TF32 through the fp32_precision API, the H200 NVL's own
peak, and a validation pass that never feeds the compiled blocks a second batch size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

CPU_DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "cpu_debug.toml")


@pytest.fixture
def world_of_one():
    """A gloo process group of one rank (FSDP2 needs one), torn down after the test."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _resharding(module: nn.Module) -> bool:
    """Whether FSDP2 frees this module's unsharded parameters after its forward."""
    group = module._get_fsdp_state()._fsdp_param_group
    return group.post_forward_mesh_info is not None


@pytest.mark.parametrize("reshard", [True, False])
def test_root_stays_gathered_and_blocks_reshard_as_configured(world_of_one, reshard):
    from perfkit.config import load_config
    from perfkit.train.parallelize import build_model

    cfg = load_config(CPU_DEBUG, ["--model.vocab_size=64", "--model.n_layer=3", "--parallel.compile=false",
                                  f"--parallel.reshard_after_forward={str(reshard).lower()}"])
    model = build_model(cfg.model, cfg.parallel, torch.device("cpu"), seed=0)
    idx = torch.randint(0, 64, (2, 8))
    model(idx).float().mean().backward()  # lazy init ran: the root's settings are the final ones
    assert [_resharding(b) for b in model.blocks] == [reshard, reshard, False]  # last block: needed first
    assert not _resharding(model)  # embedding, final norm, head: gathered into backward, always


class _Recorder:
    """Stands in for torch.backends.cuda.matmul: records which flags were set."""

    def __init__(self):
        object.__setattr__(self, "written", {})

    def __setattr__(self, name, value):
        self.written[name] = value


def test_tf32_uses_the_fp32_precision_api_only(monkeypatch):
    from perfkit.config import load_config
    from perfkit.train.distributed import Env
    from perfkit.train.setup import configure_backends

    recorder = _Recorder()
    monkeypatch.setattr(torch.backends.cuda, "matmul", recorder)
    cfg = load_config(CPU_DEBUG, ["--parallel.mixed_precision=bf16"])
    configure_backends(cfg, Env(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0)))
    assert recorder.written == {"fp32_precision": "tf32"}  # never the deprecated allow_tf32
    recorder.written.clear()
    configure_backends(load_config(CPU_DEBUG, ["--parallel.mixed_precision=fp32"]),
                       Env(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0)))
    assert recorder.written == {}  # an fp32 run stays exact fp32


def test_h200_nvl_has_its_own_peak():
    from perfkit.metrics import peak_flops

    assert peak_flops("NVIDIA H200 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12 and peak_flops("NVIDIA GH200 480GB") == 989e12


class _Batches(list):
    micro_batch_size = 4


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x):  # (B, S, width)
        return x + self.proj(x).relu()


class _ShapeModel(nn.Module):
    """Logits that depend on each row's tokens; records every batch shape it is fed."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)
        self.block = _Block(vocab)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, idx, targets=None):  # GPT's interface: the mean loss when given targets
        from perfkit.model import cross_entropy_loss

        self.shapes.append(tuple(idx.shape))
        logits = self.block(self.emb(idx))
        return logits if targets is None else cross_entropy_loss(logits, targets)


def test_eval_pads_the_last_batch_and_means_over_real_tokens_only():
    from perfkit.train.evaluate import evaluate

    torch.manual_seed(0)
    vocab, seq = 11, 5
    rows = [torch.randint(0, vocab, (b, seq + 1)) for b in (4, 4, 2)]  # 10 windows, last batch of 2
    batches = _Batches((r[:, :-1], r[:, 1:]) for r in rows)
    model = _ShapeModel(vocab)
    val = evaluate(model, batches, torch.device("cpu"))
    assert model.shapes == [(4, seq)] * 3  # one shape: nothing for a compiled block to recompile for
    every = torch.cat(rows)  # the mean over all 10 windows' tokens, none dropped, none counted twice
    with torch.no_grad():
        expected = model(every[:, :-1], every[:, 1:]).item()
    assert val == pytest.approx(expected, rel=1e-6)


def test_eval_compiles_a_block_once_with_a_partial_last_batch():
    from perfkit.train.evaluate import evaluate
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _ShapeModel(13)
    model.block.compile(fullgraph=True)  # as parallelize.py compiles each block in place
    rows = [torch.randint(0, 13, (b, 7)) for b in (3, 3, 1)]
    evaluate(model, _Batches((r[:, :-1], r[:, 1:]) for r in rows), torch.device("cpu"))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    torch._dynamo.reset()
