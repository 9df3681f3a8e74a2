"""Typed run configuration: one msgspec Struct per TOML section.

This module depends on nothing else in perfkit. Each component receives only its own section
(the model gets `ModelConfig`, the loader `DataConfig`, ...). Decoding rejects unknown keys and
wrong types with the key path in the message (msgspec's `at $.model.n_layer`).

`load_config(path, overrides)` reads a TOML file, applies dotted command-line overrides
(`--training.max_steps=10`, values parsed as TOML literals), checks every key against the Structs
(suggesting the close match of a misspelt one) and decodes into `Config`. Any problem raises
`ConfigError` whose message names the file or the `$.section.key` path.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal, Union

import msgspec

from perfkit.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Decoder-only GPT. Defaults are GPT-2 small class with modern choices (RoPE, SwiGLU, RMSNorm)."""

    vocab_size: int = 50304          # the model pads it up to a multiple of 64
    sequence_length: int = 1024      # longest context; also the training window length
    n_layer: int = 12
    n_embd: int = 768
    n_head_q: int = 12
    n_head_kv: int = 12              # < n_head_q: grouped-query attention
    ffn_hidden: int = 2048           # SwiGLU hidden width (GELU MLPs use it as the 4*n_embd width)
    positions: Literal["rope", "none", "learned"] = "rope"
    rope_base: float = 10000.0
    activation: Literal["swiglu", "gelu"] = "swiglu"
    norm: Literal["rms_norm", "layer_norm"] = "rms_norm"
    norm_eps: float = 1e-5
    bias: bool = False
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_std: float = 0.02           # "scaled" init: residual projections use init_std / sqrt(2 * n_layer)
    kernels: Literal["triton", "torch"] = "triton"  # Triton RMSNorm/SwiGLU ops or the PyTorch reference
    fused_linear_cross_entropy: bool = False  # head matmul + loss chunked over tokens: no whole logits

    def __post_init__(self):
        _positive(self, "model", ("vocab_size", "sequence_length", "n_layer", "n_embd",
                                  "n_head_q", "n_head_kv", "ffn_hidden"))
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(f"$.model.vocab_size ({self.vocab_size}) is beyond {MAX_VOCAB_SIZE:,}, the most a "
                             f".pbin token (4 bytes) can address")
        if self.n_embd % self.n_head_q:
            raise ValueError(f"$.model.n_embd ({self.n_embd}) must be divisible by $.model.n_head_q ({self.n_head_q})")
        if self.n_head_q % self.n_head_kv:
            raise ValueError(f"$.model.n_head_q ({self.n_head_q}) must be a multiple of $.model.n_head_kv ({self.n_head_kv})")
        if self.positions == "rope" and (self.n_embd // self.n_head_q) % 2:
            raise ValueError("$.model: RoPE needs an even head dimension (n_embd / n_head_q)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"$.model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0 or self.init_std <= 0 or self.rope_base <= 0:
            raise ValueError("$.model.norm_eps, init_std and rope_base must be > 0")


class DataConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Training and validation .pbin files and how windows are cut and ordered."""

    train: list[str] = []                    # .pbin files (perfkit's or Modalities')
    train_weights: list[float] | None = None  # mixture weights, one per train file (None: concatenate)
    val: list[str] = []
    reuse_last_target: bool = True           # Modalities' continuous windows (overlap by one token)
    shuffle: bool = True
    seed: int = 42
    prefetch: int = 2                        # batches staged ahead on the device

    def __post_init__(self):
        if self.train_weights is not None and weights_problem(self.train_weights, len(self.train)):
            raise ValueError(f"$.data.train_weights {weights_problem(self.train_weights, len(self.train))}")
        if self.prefetch < 1:
            raise ValueError("$.data.prefetch must be >= 1")
        _seed_in_range("data.seed", self.seed)


# Seeds reach torch.Generator.manual_seed (64 bits) as seed + epoch: < 2**63 leaves room for the epoch.
MAX_SEED = 2**63 - 1
# A .pbin token is at most 4 bytes wide (design.md), so no id can reach a larger vocabulary.
MAX_VOCAB_SIZE = 2**32
# One path component is at most 255 bytes on Linux filesystems; the margin keeps room for suffixes.
MAX_EXPERIMENT_ID_BYTES = 200


def _seed_in_range(name: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"$.{name} must be in [0, 2**63 - 1], got {seed}")


def weights_problem(weights: list[float], num_files: int) -> str | None:
    """What is wrong with mixture weights for `num_files` files, or None (the one check of
    $.data.train_weights, also applied by WindowDataset). NaN passes `w < 0` and `sum > 0` checks
    and inf overflows the split: both gave negative sample counts, so they are refused too."""
    if len(weights) != num_files:
        return f"has {len(weights)} entries for {num_files} files in $.data.train"
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        return f"must be finite, >= 0 and have a positive sum, got {list(weights)}"
    return None


def _positive(section: msgspec.Struct, name: str, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = getattr(section, f)
        if v <= 0:
            raise ValueError(f"$.{name}.{f} must be > 0, got {v}")


class CheckpointConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sharded checkpoints under <run folder>/checkpoints/step_<N>/, committed by a marker file."""

    every_steps: int = 0          # 0: only at the end (if save_at_end)
    keep_last: int = 3            # complete checkpoints kept; older ones are deleted after a new one commits
    save_at_end: bool = True
    resume: str = "none"          # "none", "auto" (newest complete checkpoint of this run), or a checkpoint path
    warm_start: str = ""          # a checkpoint, export or HF folder: load weights only (fresh optimizer and schedule)
    allow_data_change: bool = False  # resume although a data file differs from the checkpoint's fingerprint

    def __post_init__(self):
        if self.every_steps < 0:
            raise ValueError(f"$.checkpoint.every_steps must be >= 0, got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"$.checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.resume and self.warm_start and self.resume != "none":
            raise ValueError("$.checkpoint: set resume or warm_start, not both")


class RunConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a run lives and what makes it reproducible."""

    root: str = "runs"            # each run gets <root>/<experiment_id>/
    experiment_id: str = ""       # "": <UTC timestamp>_<8 hex of the config hash>, chosen by rank 0
    seed: int = 1234              # weight init (same on every rank); data order uses $.data.seed
    device: Literal["auto", "cuda", "cpu"] = "auto"   # auto: cuda when available
    check_memory: bool = True     # refuse to start when the memory estimate exceeds the device's memory

    def __post_init__(self):
        if not self.root:
            raise ValueError("$.run.root must not be empty")
        if "/" in self.experiment_id or "\\" in self.experiment_id or self.experiment_id in (".", ".."):
            raise ValueError(f"$.run.experiment_id must be a plain folder name, got {self.experiment_id!r}")
        if len(self.experiment_id.encode("utf-8")) > MAX_EXPERIMENT_ID_BYTES:
            raise ValueError(f"$.run.experiment_id is {len(self.experiment_id.encode('utf-8'))} bytes long; a folder "
                             f"name may have at most {MAX_EXPERIMENT_ID_BYTES}")
        _seed_in_range("run.seed", self.seed)
        # a control character (NUL above all) makes every later file operation fail obscurely
        for key in ("root", "experiment_id"):
            if any(ord(c) < 32 for c in getattr(self, key)):
                raise ValueError(f"$.run.{key} must not contain control characters, got {getattr(self, key)!r}")


class OptimizerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """AdamW. Weight decay applies to matrices only; the kinds in `no_decay` get 0."""

    lr: float = 3e-4              # peak learning rate (onecycle uses $.scheduler.max_lr instead)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    no_decay: list[Literal["embedding", "norm", "bias"]] = msgspec.field(
        default_factory=lambda: ["embedding", "norm", "bias"])
    fused: bool | None = None     # None: fused kernel on CUDA, foreach on CPU

    def __post_init__(self):
        if self.lr <= 0 or self.eps <= 0:
            raise ValueError(f"$.optimizer.lr and $.optimizer.eps must be > 0, got {self.lr}, {self.eps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"$.optimizer.betas must be in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ValueError(f"$.optimizer.weight_decay must be >= 0, got {self.weight_decay}")


# Learning-rate schedules: a tagged union, `kind` picks the Struct (and the code picks the formula).
# Each Struct carries only its own keys, so a key of another schedule is an error, not ignored.

class ConstantSchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="constant", tag_field="kind"):
    """lr = $.optimizer.lr after a linear warm-up from 0."""

    warmup_steps: int = 0

    def __post_init__(self):
        _non_negative(self, "scheduler", ("warmup_steps",))


class CosineSchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="cosine", tag_field="kind"):
    """Linear warm-up to $.optimizer.lr, then cosine decay to min_lr_ratio * lr at the last step."""

    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        _non_negative(self, "scheduler", ("warmup_steps",))
        _unit_interval(self, "scheduler", ("min_lr_ratio",))


class WSDSchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="wsd", tag_field="kind"):
    """Warmup-stable-decay: warm-up, constant lr, then decay over the last decay_fraction of steps."""

    warmup_steps: int = 0
    decay_fraction: float = 0.2
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        _non_negative(self, "scheduler", ("warmup_steps",))
        _unit_interval(self, "scheduler", ("decay_fraction", "min_lr_ratio"))


class OneCycleSchedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="onecycle", tag_field="kind"):
    """torch's OneCycleLR (the seed's schedule): max_lr/div_factor -> max_lr over pct_start of the steps,
    then down to max_lr/div_factor/final_div_factor. Replaces $.optimizer.lr."""

    max_lr: float = 6e-4
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    pct_start: float = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"

    def __post_init__(self):
        _positive(self, "scheduler", ("max_lr", "div_factor", "final_div_factor"))
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"$.scheduler.pct_start must be in (0, 1), got {self.pct_start}")


SchedulerConfig = Union[ConstantSchedule, CosineSchedule, WSDSchedule, OneCycleSchedule]


class TrainingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Batch geometry, training target and the step's numerics.

    Tokens per optimizer step = micro_batch_size * grad_accum_steps * world_size * sequence_length.
    Target: max_steps if > 0, else target_tokens if > 0, else one pass over $.data.train
    (the seed's num_tokens_from_packed_mem_map_dataset_continuous).
    """

    micro_batch_size: int = 8     # samples per rank per forward
    grad_accum_steps: int = 1     # micro-batches per optimizer step (gradient sync: $.parallel.reduce_gradients)
    global_batch_size: int = 0    # samples per optimizer step; > 0: grad_accum_steps is derived from it
    max_steps: int = 0
    target_tokens: int = 0
    enforce_tokens_per_step_consistency: bool = True  # target_tokens must be a whole number of steps
    grad_clip: float = 1.0        # global L2 norm across all shards; 0: no clipping
    eval_every: int = 0           # steps between validation passes over $.data.val; 0: only at the end
    eval_batches: int = 0         # micro-batches per validation pass; 0: the whole validation set
    on_nonfinite: Literal["stop", "skip"] = "stop"    # non-finite loss/grad: stop the run or skip the update

    def __post_init__(self):
        _positive(self, "training", ("micro_batch_size", "grad_accum_steps"))
        _non_negative(self, "training", ("global_batch_size", "max_steps", "target_tokens",
                                         "eval_every", "eval_batches"))
        if self.grad_clip < 0:
            raise ValueError(f"$.training.grad_clip must be >= 0, got {self.grad_clip}")


class ParallelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """FSDP2 sharding, mixed precision and compilation."""

    backend: Literal["auto", "nccl", "gloo"] = "auto"      # auto: nccl on CUDA, gloo on CPU
    mixed_precision: Literal["bf16", "fp32"] = "bf16"      # bf16 params + fp32 gradient reduction; CPU runs fp32
    reshard_after_forward: bool = True                     # True: full shard; False: shard-grad-op (ZeRO-2)
    # when gradients are reduce-scattered under accumulation: once per step, after the last micro-
    # batch (the others keep every gradient unsharded, in fp32: 4 bytes per parameter on each rank),
    # or after every micro-batch (they stay sharded: for models whose unsharded gradients do not fit)
    reduce_gradients: Literal["last_micro_batch", "every_micro_batch"] = "last_micro_batch"
    compile: bool = True                                   # torch.compile each block (fullgraph) before sharding
    init_device: Literal["meta", "cpu"] = "meta"           # meta: shards are materialized and initialized on the
    # device (any model size); cpu: the whole model is initialized in host memory, then sharded (initial
    # weights identical for every world size - used by the loss-parity tests)
    activation_checkpointing: Literal["none", "full", "op"] = "none"  # recompute blocks in backward
    activation_checkpointing_every: int = 1                # checkpoint blocks 0, k, 2k, ...
    # float8 training of the block linears (torchao; perfkit/train/float8.py): CUDA compute
    # capability >= 8.9 only; the head, the embedding and linears narrower than
    # float8_min_features (in or out) stay in the compute dtype
    float8: bool = False
    float8_recipe: Literal["rowwise", "tensorwise"] = "rowwise"  # scale per row, or one per tensor
    float8_min_features: int = 2048                        # convert a block linear only if in and out >= this

    def __post_init__(self):
        if self.activation_checkpointing_every < 1:
            raise ValueError("$.parallel.activation_checkpointing_every must be >= 1, "
                             f"got {self.activation_checkpointing_every}")
        if self.float8_min_features < 16 or self.float8_min_features % 16:
            # float8 matmuls (torch._scaled_mm) need both dimensions to be multiples of 16
            raise ValueError("$.parallel.float8_min_features must be a multiple of 16 and >= 16, "
                             f"got {self.float8_min_features}")


class MetricsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Console line, TensorBoard scalars, metrics.jsonl and optionally Weights & Biases, written by
    rank 0 every log_every steps; bits per byte of the validation text at every evaluation."""

    log_every: int = 10
    tensorboard: bool = True
    jsonl: bool = True
    wandb: bool = False                # the same scalars + the resolved config to W&B (perfkit[wandb])
    wandb_project: str = "perfkit"
    wandb_entity: str = ""             # "": W&B's default entity of the logged-in user
    wandb_name: str = ""               # "": the experiment id
    wandb_tags: list[str] = []
    bpb_tokenizer: str = ""            # tokenizer of $.data.val files without a .pbin.json manifest

    def __post_init__(self):
        _positive(self, "metrics", ("log_every",))
        if self.wandb and not self.wandb_project.strip():
            raise ValueError("$.metrics.wandb_project must not be empty when $.metrics.wandb = true")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole run: one section per component."""

    run: RunConfig = msgspec.field(default_factory=RunConfig)
    data: DataConfig = msgspec.field(default_factory=DataConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = msgspec.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=CosineSchedule)
    training: TrainingConfig = msgspec.field(default_factory=TrainingConfig)
    parallel: ParallelConfig = msgspec.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = msgspec.field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)


def _non_negative(section: msgspec.Struct, name: str, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = getattr(section, f)
        if v < 0:
            raise ValueError(f"$.{name}.{f} must be >= 0, got {v}")


def _unit_interval(section: msgspec.Struct, name: str, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = getattr(section, f)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"$.{name}.{f} must be in [0, 1], got {v}")


# ---------------------------------------------------------------------------------------------
# Loading: TOML file + dotted overrides -> key check with suggestions -> typed decode.

class ConfigError(UserError):
    """A config problem; the message names the file or the `$.section.key` path."""


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            if text.startswith("\ufeff"):  # TOML forbids it; tomllib's "line 1, column 1" does not say why
                raise ConfigError(f"{path}: starts with a UTF-8 byte-order mark (BOM), which TOML does not allow; "
                                  f"save it as UTF-8 without BOM")
            raw = tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; pass a .toml file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); is it a TOML file?") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    keys_set = []
    for item in overrides:
        keys, value = parse_override(item)
        if isinstance(value, str) and _is_list_field(keys):
            value = [value]  # --data.train=a.pbin means ["a.pbin"]
        _set_path(raw, keys, value)
        keys_set.append((keys, item))
    try:
        return config_from_dict(raw, source=str(path) if path else "<overrides>")
    except ConfigError as e:
        raise ConfigError(_blame_override(str(e), keys_set)) from None


def _blame_override(message: str, keys_set: list[tuple[list[str], str]]) -> str:
    """Add the command-line override that set the key a message names: the message starts with the
    file's name, which misleads when the bad value came from `--section.key=value` (the last
    override of a key wins, so the last match is the one in force)."""
    for keys, item in reversed(keys_set):
        path = re.escape("$." + ".".join(keys))
        if re.search(path + r"(?![\w])", message):
            return f"{message} (from the command line: {item})"
    return message


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    sched = raw.get("scheduler")
    if isinstance(sched, dict) and "kind" not in sched:
        raw = {**raw, "scheduler": {"kind": "cosine", **sched}}  # the default schedule's keys
    try:
        _check_keys(raw, Config, "$")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from None
    bad = _non_finite(cfg, "$")
    if bad:
        # TOML has nan and inf literals; every range check (`lr <= 0`) is False for NaN, so one
        # would reach the optimizer and stop the run mid-way (inf: after a step of garbage)
        raise ConfigError(f"{source}: {bad[0]} must be a finite number, got {bad[1]}")
    return cfg


def _non_finite(value: Any, where: str) -> tuple[str, float] | None:
    """(key path, value) of the first NaN or infinite float in a decoded config, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, value)
    if isinstance(value, msgspec.Struct):
        items = ((f"{where}.{f}", getattr(value, f)) for f in value.__struct_fields__)
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, v in items:
        found = _non_finite(v, path)
        if found:
            return found
    return None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`--training.max_steps=10` -> (["training", "max_steps"], 10). The value is a TOML literal
    (10, 1e-4, true, "text", ["a", "b"]); text that is not a valid literal is taken as a string,
    so `--run.root=/scratch/runs` needs no quotes. `--section={...}` replaces a whole section
    (e.g. to switch $.scheduler.kind, whose keys differ per kind)."""
    if not item.startswith("--") or "=" not in item:
        raise ConfigError(f"override {item!r} must look like --section.key=value")
    key, text = item[2:].split("=", 1)
    keys = key.split(".")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    # A whole section may be replaced by an inline table: --scheduler='{kind = "constant"}'
    if not all(keys) or (len(keys) < 2 and not isinstance(value, dict)):
        raise ConfigError(f"override {item!r}: the key must be dotted, like --training.max_steps=10")
    return keys, value


def _is_list_field(keys: list[str]) -> bool:
    """Whether section.key is a list field of a plain section (e.g. data.train, data.val)."""
    if len(keys) != 2:
        return False
    section = {f.name: f.type for f in msgspec.structs.fields(Config)}.get(keys[0])
    if not (isinstance(section, type) and issubclass(section, msgspec.Struct)):
        return False
    field = {f.name: f.type for f in msgspec.structs.fields(section)}.get(keys[1])
    return getattr(field, "__origin__", None) is list


def _set_path(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for i, k in enumerate(keys[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override ${'.'.join([''] + keys[:i + 1])} is a value, not a section")
    node[keys[-1]] = value


def _struct_for(tp: Any, raw: Any) -> type | None:
    """The Struct class a raw table decodes into (a tagged union picks by its `kind`), or None."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    members = [t for t in getattr(tp, "__args__", ()) if isinstance(t, type) and issubclass(t, msgspec.Struct)]
    if members and isinstance(raw, dict):
        for t in members:
            if t.__struct_config__.tag == raw.get("kind"):
                return t
    return None


def _check_keys(raw: Any, cls: type, where: str) -> None:
    """Reject unknown keys before decoding so the message can suggest the close match and list
    the valid keys (msgspec alone only says "unknown field")."""
    if not isinstance(raw, dict):
        return  # a wrong type is reported by msgspec with its path
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    tag = cls.__struct_config__.tag_field
    for key, value in raw.items():
        if key == tag:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key `{where}.{key}`{hint}")
        tp = fields[key].type
        kinds = [t.__struct_config__.tag for t in getattr(tp, "__args__", ())
                 if isinstance(t, type) and issubclass(t, msgspec.Struct)]
        if kinds and isinstance(value, dict) and value.get("kind") not in kinds:
            raise ConfigError(f"`{where}.{key}.kind` must be one of {', '.join(map(repr, kinds))}, "
                              f"got {value.get('kind')!r}")
        sub = _struct_for(tp, value)
        if sub is not None:
            _check_keys(value, sub, f"{where}.{key}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return msgspec.to_builtins(cfg)
