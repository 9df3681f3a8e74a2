"""Build the model for training: construct, float8, checkpoint and compile each block, shard with FSDP2,
materialize.

Order (torchtitan's, for reasons):
1. Construct on the meta device: no memory, so a model larger than one GPU can be described.
2. float8 conversion of the large block linears ($.parallel.float8, float8.py): before
   checkpointing (the recompute replays the float8 casts) and compile (Dynamo traces and fuses
   the casts and scales into the block's graph) and before fully_shard (so FSDP2 shards torchao's
   float8-aware weights: with the tensorwise recipe they are all-gathered in float8).
   Then activation checkpointing of every k-th block (activation_checkpoint.py), then
   `block.compile(fullgraph=True)` per transformer block - in place, so parameter names stay
   `blocks.0.attn...` (a checkpoint loads with compile on or off) and every block reuses one graph.
3. `fully_shard` per block, then the root (embedding, final norm, head): one all-gather per block
   in forward, one reduce-scatter per block in backward, overlapped with compute. The root never
   reshards after forward: its parameters are the first needed in backward (head, final norm),
   where nothing could overlap their all-gather (torch >= 2.8 honours the flag on the root).
4. `to_empty(device)` allocates only this rank's shards; `init_weights()` fills them.

Mixed precision: bf16 parameters for compute, fp32 gradient reduction and fp32 master weights
(the optimizer sees the sharded fp32 parameters). On CPU everything stays fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from perfkit.config import ModelConfig, ParallelConfig
from perfkit.model import GPT
from perfkit.train.activation_checkpoint import apply_activation_checkpointing
from perfkit.train.float8 import convert_block_linears


def mp_policy(par: ParallelConfig, device: torch.device, cast_inputs: bool = True) -> MixedPrecisionPolicy:
    """bf16 compute / fp32 reduction on CUDA, fp32 throughout otherwise.

    cast_inputs=False for the blocks: their activations are bf16 already (they come from the bf16
    embedding and blocks), and casting would also turn the fp32 RoPE tables the model passes in
    into bf16, where the model's rotation wants fp32 cos/sin.
    """
    if par.mixed_precision == "bf16" and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    cast_forward_inputs=cast_inputs)
    return MixedPrecisionPolicy()  # fp32 throughout (CPU runs, or mixed_precision = "fp32")


def build_model(model_cfg: ModelConfig, par: ParallelConfig, device: torch.device, seed: int) -> nn.Module:
    """The sharded, initialized, (optionally) compiled GPT on `device`. Every rank calls this with
    the same seed. Needs the default process group (see distributed.init)."""
    torch.manual_seed(seed)
    if par.init_device == "cpu":
        # Whole model initialized in host memory, identically on every rank, then sharded: the
        # initial weights do not depend on the world size (sharded random init does, on CPU meshes).
        model = GPT(model_cfg)  # GPT.__init__ runs init_weights() on real tensors
        model.to(device)
    else:
        with torch.device("meta"):
            model = GPT(model_cfg)

    # float8 first: checkpointing and compile must see the Float8Linear modules, fully_shard their weights
    convert_block_linears(model, par)
    # checkpointing before compile (one traced region per block) and before fully_shard
    apply_activation_checkpointing(model.blocks, par.activation_checkpointing, par.activation_checkpointing_every)
    if par.compile:
        for block in model.blocks:
            block.compile(fullgraph=True)
        # head matmul + loss: compiling fuses the fp32 upcast of the (B, S, V) logits into the
        # log-softmax instead of materializing fp32 copies (the largest activations of GPT-2 size)
        model.loss.compile(fullgraph=True)

    block_policy = mp_policy(par, device, cast_inputs=False)
    n = len(model.blocks)
    for i, block in enumerate(model.blocks):
        # The last block's parameters are needed again first in backward: keeping them gathered
        # saves one all-gather per step at the cost of one block's unsharded memory.
        reshard = par.reshard_after_forward and i < n - 1
        fully_shard(block, mp_policy=block_policy, reshard_after_forward=reshard)
    # root: embedding, final norm and head stay gathered from forward into backward (torchtitan's
    # choice), else each micro-batch's backward starts with an all-gather nothing overlaps
    fully_shard(model, mp_policy=mp_policy(par, device), reshard_after_forward=False)

    if par.init_device == "meta":
        model.to_empty(device=device)
        torch.manual_seed(seed)
        with torch.no_grad():
            model.init_weights()
    model.train()
    return model


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """FSDP2: skip the reduce-scatter on all but the last micro-batch of an accumulation
    (gradients accumulate unsharded locally, then one reduce-scatter per step)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
