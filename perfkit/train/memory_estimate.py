"""Memory one training process needs, estimated from the config before anything is built.

    est = estimate_memory(cfg.model, cfg.parallel, cfg.optimizer, micro_batch_size=8, world_size=8,
                          grad_accum_steps=1, device_type="cuda")
    est.breakdown   # {"parameters": bytes, "gradients": ..., "optimizer_state": ..., "activations": ...,
                    #  "logits": ...}
    est.total       # their sum, per process

What it covers, per process (FSDP2 full sharding over `world_size` ranks, perfkit/train/parallelize.py):
- parameters: this rank's fp32 shard (1/world of every parameter), plus the unsharded compute
  copies alive at once: with reshard_after_forward, the root's (embeddings, head, final norm) and
  two blocks (the one running and the one prefetched) plus the last block (kept gathered);
  without it, every block stays gathered between forward and backward. With
  parallel.init_device = "cpu" the whole fp32 model exists once before sharding (taken if larger).
- gradients: the fp32 gradient shard, plus unsharded gradients: all of them when gradients
  accumulate over micro-batches (no reduce-scatter until the last one; FSDP2 accumulates them in
  the fp32 reduce dtype, beside the compute-dtype gradients of the blocks in backward), else
  (one micro-batch per step, or parallel.reduce_gradients = "every_micro_batch") a root and two
  blocks' in the compute dtype.
- optimizer_state: AdamW's two fp32 moments of this rank's shard.
- activations: the tensors autograd saves for backward at the configured micro-batch, per token
  9*n_embd + 4*ffn_hidden (SwiGLU; 2*ffn_hidden for GELU) + 6 values per block (+ n_embd +
  3*kv_width with RoPE) and 3*n_embd + 3 outside the blocks, in the compute dtype, plus one
  block's worth more for backward's working set (the gradients of the block being
  differentiated). Counted on the PyTorch reference ops (tests/test_memory_estimate.py sums the
  saved tensors of real models against it); the Triton kernels and torch.compile are not
  measured here (no GPU on the test machine) and are expected to save no more.
- logits: three fp32 (micro_batch, sequence, padded vocab) arrays at the backward peak: the
  log-softmax cross-entropy saves and the two gradients of that size; + the bf16 logits in mixed
  precision. (A compiled loss fuses some of them: then this is an upper bound.)
Checked on CPU (tests/test_memory_estimate.py): within 20% (measured 2-5%) of the peak growth of
anonymous resident memory over two real training steps, beyond a tiny model's (the runtime's
fixed cost: about 40 MiB of allocations, plus the CPU libraries' pages).
Not covered (so, but for a compiled loss's logits, the estimate is a lower bound): the CUDA
context and the caching allocator's slack (typically 0.5-2 GiB per GPU), the CPU runtime's own
libraries and buffers, the loader's prefetched batches, torch.compile's workspace, NCCL buffers.

Activation checkpointing ($.parallel.activation_checkpointing, every k-th block) changes the
activations term: a "full" block keeps only its input (n_embd values per token), an "op" block its
input and the outputs of its matmuls and attention (q, k, v, attention, o-projection, the MLP's
up/gate/down projections); the backward working set (one block's full values) is still counted,
plus the recomputation in a checkpointed block's backward (two blocks' values for "full", one
for "op").
The fused linear + cross-entropy ($.model.fused_linear_cross_entropy) changes the logits term to
one (chunk, vocab) block in the compute dtype (the chunk's logits, turned into their gradient in
place during the forward), the fp32 d(head weight) sum (+ its compute-dtype copy in bf16), the
d(hidden) it saves for backward and its scaled copy, and a log-sum-exp and loss per token.
float8 ($.parallel.float8, perfkit/train/float8.py) leaves the fp32 shard, the gradients and the
optimizer state as they are. With the tensorwise recipe FSDP2 all-gathers the converted linears'
weights in float8, so their gathered compute copies count 1 byte per element; rowwise gathers
them in the compute dtype (unchanged). Activations are counted as without float8: torchao's
float8 linear saves its high-precision input and weight for backward (torch.compile's
partitioner may keep a float8 copy instead, 1 byte per value: then this term is an upper
bound). The transient float8 casts of one linear's operands are not counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from perfkit.config import ModelConfig, OptimizerConfig, ParallelConfig
from perfkit.errors import UserError
from perfkit.model.accounting import padded_vocab_size, parameter_count
from perfkit.model.loss import default_chunk_tokens
from perfkit.train import float8

GIB = 2**30
FP32 = 4
ADAM_MOMENTS = 2   # exp_avg and exp_avg_sq, fp32, one per parameter element


@dataclass(frozen=True)
class MemoryEstimate:
    breakdown: dict[str, int]   # bytes per process by kind (the keys of the module docstring)
    world_size: int
    micro_batch_size: int
    device_type: str
    saving: str = ""            # a setting that would lower the estimate, for the refusal message

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    def to_dict(self) -> dict:
        """For --dry-run's derived section: GiB per kind, the total, and what the numbers assume."""
        return {"per_process_gib": {k: round(v / GIB, 3) for k, v in self.breakdown.items()},
                "total_gib": round(self.total / GIB, 3), "world_size": self.world_size,
                "micro_batch_size": self.micro_batch_size, "device": self.device_type,
                "not_covered": "CUDA context, allocator slack, prefetched batches, compile and NCCL workspace",
                **({"saving": self.saving} if self.saving else {})}

    def summary(self) -> str:
        """One line: 'about 12.3 GiB per process (parameters 1.2, gradients ..., ...)'."""
        parts = ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f}" for k, v in self.breakdown.items())
        return f"about {self.total / GIB:.2f} GiB per process ({parts} GiB)"


def _block_parameters(m: ModelConfig) -> int:
    """Parameters of one transformer block (the unit FSDP2 gathers)."""
    one = parameter_count(ModelConfig(**{**_fields(m), "n_layer": 1}), non_embedding=True)
    two = parameter_count(ModelConfig(**{**_fields(m), "n_layer": 2}), non_embedding=True)
    return two - one


def _fields(m: ModelConfig) -> dict:
    return {f: getattr(m, f) for f in m.__struct_fields__}


def _block_values_per_token(m: ModelConfig) -> int:
    """Values autograd saves per token in one block (see the module docstring)."""
    kv_width = m.n_head_kv * (m.n_embd // m.n_head_q)
    mlp = (4 if m.activation == "swiglu" else 2) * m.ffn_hidden
    rope = m.n_embd + 3 * kv_width if m.positions == "rope" else 0  # the rotation's saved q/k products
    return 9 * m.n_embd + rope + mlp + 6


def _checkpointed_values_per_token(m: ModelConfig, mode: str) -> int:
    """Values a checkpointed block keeps per token ("full": its input; "op": see the docstring)."""
    if mode == "full":
        return m.n_embd
    kv_width = m.n_head_kv * (m.n_embd // m.n_head_q)
    mlp = (3 if m.activation == "swiglu" else 2) * m.ffn_hidden  # up + gate (+ down's input side)
    return m.n_embd + (m.n_embd + 2 * kv_width) + 2 * m.n_embd + mlp + m.n_embd + m.n_head_q


def _activation_values_per_token(m: ModelConfig, par: ParallelConfig) -> int:
    """Saved values per token over all blocks, under the activation-checkpointing setting."""
    full = _block_values_per_token(m)
    mode = par.activation_checkpointing
    if mode == "none":
        return m.n_layer * full
    checkpointed = len(range(0, m.n_layer, par.activation_checkpointing_every))
    # + the recomputation inside a checkpointed block's backward: "full" re-creates the block's
    # values and their gradients (two blocks' worth), "op" only the elementwise parts (about one);
    # measured on CPU (tests/test_memory_estimate.py): without this term "full" was 40% under
    recompute = (2 if mode == "full" else 1) * full
    return checkpointed * _checkpointed_values_per_token(m, mode) + (m.n_layer - checkpointed) * full + recompute


def _fused_logit_bytes(m: ModelConfig, tokens: int, padded_vocab: int, compute_bytes: int, device_type: str) -> int:
    chunk = min(tokens, default_chunk_tokens(padded_vocab, device_type))
    head = padded_vocab * m.n_embd
    # at the end of the forward: one (chunk, vocab) block in the compute dtype (turned into its
    # gradient in place), the fp32 d(head weight) sum and, in bf16, its converted copy; d(hidden)
    # and the lse / row losses; in backward the saved d(hidden) and its scaled copy
    weight_grad = head * FP32 + (head * compute_bytes if compute_bytes != FP32 else 0)
    return (chunk * padded_vocab * compute_bytes + weight_grad + 2 * tokens * m.n_embd * compute_bytes
            + 2 * tokens * FP32)


def saved_for_backward_bytes(m: ModelConfig, micro_batch_size: int, compute_bytes: int = FP32) -> int:
    """Bytes autograd keeps from forward to backward for one micro-batch: the blocks' saved
    tensors, the embedding/final-norm ones, and the fp32 log-softmax of the loss."""
    tokens = micro_batch_size * m.sequence_length
    body = tokens * (m.n_layer * _block_values_per_token(m) + 3 * m.n_embd + 3) * compute_bytes
    return body + tokens * padded_vocab_size(m.vocab_size) * FP32


def _logit_bytes(tokens: int, padded_vocab: int, compute_bytes: int) -> int:
    # at the peak, in backward, three fp32 (tokens, vocab) arrays: the saved log-softmax, its
    # gradient and the logits' gradient (the logits themselves are freed after forward since the
    # loss lives inside the model); + the logits in the compute dtype under bf16
    per_value = 3 * FP32 + (compute_bytes if compute_bytes != FP32 else 0)
    return tokens * padded_vocab * per_value


def estimate_memory(model: ModelConfig, parallel: ParallelConfig, optimizer: OptimizerConfig | None = None, *,
                    micro_batch_size: int, world_size: int, grad_accum_steps: int = 1,
                    device_type: str = "cuda") -> MemoryEstimate:
    """Bytes per process, by kind (see the module docstring for what each covers)."""
    compute = 2 if (device_type == "cuda" and parallel.mixed_precision == "bf16") else FP32
    total_params = parameter_count(model)
    block = _block_parameters(model)
    root = total_params - model.n_layer * block          # embeddings, final norm, head
    shard = -(-total_params // world_size)                # ceil: FSDP2 pads the last rank's shard
    gathered_blocks = min(model.n_layer, 3) if parallel.reshard_after_forward else model.n_layer
    gathered = root + gathered_blocks * block  # reshard: running + prefetched + the kept last block
    params = FP32 * shard + compute * gathered
    if parallel.float8 and parallel.float8_recipe == "tensorwise":  # those weights are gathered in float8
        params -= gathered_blocks * float8.plan(model, parallel).converted_weight_elements() * (compute - 1)
    if parallel.init_device == "cpu":
        params = max(params, FP32 * total_params + FP32 * shard)  # the whole model, before sharding
    in_backward = root + min(model.n_layer, 2) * block   # compute-dtype gradients being reduced
    saving = ""
    if grad_accum_steps > 1 and parallel.reduce_gradients == "last_micro_batch":
        # between micro-batches FSDP2 keeps every unsharded gradient in the reduce dtype (fp32: it
        # upcasts each micro-batch's bf16 gradients, FSDPParam.to_accumulated_grad_if_needed)
        unsharded_grads = FP32 * total_params + (compute * in_backward if compute != FP32 else 0)
        saved = unsharded_grads - compute * in_backward
        saving = (f'$.parallel.reduce_gradients = "every_micro_batch" would need {saved / GIB:.2f} GiB less '
                  "(gradients stay sharded; one reduce-scatter per micro-batch)")
    else:
        unsharded_grads = compute * in_backward
    grads = FP32 * shard + unsharded_grads
    optim = ADAM_MOMENTS * FP32 * shard
    tokens = micro_batch_size * model.sequence_length
    # the blocks' saved tensors + one block's worth of backward working set
    per_token = _activation_values_per_token(model, parallel) + _block_values_per_token(model) + 3 * model.n_embd + 3
    activations = tokens * per_token * compute
    vocab = padded_vocab_size(model.vocab_size)
    logits = (_fused_logit_bytes(model, tokens, vocab, compute, device_type) if model.fused_linear_cross_entropy
              else _logit_bytes(tokens, vocab, compute))
    return MemoryEstimate(
        breakdown={"parameters": params, "gradients": grads, "optimizer_state": optim,
                   "activations": activations, "logits": logits},
        world_size=world_size, micro_batch_size=micro_batch_size, device_type=device_type, saving=saving)


def estimate_for_plan(cfg, plan, device_type: str) -> MemoryEstimate:
    """The estimate of a whole Config and its Plan (perfkit/train/plan.py): what `perfkit train`
    prints and checks; `perfkit bench` can call it the same way before building its parts."""
    return estimate_memory(cfg.model, cfg.parallel, cfg.optimizer, micro_batch_size=plan.micro_batch_size,
                           world_size=plan.world_size, grad_accum_steps=plan.grad_accum_steps,
                           device_type=device_type)


def available_bytes(device) -> tuple[int, str]:
    """(bytes this process may use, where the number comes from). CUDA: the device's free memory;
    CPU: MemAvailable of the host divided by the processes torchrun starts on it (LOCAL_WORLD_SIZE)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory of {device}"
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    avail = _mem_available()
    return avail // procs, (f"available RAM ({avail / GIB:.1f} GiB" + (f" / {procs} processes on this host)"
                                                                       if procs > 1 else ")"))


def _mem_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits(est: MemoryEstimate, device, enabled: bool = True) -> None:
    """Raise UserError naming the estimate and the override when it exceeds what the device has
    (a GPU-sized config on a CPU host otherwise swaps toward an out-of-memory kill, silently)."""
    if not enabled:
        return
    have, where = available_bytes(device)
    if est.total > have:
        raise UserError(f"this run needs {est.summary()}, more than the {have / GIB:.2f} GiB of {where}; "
                         + (f"{est.saving}; or " if est.saving else "")
                         + "lower $.training.micro_batch_size or the model size, use more ranks, or set "
                         "$.run.check_memory = false to start anyway")
