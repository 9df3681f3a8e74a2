"""float8 training of the transformer blocks' linears ($.parallel.float8), with torchao.float8.

What is converted: a linear inside `blocks.*` (attn.qkv, attn.proj, mlp.fc, mlp.proj) whose in and
out features are both multiples of 16 (torch._scaled_mm's requirement) and both at least
$.parallel.float8_min_features (default 2048: a narrower GEMM spends more on the dynamic casts and
scales than the float8 tensor cores win back). The head stays in the compute dtype (the loss
multiplies by its weight itself, perfkit/model/loss.py, and the logits' precision matters most),
as do the embedding and the norms.

Recipes ($.parallel.float8_recipe, torchao's Float8LinearConfig.from_recipe_name):
- "rowwise": one scale per row of each operand, power-of-two scales; torchao's more accurate
  recipe. FSDP2 all-gathers the weights in the compute dtype and each linear casts its own.
- "tensorwise": one scale per tensor; FSDP2 casts each weight shard to float8 before the
  all-gather (half the bytes on the wire and in the gathered copy), and after every optimizer
  step one all-reduce computes all weight scales at once (precompute_float8_dynamic_scale_for_fsdp,
  an optimizer post-hook here) instead of one per weight at its all-gather.

Order (perfkit/train/parallelize.py): construct -> float8 conversion -> activation checkpointing
-> compile per block -> fully_shard. torchao swaps nn.Linear for its Float8Linear subclass with the
same `weight` / `bias` parameters, so parameter names, init_weights() and checkpoints are unchanged:
a checkpoint written with float8 on resumes with it off and the other way round.

Supported devices: CUDA with compute capability >= 8.9 (Ada, Hopper and newer: float8 tensor
cores). `check_device` refuses anything else, and a missing torchao, in one line naming
$.parallel.float8 before the model is built. torchao is an optional package (`pip install
'perfkit[float8]'`): it is imported inside the functions that need it, so perfkit runs without it.
Two process-wide effects of torchao, both only in a run with float8 on: importing torchao.float8
adds its float8 tensor and config classes to torch.load's weights_only allow-list, and
convert_to_float8_training switches Inductor's Triton min/max codegen to an equivalent tl.where
form (torchao's workaround for a Triton miscompile of float8 stores, triton-lang/triton#11111).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from perfkit.config import ModelConfig, ParallelConfig
from perfkit.errors import UserError
from perfkit.model import GPT

MIN_CAPABILITY = (8, 9)   # float8 tensor cores: Ada (8.9), Hopper (9.0) and newer
INSTALL_HINT = "pip install 'perfkit[float8]'"


def selected(name: str, in_features: int, out_features: int, min_features: int) -> bool:
    """The conversion rule of the module docstring, on a linear's name (as in GPT.named_modules())
    and its shape."""
    return (name.startswith("blocks.") and in_features % 16 == 0 and out_features % 16 == 0
            and min(in_features, out_features) >= min_features)


@dataclass(frozen=True)
class Float8Plan:
    """Which block linears float8 converts, from the model built on the meta device (no memory)."""

    recipe: str
    converted: list[tuple[str, int, int]]   # (name, in_features, out_features) of every converted linear
    kept: list[tuple[str, int, int]]        # the block linears that stay in the compute dtype

    @property
    def float8_all_gather(self) -> bool:
        return self.recipe == "tensorwise"

    def converted_weight_elements(self, block: int = 0) -> int:
        """Weight elements of the converted linears of one block (all blocks have the same shapes)."""
        prefix = f"blocks.{block}."
        return sum(i * o for name, i, o in self.converted if name.startswith(prefix))

    def to_dict(self) -> dict:
        """For --dry-run: the recipe and, per block, what is converted and what is not."""
        def per_block(rows):
            return [f"{name.split('.', 2)[2]} ({i} -> {o})" for name, i, o in rows if name.startswith("blocks.0.")]
        return {"recipe": self.recipe, "float8_all_gather": self.float8_all_gather,
                "converted_linears": len(self.converted), "converted_per_block": per_block(self.converted),
                "kept_per_block": per_block(self.kept)}


def plan(model_cfg: ModelConfig, par: ParallelConfig) -> Float8Plan:
    """The plan of `model_cfg` under `par`; a UserError when float8 is on and no linear qualifies
    (a run with float8 on that converts nothing would only pretend)."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    converted, kept = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("blocks."):
            row = (name, module.in_features, module.out_features)
            (converted if selected(*row, par.float8_min_features) else kept).append(row)
    if par.float8 and not converted:
        widest = max(min(i, o) for _, i, o in kept)
        raise UserError(f"$.parallel.float8_min_features = {par.float8_min_features}: no block linear of this "
                        f"model qualifies (the widest has min(in, out) = {widest}; float8 gains only on large "
                        f"GEMMs); lower it to a multiple of 16 or set $.parallel.float8 = false")
    return Float8Plan(recipe=par.float8_recipe, converted=converted, kept=kept)


def check_device(par: ParallelConfig, device: torch.device) -> None:
    """Refuse float8 where it cannot run: not CUDA, compute capability < 8.9, torchao missing."""
    if not par.float8:
        return
    if device.type != "cuda":
        raise UserError(f"$.parallel.float8 = true needs a CUDA GPU with compute capability >= 8.9 "
                        f"(H100, H200, L4, ...); this run is on {device.type}: set --parallel.float8=false")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise UserError(f"$.parallel.float8 = true needs compute capability >= 8.9 (float8 tensor cores); "
                        f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: "
                        f"set --parallel.float8=false")
    try:
        import torchao.float8  # noqa: F401  (the optional package: only this check needs it here)
    except ImportError as e:
        raise UserError(f"$.parallel.float8 = true needs torchao ({INSTALL_HINT}): {e}") from None


def linear_config(par: ParallelConfig):
    """torchao's Float8LinearConfig for the recipe; tensorwise all-gathers float8 weights under FSDP2
    (every perfkit model is sharded with fully_shard, even on one rank)."""
    from torchao.float8 import Float8LinearConfig

    config = Float8LinearConfig.from_recipe_name(par.float8_recipe)
    if par.float8_recipe == "tensorwise":
        config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
    return config


def convert_block_linears(model: nn.Module, par: ParallelConfig) -> list[str]:
    """Swap the selected block linears of `model` (a GPT, on any device, before checkpointing,
    compile and fully_shard) for torchao's Float8Linear, in place; returns their names."""
    if not par.float8:
        return []
    from torchao.float8 import convert_to_float8_training

    chosen = []

    def keep(module: nn.Module, fqn: str) -> bool:  # torchao calls it for every nn.Linear
        ok = selected(fqn, module.in_features, module.out_features, par.float8_min_features)
        if ok:
            chosen.append(fqn)
        return ok

    convert_to_float8_training(model, module_filter_fn=keep, config=linear_config(par))
    return chosen


def register_scale_precompute(model: nn.Module, optimizer: torch.optim.Optimizer, par: ParallelConfig):
    """With float8 all-gather (tensorwise): after each optimizer step, the float8 scales of all
    weights in one all-reduce (device work only, no host sync). Returns the hook handle, or None."""
    if not (par.float8 and par.float8_recipe == "tensorwise"):
        return None
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    return optimizer.register_step_post_hook(lambda *_: precompute_float8_dynamic_scale_for_fsdp(model))
