"""Config: the shipped TOML files, errors naming `$.section.key`, suggestions, dotted overrides,
the training plan's checks, and docs/configuration.md covering every key."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from perfkit.config import (Config, ConfigError, OneCycleSchedule, config_to_dict, load_config,
                            parse_override)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["cpu_debug", "tutorial", "gpt2"])
def test_shipped_configs_load_and_point_at_demo_data(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert cfg.data.train == ["data/preprocessed/shakespeare_train.pbin"]
    assert cfg.data.val == ["data/preprocessed/shakespeare_val.pbin"]


def test_tutorial_matches_the_seed():
    c = load_config(CONFIGS / "tutorial.toml")
    m = c.model
    assert (m.n_layer, m.n_embd, m.n_head_q, m.n_head_kv, m.ffn_hidden) == (2, 128, 8, 4, 128)
    assert (m.positions, m.rope_base, m.sequence_length, m.vocab_size) == ("rope", 100000.0, 256, 50304)
    assert (m.activation, m.norm, m.bias) == ("swiglu", "rms_norm", False)
    o = c.optimizer
    assert (o.lr, o.betas, o.eps, o.weight_decay) == (1e-4, (0.9, 0.95), 1e-8, 0.1)
    assert set(o.no_decay) == {"embedding", "norm"}
    assert c.scheduler == OneCycleSchedule(max_lr=6e-4, div_factor=10, final_div_factor=1, pct_start=0.01,
                                           anneal_strategy="cos")
    t = c.training
    assert (t.micro_batch_size, t.grad_accum_steps, t.grad_clip, t.eval_every) == (64, 1, 1.0, 50)
    assert (c.metrics.log_every, c.checkpoint.every_steps) == (5, 50)
    assert c.parallel.mixed_precision == "bf16" and c.parallel.reshard_after_forward


def test_gpt2_is_the_throughput_reference():
    c = load_config(CONFIGS / "gpt2.toml")
    m = c.model
    assert (m.n_layer, m.n_embd, m.n_head_q, m.sequence_length, m.vocab_size) == (12, 768, 12, 1024, 50304)
    assert (m.positions, m.activation, m.norm) == ("rope", "swiglu", "rms_norm")
    assert c.parallel.compile and c.parallel.mixed_precision == "bf16"


def test_cpu_debug_is_tiny_fp32_and_uncompiled():
    c = load_config(CONFIGS / "cpu_debug.toml")
    assert c.parallel.mixed_precision == "fp32" and not c.parallel.compile and c.run.device == "cpu"
    assert c.model.n_layer <= 2 and c.model.n_embd <= 128


@pytest.mark.parametrize("override,expected", [
    ("--training.max_steps=10", (["training", "max_steps"], 10)),
    ("--optimizer.lr=1e-3", (["optimizer", "lr"], 1e-3)),
    ("--parallel.compile=false", (["parallel", "compile"], False)),
    ('--data.train=["a.pbin", "b.pbin"]', (["data", "train"], ["a.pbin", "b.pbin"])),
    ("--run.root=/scratch/my runs", (["run", "root"], "/scratch/my runs")),  # not a TOML literal: a string
    ('--run.experiment_id="007"', (["run", "experiment_id"], "007")),
])
def test_override_values_are_toml_literals(override, expected):
    assert parse_override(override) == expected


def test_overrides_apply_over_the_file():
    c = load_config(CONFIGS / "tutorial.toml", ["--training.max_steps=7", "--scheduler.max_lr=1e-3",
                                                 "--run.root=/tmp/r"])
    assert (c.training.max_steps, c.scheduler.max_lr, c.run.root) == (7, 1e-3, "/tmp/r")
    c = load_config(CONFIGS / "tutorial.toml", ["--data.train=/x/a.pbin", "--data.val=b.pbin"])
    assert (c.data.train, c.data.val) == (["/x/a.pbin"], ["b.pbin"])  # one path: a list of one
    c = load_config(CONFIGS / "tutorial.toml", ['--scheduler={kind = "constant", warmup_steps = 3}'])
    assert c.scheduler.warmup_steps == 3


@pytest.mark.parametrize("overrides,message", [
    (["--trainng.max_steps=1"], r"unknown key `\$\.trainng`; did you mean `training`\?"),
    (["--training.max_step=1"], r"unknown key `\$\.training\.max_step`; did you mean `max_steps`\?"),
    (["--optimizer.zzz=1"], r"unknown key `\$\.optimizer\.zzz`; valid keys: lr, betas"),
    (["--scheduler.warmup=1"], r"`\$\.scheduler\.warmup`; did you mean `max_lr`|warmup"),
    (["--scheduler.kind=cosin"], r"`\$\.scheduler\.kind` must be one of 'constant', 'cosine'"),
    (["--training.max_steps=ten"], r"Expected `int`, got `str` - at `\$\.training\.max_steps`"),
    (["--optimizer.lr=-1"], r"\$\.optimizer\.lr .*must be > 0"),
    (["--training.micro_batch_size=0"], r"\$\.training\.micro_batch_size must be > 0"),
    (["--optimizer.betas=[0.9, 1.5]"], r"\$\.optimizer\.betas must be in \[0, 1\)"),
    (["--parallel.mixed_precision=fp8"], r"Invalid enum value 'fp8' - at `\$\.parallel\.mixed_precision`"),
    (["--model.n_embd=100"], r"\$\.model\.n_embd \(100\) must be divisible"),
    (["--training.max_steps"], r"must look like --section\.key=value"),
    (["--max_steps=3"], r"the key must be dotted"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tutorial.toml", overrides)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nmax_steps = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[training]\nmax_stepz = 1\n")
    with pytest.raises(ConfigError, match=r"typo.toml: unknown key `\$\.training\.max_stepz`; did you mean"):
        load_config(typo)


def test_defaults_roundtrip_through_builtins():
    cfg = Config()
    assert msgspec.convert(config_to_dict(cfg), Config) == cfg


def test_main_reports_bad_config_with_exit_2(capsys):
    from perfkit.train.train_cmd import main

    assert main([str(CONFIGS / "cpu_debug.toml"), "--training.max_step=1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean `max_steps`" in err


# ---- the plan: batch geometry and the training target --------------------------------------------

def _plan(overrides, world_size=1, samples=1000):
    from perfkit.train.plan import make_plan
    cfg = load_config(CONFIGS / "tutorial.toml", overrides)
    return make_plan(cfg, world_size, samples)


def test_plan_one_epoch_is_the_seeds_conversion():
    # seed: steps = samples // W // B // A ; tokens = steps * W * B * S * A
    p = _plan(["--training.micro_batch_size=8", "--training.grad_accum_steps=2"], world_size=3, samples=1000)
    assert p.max_steps == 1000 // 3 // 8 // 2
    assert p.tokens_per_step == 3 * 8 * 2 * 256 and p.target_tokens == p.max_steps * p.tokens_per_step
    assert p.global_batch_size == 48


def test_plan_global_batch_derives_accumulation_and_checks_world_size():
    from perfkit.train.plan import PlanError
    p = _plan(["--training.micro_batch_size=4", "--training.global_batch_size=32"], world_size=2)
    assert p.grad_accum_steps == 4
    with pytest.raises(PlanError, match=r"global_batch_size \(32\) is not divisible .* world size \(3\)"):
        _plan(["--training.micro_batch_size=4", "--training.global_batch_size=32"], world_size=3)
    with pytest.raises(PlanError, match="contradicts"):
        _plan(["--training.micro_batch_size=4", "--training.global_batch_size=32",
               "--training.grad_accum_steps=3"], world_size=2)


def test_plan_target_tokens_consistency():
    from perfkit.train.plan import PlanError
    per_step = 64 * 256
    assert _plan([f"--training.target_tokens={10 * per_step}"]).max_steps == 10
    with pytest.raises(PlanError, match="not a whole number of steps"):
        _plan([f"--training.target_tokens={10 * per_step + 1}"])
    p = _plan([f"--training.target_tokens={10 * per_step + 1}",
               "--training.enforce_tokens_per_step_consistency=false"])
    assert p.max_steps == 10


def test_plan_data_too_small():
    from perfkit.train.plan import PlanError
    with pytest.raises(PlanError, match=r"\$\.data\.train: 200 windows .* one optimizer step needs 256"):
        _plan(["--training.grad_accum_steps=2"], world_size=2, samples=200)  # one step needs 2 x 64 x 2
    with pytest.raises(PlanError, match="fewer than one micro-batch per rank"):
        _plan(["--training.max_steps=5"], world_size=2, samples=100)


# ---- docs/configuration.md lists every key ------------------------------------------------------

def _all_keys():
    from perfkit.config import SchedulerConfig
    keys = ["scheduler.kind"]  # the tag of the schedule union
    for f in msgspec.structs.fields(Config):
        types = getattr(f.type, "__args__", None) if f.type is SchedulerConfig else None
        for cls in (types or (f.type,)):
            keys += [f"{f.name}.{g.name}" for g in msgspec.structs.fields(cls)]
    return sorted(set(keys))


def test_docs_list_every_key():
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \|", text, flags=re.M))  # keys may hold digits (parallel.float8)
    missing = [k for k in _all_keys() if k not in documented]
    stale = [k for k in documented if k not in _all_keys()]
    assert not missing, f"docs/configuration.md lacks {missing}"
    assert not stale, f"docs/configuration.md documents keys that do not exist: {stale}"


def test_docs_show_the_defaults():
    """The default column of every non-scheduler key equals the Struct's default (as JSON)."""
    import json
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \| [^|]+ \| `([^`]*)`", text, flags=re.M))
    for f in msgspec.structs.fields(Config):
        if f.name == "scheduler":
            continue
        for g in msgspec.structs.fields(f.type):
            value = g.default if g.default is not msgspec.NODEFAULT else g.default_factory()
            assert rows[f"{f.name}.{g.name}"] == json.dumps(msgspec.to_builtins(value)), f"{f.name}.{g.name}"
