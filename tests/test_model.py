"""GPT model: shapes, parameter counts and FLOPs against hand counts, RoPE and GQA against naive
implementations, causality, initialization statistics, meta-device construction then init."""

import math

import pytest
import torch
import torch.nn.functional as F

from perfkit.config import ModelConfig
from perfkit.model import GPT, count_parameters, cross_entropy_loss, flops_per_token, parameter_count
from perfkit.model.layers import CausalSelfAttention
from perfkit.model.rope import apply_rope, rope_tables


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=1000, sequence_length=32, n_layer=2, n_embd=48, n_head_q=6, n_head_kv=6,
                ffn_hidden=128)
    return ModelConfig(**{**base, **kw})


GPT2_SMALL = dict(vocab_size=50257, sequence_length=1024, n_layer=12, n_embd=768, n_head_q=12,
                  n_head_kv=12, ffn_hidden=3072, positions="learned", activation="gelu",
                  norm="layer_norm", bias=True, tie_embeddings=True)


def test_gpt2_small_parameter_count_matches_published():
    """GPT-2 small with the vocab padded to 50304 has 124,475,904 parameters (nanoGPT's 124M);
    without token and position embeddings 85,056,000 (the "85M non-embedding" of Kaplan et al.)."""
    cfg = ModelConfig(**GPT2_SMALL)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.vocab_size == 50304
    assert count_parameters(model) == parameter_count(cfg) == 124_475_904
    assert count_parameters(model, non_embedding=True) == parameter_count(cfg, True) == 85_056_000
    # 6 N (tied head still does its matmul: + 50304*768) + 12 L H hd T
    assert flops_per_token(cfg) == 6 * (85_056_000 + 50304 * 768) + 12 * 12 * 12 * 64 * 1024


@pytest.mark.parametrize("kw", [
    dict(),
    dict(n_head_kv=2, tie_embeddings=True),
    dict(positions="learned", activation="gelu", norm="layer_norm", bias=True),
    dict(positions="none", bias=True, vocab_size=64),
    dict(norm="layer_norm", bias=False, kernels="torch"),
], ids=str)
def test_parameter_count_formula_matches_module(kw):
    cfg = tiny(**kw)
    model = GPT(cfg)
    assert count_parameters(model) == parameter_count(cfg)
    assert count_parameters(model, non_embedding=True) == parameter_count(cfg, non_embedding=True)
    d, v = cfg.n_embd, model.vocab_size
    embed = v * d + (cfg.sequence_length * d if cfg.positions == "learned" else 0)
    assert count_parameters(model) - count_parameters(model, True) == embed
    head_dim = d // cfg.n_head_q
    matmul_params = count_parameters(model, True) + (v * d if cfg.tie_embeddings else 0)
    assert flops_per_token(cfg) == 6 * matmul_params + 12 * cfg.n_layer * cfg.n_head_q * head_dim * cfg.sequence_length
    assert v % 64 == 0 and v - 64 < cfg.vocab_size <= v


@pytest.mark.parametrize("kw", [dict(), dict(positions="learned", activation="gelu", norm="layer_norm"),
                                dict(n_head_kv=3, tie_embeddings=True, kernels="torch")], ids=str)
def test_forward_shapes_loss_and_backward(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw))
    idx = torch.randint(0, 1000, (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, 1024) and logits.dtype == torch.float32
    loss = cross_entropy_loss(logits, torch.randint(0, 1000, (3, 17)))
    assert abs(loss.item() - math.log(1024)) < 0.5  # small init: close to uniform
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_is_fp32_mean_cross_entropy():
    logits = torch.randn(2, 5, 64).to(torch.bfloat16)
    targets = torch.randint(0, 64, (2, 5))
    loss = cross_entropy_loss(logits, targets)
    logp = logits.double().log_softmax(-1)
    expected = -logp.gather(-1, targets[..., None]).mean()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected.item()) < 1e-5


def test_model_is_causal():
    torch.manual_seed(1)
    model = GPT(tiny(n_head_kv=2)).eval()
    idx = torch.randint(0, 1000, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 1000
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_triton_and_torch_kernel_settings_agree():
    """kernels="triton" (ops, reference impl on CPU) and "torch" (direct reference) are the same math."""
    torch.manual_seed(2)
    a, b = GPT(tiny(kernels="triton")), GPT(tiny(kernels="torch"))
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 1000, (2, 9))
    torch.testing.assert_close(a(idx), b(idx))


def test_rope_matches_complex_rotation():
    """Pair i of head vector x at position t is multiplied by exp(1j * t * base^(-2i/hd))."""
    B, H, T, hd, base = 2, 3, 7, 8, 500.0
    x = torch.randn(B, H, T, hd)
    cos, sin = rope_tables(T, hd, base)
    out = apply_rope(x, cos, sin)
    z = torch.complex(x[..., : hd // 2].double(), x[..., hd // 2:].double())  # (B, H, T, hd/2)
    theta = torch.tensor([[t * base ** (-2 * i / hd) for i in range(hd // 2)] for t in range(T)],
                         dtype=torch.float64)
    rotated = z * torch.polar(torch.ones_like(theta), theta)
    expected = torch.cat([rotated.real, rotated.imag], dim=-1)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    # attention scores then depend only on the offset between positions
    q, k = torch.randn(hd), torch.randn(hd)
    cos, sin = rope_tables(32, hd, base)

    def score(m, n):
        qm = apply_rope(q.view(1, 1, 1, hd).expand(1, 1, 32, hd), cos, sin)[0, 0, m]
        kn = apply_rope(k.view(1, 1, 1, hd).expand(1, 1, 32, hd), cos, sin)[0, 0, n]
        return (qm * kn).sum()

    torch.testing.assert_close(score(5, 2), score(20, 17), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_head_kv", [1, 2, 6])
def test_attention_matches_naive_gqa(n_head_kv):
    torch.manual_seed(3)
    cfg = tiny(n_head_kv=n_head_kv, bias=True)
    attn = CausalSelfAttention(cfg)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    B, T, hd, nq = 2, 9, cfg.n_embd // cfg.n_head_q, cfg.n_head_q
    x = torch.randn(B, T, cfg.n_embd)
    cos, sin = rope_tables(T, hd, cfg.rope_base)
    out = attn(x, (cos, sin))
    # naive: per-head loops, K/V head j serves query heads j*group .. (j+1)*group-1
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.split([nq * hd, n_head_kv * hd, n_head_kv * hd], dim=-1)
    group = nq // n_head_kv
    mask = torch.ones(T, T).tril().bool()
    heads = []
    for h in range(nq):
        qh = apply_rope(q[..., h * hd:(h + 1) * hd].unsqueeze(1), cos, sin)[:, 0]
        j = h // group
        kh = apply_rope(k[..., j * hd:(j + 1) * hd].unsqueeze(1), cos, sin)[:, 0]
        vh = v[..., j * hd:(j + 1) * hd]
        scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
        heads.append(scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vh)
    expected = torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_init_statistics():
    torch.manual_seed(4)
    cfg = tiny(n_layer=4, n_embd=256, n_head_q=4, n_head_kv=4, ffn_hidden=512, bias=True, vocab_size=4096)
    model = GPT(cfg)
    resid = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            want = resid if name.endswith(("attn.proj.weight", "mlp.proj.weight")) else cfg.init_std
            assert abs(p.mean().item()) < 0.1 * want, name
            assert abs(p.std().item() - want) < 0.05 * want, (name, p.std().item(), want)
    names = set(model.state_dict())
    assert "rope_cos" not in names and "rope_sin" not in names


def test_meta_construction_then_init_matches_eager_structure():
    cfg = tiny(n_head_kv=2, tie_embeddings=True, dropout=0.1)
    with torch.device("meta"):
        model = GPT(cfg)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    torch.manual_seed(5)
    model.init_weights()
    eager = GPT(cfg)
    assert model.lm_head.weight is model.tok_emb.weight  # tying survives to_empty
    torch.testing.assert_close(model.rope_cos, eager.rope_cos, atol=0, rtol=0)
    torch.testing.assert_close(model.rope_sin, eager.rope_sin, atol=0, rtol=0)
    for p in model.parameters():
        assert torch.isfinite(p).all()
    model.train()
    logits = model(torch.randint(0, 1000, (2, 32)))
    cross_entropy_loss(logits, torch.randint(0, 1000, (2, 32))).backward()
    with pytest.raises(ValueError):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_a_few_adamw_steps_fit_a_fixed_batch():
    """Gradients flow end to end: 40 steps on one batch drive the loss well below uniform."""
    torch.manual_seed(6)
    model = GPT(tiny(n_head_kv=2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 1000, (4, 32))
    targets = idx.roll(-1, dims=1)
    for _ in range(40):
        loss = cross_entropy_loss(model(idx), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * math.log(1024), loss.item()
