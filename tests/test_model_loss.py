"""The model owns its loss: `model(idx, targets)` equals the old path (logits from `model(idx)`,
then `cross_entropy_loss`) exactly on CPU fp32, loss and every gradient, and the trainer's step and
the evaluator give the same numbers as that path did."""

import copy

import pytest
import torch

from perfkit.config import ModelConfig
from perfkit.model import GPT, cross_entropy_loss
from perfkit.train.evaluate import evaluate
from perfkit.train.step import train_step


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=1000, sequence_length=32, n_layer=2, n_embd=48, n_head_q=6, n_head_kv=2,
                ffn_hidden=128)
    return ModelConfig(**{**base, **kw})


def _batch(seed, b=3, t=17, ignore_some=True):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1000, (b, t), generator=gen)
    targets = torch.randint(0, 1000, (b, t), generator=gen)
    if ignore_some:
        targets[0, :5] = -100  # ignored targets, as the val padding writes them
    return idx, targets


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=True),
                                dict(positions="learned", activation="gelu", norm="layer_norm", bias=True)],
                         ids=["untied", "tied", "gpt2-style"])
def test_model_loss_equals_logits_then_cross_entropy(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw))
    old = copy.deepcopy(model)
    idx, targets = _batch(1)
    new_loss = model(idx, targets)
    old_loss = cross_entropy_loss(old(idx), targets)  # the path step.py and evaluate.py took before
    assert new_loss.dtype == torch.float32 and new_loss.shape == ()
    torch.testing.assert_close(new_loss, old_loss, atol=0, rtol=0)
    new_loss.backward()
    old_loss.backward()
    for (name, p), q in zip(model.named_parameters(), old.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=0, rtol=0, msg=name)
    # and both equal an independent float64 cross-entropy of the logits (ignored targets left out)
    with torch.no_grad():
        logp = old(idx).double().log_softmax(-1)
        keep = targets != -100
        expected = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    assert abs(new_loss.item() - expected.item()) < 1e-5


def test_forward_without_targets_still_returns_logits():
    model = GPT(tiny())
    idx, _ = _batch(2)
    assert model(idx).shape == (3, 17, 1024)


def test_train_step_matches_the_old_manual_step():
    """Two micro-batches, clipping, AdamW: the parameters after train_step equal those of the old
    loop body (logits, cross_entropy_loss / grad_accum, backward, clip, step)."""
    torch.manual_seed(3)
    model = GPT(tiny())
    old = copy.deepcopy(model)
    batches = [_batch(10), _batch(11)]

    def make_opt(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    opt, sched = make_opt(model)
    it = iter(batches)
    result = train_step(model, opt, sched, lambda: next(it), grad_accum=2, grad_clip=0.5)

    old_opt, _ = make_opt(old)
    old_sum = 0.0
    for idx, targets in batches:
        loss = cross_entropy_loss(old(idx), targets) / 2
        loss.backward()
        old_sum += loss.item()
    old_norm = torch.nn.utils.clip_grad_norm_(old.parameters(), 0.5)
    old_opt.step()

    assert result.loss.item() == pytest.approx(old_sum, rel=1e-6)
    assert result.grad_norm.item() == pytest.approx(old_norm.item(), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), old.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_evaluate_with_the_model_loss_is_the_token_mean():
    """Padded last batch (ignored targets) and all: the mean of the old per-batch losses weighted by
    their token counts."""
    torch.manual_seed(4)
    model = GPT(tiny())
    batches = [_batch(20, b=4, ignore_some=False), _batch(21, b=4, ignore_some=False),
               _batch(22, b=2, ignore_some=False)]
    val = evaluate(model, batches, torch.device("cpu"))
    with torch.no_grad():
        losses = [cross_entropy_loss(model(i), t).double() * t.numel() for i, t in batches]
    expected = sum(losses) / sum(t.numel() for _, t in batches)
    assert val == pytest.approx(expected.item(), rel=1e-6)
