"""One fullgraph torch.compile (Inductor) of a transformer block that uses the kernel ops:
no graph break, the perfkit ops are in the graph, forward and gradients equal eager.
(Kept to one compile: Inductor on this CPU costs tens of seconds.)"""

import pytest
import torch

from perfkit.config import ModelConfig
from perfkit.model.layers import Block
from perfkit.model.rope import rope_tables


def test_block_compiles_fullgraph_with_kernel_ops():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, sequence_length=16, n_layer=2, n_embd=32, n_head_q=4, n_head_kv=2,
                      ffn_hidden=48, kernels="triton")
    block = Block(cfg)
    for p in block.parameters():
        torch.nn.init.normal_(p, mean=1.0 if p.dim() == 1 else 0.0, std=0.1)
    rope = rope_tables(cfg.sequence_length, cfg.n_embd // cfg.n_head_q, cfg.rope_base)
    x = torch.randn(2, cfg.sequence_length, cfg.n_embd)

    dynamo_ops = []

    def recording_inductor(gm, example_inputs):
        dynamo_ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs)

    compiled = torch.compile(block, fullgraph=True, backend=recording_inductor)  # raises on a graph break
    xc = x.clone().requires_grad_(True)
    out = compiled(xc, rope)
    out.square().mean().backward()
    compiled_grads = [p.grad.clone() for p in block.parameters()]

    block.zero_grad()
    xe = x.clone().requires_grad_(True)
    expected = block(xe, rope)
    expected.square().mean().backward()

    assert any("perfkit.rms_norm_residual" in t for t in dynamo_ops), dynamo_ops
    assert any("perfkit.rms_norm." in t for t in dynamo_ops), dynamo_ops
    assert any("perfkit.swiglu_packed" in t for t in dynamo_ops), dynamo_ops
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-5)
    for got, p in zip(compiled_grads, block.parameters()):
        torch.testing.assert_close(got, p.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_triton_block_matches_torch_block_on_cuda():
    """Real kernels inside a compiled bf16 block vs the compiled pure-PyTorch block."""
    torch.manual_seed(0)
    kw = dict(vocab_size=128, sequence_length=256, n_layer=2, n_embd=768, n_head_q=12, n_head_kv=4,
              ffn_hidden=2048)
    blocks = {k: Block(ModelConfig(**kw, kernels=k)).cuda().bfloat16() for k in ("triton", "torch")}
    blocks["torch"].load_state_dict(blocks["triton"].state_dict())
    for p in blocks["triton"].parameters():
        torch.nn.init.normal_(p, mean=1.0 if p.dim() == 1 else 0.0, std=0.05)
    blocks["torch"].load_state_dict(blocks["triton"].state_dict())
    cos, sin = rope_tables(256, 64, 10000.0, device="cuda")
    x = torch.randn(4, 256, 768, device="cuda", dtype=torch.bfloat16)
    results = {}
    for k, block in blocks.items():
        xi = x.clone().requires_grad_(True)
        out = torch.compile(block, fullgraph=True)(xi, (cos, sin))
        out.float().square().mean().backward()
        results[k] = [out, xi.grad] + [p.grad for p in block.parameters()]
    for a, b in zip(results["triton"], results["torch"]):  # bf16: compare relative to each tensor's scale
        assert ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() < 3e-2
