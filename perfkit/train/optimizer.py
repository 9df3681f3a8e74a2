"""AdamW with weight-decay groups.

Which parameters decay: everything except the kinds listed in $.optimizer.no_decay
("embedding": nn.Embedding weights, "norm": parameters of normalization layers, "bias": any
parameter named `bias`). The kind is decided by the module that owns the parameter, so it holds
for any model built from torch modules (FSDP2 and in-place compile keep the module classes).
"""

from __future__ import annotations

import torch
from torch import nn

from perfkit.config import OptimizerConfig

_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


def _is_norm(module: nn.Module) -> bool:
    # the model may use its own norm class (e.g. a Triton RMSNorm wrapper): name-based fallback
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def param_kind(module: nn.Module, name: str) -> str:
    """'embedding', 'norm', 'bias' or 'matrix' for a parameter `name` owned directly by `module`."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if _is_norm(module):
        return "norm"
    if name == "bias":
        return "bias"
    return "matrix"


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Two AdamW groups: with weight decay and without. Tied parameters appear once."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if param_kind(module, name) in cfg.no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, device: torch.device) -> torch.optim.AdamW:
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    # fused: one kernel for all parameters (and the device-side skip of NonFiniteGuard);
    # otherwise foreach (multi-tensor) kernels.
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=fused or None,
                             foreach=None if fused else True)
