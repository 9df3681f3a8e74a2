"""$.parallel.float8 on CPU (torch's CPU _scaled_mm runs torchao's float8 linears, slowly): which
linears are converted, float8 numerics against the fp32 model, FSDP2 composition (tensorwise
all-gathers float8 weights, the scales are precomputed after each step), checkpoints that move
between float8 and bf16, activation checkpointing over float8 linears, the refusals before the
model is built, and the memory estimate's float8 term. tests/test_float8_gpu.py trains on a GPU."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch

from perfkit.config import ModelConfig, ParallelConfig, load_config
from perfkit.errors import UserError
from perfkit.model import GPT
from perfkit.train import float8
from perfkit.train.memory_estimate import estimate_memory
from test_activation_checkpoint import _saved_bytes
from test_first_gpu_run import CPU_DEBUG, world_of_one  # noqa: F401 (fixture)

Float8Linear = pytest.importorskip("torchao.float8.float8_linear").Float8Linear


def _cpu_scaled_mm_has_rowwise() -> bool:
    """torch >= 2.13's CPU _scaled_mm takes per-row scales; 2.11's only per-tensor ones."""
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32)
    except RuntimeError:
        return False
    return True


ROWWISE = pytest.param("rowwise", marks=pytest.mark.skipif(
    not _cpu_scaled_mm_has_rowwise(), reason=f"torch {torch.__version__}'s CPU _scaled_mm has no rowwise scales"))


def tiny(**kw) -> ModelConfig:
    # qkv 128 -> 256 (4 query + 2 kv heads of 32), attn.proj 128 -> 128,
    # mlp.fc 128 -> 80 (SwiGLU packs 2 x 40), mlp.proj 40 -> 128 (40: not a multiple of 16)
    base = dict(vocab_size=256, sequence_length=32, n_layer=2, n_embd=128, n_head_q=4, n_head_kv=2,
                ffn_hidden=40, kernels="torch")
    return ModelConfig(**{**base, **kw})


def on(**kw) -> ParallelConfig:
    return ParallelConfig(**{"float8": True, "compile": False, **kw})


def converted_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}


@pytest.mark.parametrize("min_features,per_block", [
    (16, {"attn.qkv", "attn.proj", "mlp.fc"}),   # mlp.proj's 40 inputs: not a multiple of 16
    (96, {"attn.qkv", "attn.proj"}),             # mlp.fc's 80 outputs < 96
    (128, {"attn.qkv", "attn.proj"}),             # the boundary: min(in, out) = 128 >= 128 converts
])
def test_only_the_large_block_linears_are_converted(min_features, per_block):
    model = GPT(tiny(tie_embeddings=True))
    names_before = list(model.state_dict())
    par = on(float8_min_features=min_features)
    chosen = float8.convert_block_linears(model, par)
    expected = {f"blocks.{b}.{n}" for b in range(2) for n in per_block}
    assert set(chosen) == expected == converted_names(model)
    assert type(model.lm_head) is torch.nn.Linear and type(model.tok_emb) is torch.nn.Embedding
    assert list(model.state_dict()) == names_before  # checkpoints load with float8 on or off
    assert model.lm_head.weight is model.tok_emb.weight  # the tied head stays tied
    plan = float8.plan(tiny(), par)  # --dry-run's view, from a meta model, says the same
    assert {n for n, _, _ in plan.converted} == expected
    assert plan.to_dict()["converted_linears"] == len(expected)


def test_float8_off_converts_nothing():
    model = GPT(tiny())
    assert float8.convert_block_linears(model, ParallelConfig()) == [] and not converted_names(model)


def test_no_qualifying_linear_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"^\$\.parallel\.float8_min_features = 256: no block linear .*widest "
                                        r"has min\(in, out\) = 128"):
        float8.plan(tiny(), on(float8_min_features=256))


def _loss_and_grads(model, idx, targets):
    loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("recipe", [ROWWISE, "tensorwise"])
def test_a_float8_linear_is_within_float8_rounding_of_fp32(recipe):
    """One converted linear against the same fp32 linear on random inputs: e4m3 keeps 3 mantissa
    bits (relative rounding error up to 2**-4, about 0.036 rms), so out, d(input) and d(weight)
    differ by a few percent - not by 0 (then nothing was quantized) and not by more than 0.1."""
    torch.manual_seed(0)
    ref = GPT(tiny(n_layer=1)).blocks[0].mlp  # fc: 128 -> 80, proj: 40 -> 128 (kept)
    f8 = copy.deepcopy(ref)
    assert float8.convert_block_linears(torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([f8])}),
                                        on(float8_recipe=recipe, float8_min_features=16)) == ["blocks.0.fc"]
    x0 = torch.randn(64, 128, requires_grad=True)
    x1 = x0.detach().clone().requires_grad_()
    grad_out = torch.randn(64, 80)
    y0, y1 = ref.fc(x0), f8.fc(x1)
    y0.backward(grad_out)
    y1.backward(grad_out)
    for got, want in ((y1, y0), (x1.grad, x0.grad), (f8.fc.weight.grad, ref.fc.weight.grad)):
        assert 0.005 < _rel(got, want) < 0.1


@pytest.mark.parametrize("recipe", [ROWWISE, "tensorwise"])
def test_a_float8_model_is_close_to_fp32(recipe):
    """The whole model (8 converted linears, 2 blocks): the loss moves by well under 1 %, every
    gradient keeps its direction (cosine > 0.95; the rounding of 3 GEMMs per linear compounds
    through the layers to about 0.2 relative error at this size)."""
    torch.manual_seed(0)
    ref = GPT(tiny(ffn_hidden=64, init_std=0.1))
    f8 = copy.deepcopy(ref)
    assert len(float8.convert_block_linears(f8, on(float8_recipe=recipe, float8_min_features=16))) == 8
    gen = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 256, (4, 32), generator=gen), torch.randint(0, 256, (4, 32), generator=gen)
    loss0, grads0 = _loss_and_grads(ref, idx, targets)
    loss1, grads1 = _loss_and_grads(f8, idx, targets)
    assert 0 < abs(loss1 - loss0) / loss0 < 0.01, (loss0, loss1)  # > 0: the float8 path really ran
    for name, g0 in grads0.items():
        cos = torch.nn.functional.cosine_similarity(grads1[name].flatten(), g0.flatten(), dim=0).item()
        assert cos > 0.95 and _rel(grads1[name], g0) < 0.35, (name, cos)


@pytest.mark.parametrize("recipe,init_device", [("tensorwise", "meta"), pytest.param(*ROWWISE.values, "cpu",
                                                                                      marks=ROWWISE.marks)])
def test_float8_under_fsdp2_trains(world_of_one, recipe, init_device):
    """build_model converts before fully_shard; tensorwise all-gathers float8 weights and the
    optimizer post-hook precomputes their scales; the loss of a fixed batch falls."""
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    from perfkit.train.parallelize import build_model

    cfg = load_config(CPU_DEBUG, ["--model.vocab_size=64", "--model.n_embd=64", "--model.ffn_hidden=128",
                                  "--parallel.compile=false", "--parallel.float8=true",
                                  f"--parallel.float8_recipe={recipe}", "--parallel.float8_min_features=64",
                                  f"--parallel.init_device={init_device}"])
    model = build_model(cfg.model, cfg.parallel, torch.device("cpu"), seed=0)
    assert converted_names(model) == {f"blocks.{b}.{n}" for b in range(2)
                                      for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    fc_weight = model.blocks[0].mlp.fc.weight._local_tensor  # the FSDP2 shard
    assert isinstance(fc_weight, WeightWithDynamicFloat8CastTensor) == (recipe == "tensorwise")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    hook = float8.register_scale_precompute(model, opt, cfg.parallel)
    assert (hook is not None) == (recipe == "tensorwise")
    gen = torch.Generator().manual_seed(0)
    idx, targets = torch.randint(0, 64, (4, 16), generator=gen), torch.randint(0, 64, (4, 16), generator=gen)
    losses = []
    for _ in range(6):
        loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < losses[0] - 1.0, losses
    if recipe == "tensorwise":  # the hook ran: the scale FSDP2 uses for the next all-gather is set
        scale = fc_weight._precomputed_scale
        expected = torch.finfo(torch.float8_e4m3fn).max / fc_weight.abs().max().double()
        torch.testing.assert_close(scale, expected.float())


def _fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_device_refusals_name_the_key(monkeypatch):
    par = on()
    float8.check_device(ParallelConfig(), torch.device("cpu"))  # off: nothing to refuse
    with pytest.raises(UserError, match=r"^\$\.parallel\.float8 = true needs a CUDA GPU .* on cpu"):
        float8.check_device(par, torch.device("cpu"))
    _fake_gpu(monkeypatch, (8, 0))
    with pytest.raises(UserError, match=r"^\$\.parallel\.float8 = true needs compute capability >= 8\.9.*"
                                        r"Fake GPU has 8\.0"):
        float8.check_device(par, torch.device("cuda", 0))
    _fake_gpu(monkeypatch, (9, 0))
    float8.check_device(par, torch.device("cuda", 0))  # Hopper with torchao: accepted
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # as if torchao were not installed
    with pytest.raises(UserError, match=r"^\$\.parallel\.float8 = true needs torchao \(pip install "
                                        r"'perfkit\[float8\]'\)"):
        float8.check_device(par, torch.device("cuda", 0))


def test_train_refuses_float8_on_cpu_before_building(tmp_path, capfd, monkeypatch):
    from test_train import make_dataset

    from perfkit.train import parallelize
    from perfkit.train.train_cmd import main

    def never(*a, **k):
        raise AssertionError("the model was built")
    monkeypatch.setattr(parallelize, "GPT", never)
    train, _ = make_dataset(tmp_path / "data")
    root = tmp_path / "runs"
    rc = main([CPU_DEBUG, "--parallel.float8=true", "--parallel.float8_min_features=64", f"--run.root={root}",
               f"--data.train=['{train}']", "--data.val=[]", "--model.vocab_size=256"])
    err = capfd.readouterr().err.strip().splitlines()  # print_line writes to fd 2 in one write(2)
    assert rc == 2 and err == ["perfkit train: $.parallel.float8 = true needs a CUDA GPU with compute capability "
                               ">= 8.9 (H100, H200, L4, ...); this run is on cpu: set --parallel.float8=false"]
    assert not root.exists()  # nothing written


def test_dry_run_shows_the_float8_plan(tmp_path, capsys):
    from test_train import make_dataset

    from perfkit.train.train_cmd import main

    train, _ = make_dataset(tmp_path / "data")
    rc = main([CPU_DEBUG, "--dry-run", "--parallel.float8=true", "--parallel.float8_min_features=64",
               f"--data.train=['{train}']", "--data.val=[]", "--model.vocab_size=256"])
    assert rc == 0
    derived = json.loads(capsys.readouterr().out)["derived"]
    assert derived["float8"] == {
        "recipe": "rowwise", "float8_all_gather": False, "converted_linears": 8,
        "converted_per_block": ["attn.qkv (64 -> 128)", "attn.proj (64 -> 64)", "mlp.fc (64 -> 384)",
                                "mlp.proj (192 -> 64)"], "kept_per_block": []}


def test_memory_estimate_counts_float8_gathered_weights():
    """tensorwise: the gathered copies of converted weights are 1 byte per element instead of 2
    (bf16); rowwise and the other terms are unchanged. The converted elements are counted on a
    real converted model, not from the plan."""
    model_cfg = tiny(n_layer=6)
    model = GPT(model_cfg)
    float8.convert_block_linears(model, on(float8_min_features=16))
    per_block = sum(m.weight.numel() for n, m in model.named_modules()
                    if isinstance(m, Float8Linear) and n.startswith("blocks.0."))
    args = dict(micro_batch_size=2, world_size=4, device_type="cuda")
    base = estimate_memory(model_cfg, ParallelConfig(), **args).breakdown
    for recipe in ("rowwise", "tensorwise"):
        for reshard, gathered_blocks in ((True, 3), (False, 6)):
            par = ParallelConfig(float8=True, float8_recipe=recipe, float8_min_features=16,
                                 reshard_after_forward=reshard)
            est = estimate_memory(model_cfg, par, **args).breakdown
            ref = estimate_memory(model_cfg, ParallelConfig(reshard_after_forward=reshard), **args).breakdown
            saved = gathered_blocks * per_block * (2 - 1) if recipe == "tensorwise" else 0
            assert est["parameters"] == ref["parameters"] - saved
            assert {k: v for k, v in est.items() if k != "parameters"} == \
                   {k: v for k, v in base.items() if k != "parameters"}


@pytest.mark.parametrize("recipe", [ROWWISE, "tensorwise"])
def test_float8_saves_what_the_unconverted_model_saves(recipe):
    """The estimate's activations term is float8-blind because torchao's linear saves its
    high-precision input and weight, as F.linear does: eager, the saved bytes are equal."""
    torch.manual_seed(0)
    ref = GPT(tiny(ffn_hidden=64))
    f8 = copy.deepcopy(ref)
    assert len(float8.convert_block_linears(f8, on(float8_recipe=recipe, float8_min_features=16))) == 8
    idx, targets = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    assert _saved_bytes(f8, idx, targets) == _saved_bytes(ref, idx, targets) > 0


@pytest.mark.parametrize("mode,recomputed", [("none", 0), ("op", 0), ("full", 8)])
def test_op_checkpointing_does_not_redo_float8_matmuls(mode, recomputed):
    """Checkpointing sees a float8 linear's matmul as aten.mm (on torchao's float8 tensor), so
    "op" keeps its output like any other matmul's and "full" redoes all 8 in backward; the loss
    is the same in every mode (the recompute replays the same casts)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from perfkit.train.activation_checkpoint import apply_activation_checkpointing

    class CountMatmuls(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func in (torch.ops.aten.mm.default, torch.ops.aten._scaled_mm.default)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = GPT(tiny(ffn_hidden=64))
    float8.convert_block_linears(model, on(float8_recipe="tensorwise", float8_min_features=16))
    apply_activation_checkpointing(model.blocks, mode, 1)
    gen = torch.Generator().manual_seed(1)
    loss = model(torch.randint(0, 256, (4, 32), generator=gen), torch.randint(0, 256, (4, 32), generator=gen))
    counter = CountMatmuls()
    with counter:
        loss.backward()
    # backward without recompute: 2 matmuls per linear (d input, d weight) for 8 float8 linears + the head
    assert counter.calls == 2 * 8 + 2 + recomputed
    torch.manual_seed(0)
    plain = GPT(tiny(ffn_hidden=64))
    float8.convert_block_linears(plain, on(float8_recipe="tensorwise", float8_min_features=16))
    gen = torch.Generator().manual_seed(1)
    assert loss.item() == plain(torch.randint(0, 256, (4, 32), generator=gen),
                                torch.randint(0, 256, (4, 32), generator=gen)).item()


def test_bench_refuses_float8_on_cpu_with_one_line(tmp_path, capsys):
    from perfkit.bench.train import main

    rc = main([CPU_DEBUG, "--synthetic", "--compare", "float8", "--steps", "1", "--warmup", "0",
               "--model.vocab_size=256", "--parallel.float8_min_features=64", f"--run.root={tmp_path / 'runs'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and err[-1].startswith("perfkit bench train: $.parallel.float8 = true needs a CUDA GPU"), err
    assert not (tmp_path / "runs").exists()


def _sharded_model(float8_on: bool):
    from perfkit.train.parallelize import build_model

    cfg = load_config(CPU_DEBUG, ["--model.vocab_size=64", "--model.n_embd=64", "--model.ffn_hidden=128",
                                  "--parallel.compile=false", f"--parallel.float8={str(float8_on).lower()}",
                                  "--parallel.float8_recipe=tensorwise", "--parallel.float8_min_features=64"])
    model = build_model(cfg.model, cfg.parallel, torch.device("cpu"), seed=0)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


@pytest.mark.parametrize("saved_with,loaded_with", [(True, False), (False, True)])
def test_a_checkpoint_moves_between_float8_and_bf16(world_of_one, tmp_path, saved_with, loaded_with):
    """DCP state of the sharded model and AdamW, saved with float8 (tensorwise: torchao's float8
    weight wrappers) on or off, loads into the other setting with every value equal."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from perfkit.checkpoint import safe_metadata

    model, opt = _sharded_model(saved_with)
    idx, targets = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    for _ in range(2):
        model(idx, targets).backward()
        opt.step()
        opt.zero_grad()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp_path / "ckpt"))
    saved = {k: v.full_tensor().clone() for k, v in model_sd.items()}

    other, other_opt = _sharded_model(loaded_with)
    model_sd, optim_sd = get_state_dict(other, other_opt)
    want = {"model": model_sd, "optim": optim_sd}
    safe_metadata.load(want, tmp_path / "ckpt")
    set_state_dict(other, other_opt, model_state_dict=want["model"], optim_state_dict=want["optim"])
    loaded = {k: v.full_tensor() for k, v in get_state_dict(other, other_opt)[0].items()}
    assert loaded.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(torch.as_tensor(loaded[k]).float(), torch.as_tensor(v).float()), k
    other(idx, targets).backward()  # and it trains on
    other_opt.step()
