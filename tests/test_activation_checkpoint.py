"""$.parallel.activation_checkpointing: "full" and "op", every k-th block, give the loss and
gradients of "none" (CPU fp32, dropout on: the checkpoint replays the RNG), keep the parameter
names, keep fewer activations, and a checkpointed block compiles fullgraph."""

import copy

import pytest
import torch

from perfkit.config import ConfigError, ModelConfig, load_config
from perfkit.model import GPT
from perfkit.train.activation_checkpoint import apply_activation_checkpointing


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=256, sequence_length=32, n_layer=4, n_embd=48, n_head_q=6, n_head_kv=2,
                ffn_hidden=128, dropout=0.1)
    return ModelConfig(**{**base, **kw})


def _loss_and_grads(model, idx, targets):
    torch.manual_seed(123)  # same dropout masks for every variant
    loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode,every", [("full", 1), ("full", 2), ("op", 1), ("op", 3)])
def test_checkpointing_gives_the_same_loss_and_gradients(mode, every):
    torch.manual_seed(0)
    base = GPT(tiny())
    ckpt = copy.deepcopy(base)
    chosen = apply_activation_checkpointing(ckpt.blocks, mode, every)
    assert chosen == list(range(0, 4, every))
    assert list(ckpt.state_dict()) == list(base.state_dict())  # names unchanged
    gen = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 256, (3, 32), generator=gen), torch.randint(0, 256, (3, 32), generator=gen)
    loss0, grads0 = _loss_and_grads(base, idx, targets)
    loss1, grads1 = _loss_and_grads(ckpt, idx, targets)
    torch.testing.assert_close(loss1, loss0, atol=0, rtol=0)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, atol=1e-7, rtol=1e-6, msg=name)


def _saved_bytes(model, idx, targets) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(idx, targets)
    loss.backward()
    return total[0]


def test_full_checkpointing_keeps_fewer_activations():
    torch.manual_seed(0)
    base = GPT(tiny(dropout=0.0, vocab_size=64))
    ckpt = copy.deepcopy(base)
    apply_activation_checkpointing(ckpt.blocks, "full", 1)
    idx = torch.randint(0, 64, (4, 32))
    none, full = _saved_bytes(base, idx, idx), _saved_bytes(ckpt, idx, idx)
    assert full < 0.5 * none, (full, none)


def test_checkpointed_block_compiles_fullgraph():
    torch._dynamo.reset()
    model = GPT(tiny(dropout=0.0))
    apply_activation_checkpointing(model.blocks, "op", 1)
    block = model.blocks[0]
    x = torch.randn(2, 32, 48, requires_grad=True)
    rope = (model.rope_cos, model.rope_sin)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")  # raises on a graph break
    out = compiled(x, rope)
    out.square().mean().backward()
    xe = x.detach().clone().requires_grad_(True)
    expected = block(xe, rope)
    torch.testing.assert_close(out, expected)
    expected.square().mean().backward()
    torch.testing.assert_close(x.grad, xe.grad)
    torch._dynamo.reset()


def test_every_must_be_positive():
    with pytest.raises(ConfigError, match="activation_checkpointing_every"):
        load_config("configs/cpu_debug.toml", ["--parallel.activation_checkpointing_every=0"])


@pytest.mark.parametrize("mode", ["full", "op"])
def test_trainer_losses_with_checkpointing_equal_none(tmp_path, mode):
    """The whole trainer (build_model: checkpointing -> FSDP2 on one gloo rank), 6 steps: the same
    logged losses and gradient norms as without checkpointing."""
    from test_train import records, run_main

    common = {"training.max_steps": 6, "metrics.log_every": 1, "training.eval_every": 0}
    rc0, run0 = run_main(tmp_path / "none", "none", **common)
    rc1, run1 = run_main(tmp_path / mode, mode, **common, **{"parallel.activation_checkpointing": f'"{mode}"',
                                                            "parallel.activation_checkpointing_every": 2})
    assert rc0 == rc1 == 0
    a, b = records(run0), records(run1)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6, abs=1e-7)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5)
