"""Bad input to the trainer, the config and the checkpoint commands: one clear line naming the file
or the `$.section.key`, a non-zero exit, no traceback, and nothing of the user's lost or rewritten.

Each case here was broken before (a traceback, a late failure after the run folder was written, a
NaN accepted, a run's config.json or checkpoints overwritten); the cases already covered by
test_config, test_train, test_checkpoint and test_export are not repeated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from test_train_data import make_dataset, tiny_overrides, write_pbin

CPU_DEBUG = str(Path(__file__).resolve().parents[1] / "configs" / "cpu_debug.toml")


def train(argv: list[str], capsys) -> tuple[int, str]:
    from perfkit.train.train_cmd import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.fixture
def base(tmp_path):
    train_pbin, val_pbin = make_dataset(tmp_path / "data", train_docs=16, val_docs=4, doc_len=100)
    return [CPU_DEBUG] + tiny_overrides(tmp_path, train_pbin, val_pbin) + ["--training.max_steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run folder `ck` with committed checkpoints at steps 1 and 2."""
    from perfkit.train.train_cmd import main

    tmp = tmp_path_factory.mktemp("trained")
    train_pbin, val_pbin = make_dataset(tmp / "data", train_docs=16, val_docs=4, doc_len=100)
    argv = [CPU_DEBUG] + tiny_overrides(tmp, train_pbin, val_pbin) + [
        "--training.max_steps=2", "--checkpoint.every_steps=1", "--run.experiment_id=ck"]
    assert main(argv) == 0
    return tmp, argv[:-1]  # without the experiment id


def _copy_run(trained, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    src, argv = trained
    run_dir = tmp_path / "runs" / name
    shutil.copytree(src / "runs" / "ck", run_dir)
    return run_dir, [a if not a.startswith("--run.root=") else f"--run.root={tmp_path / 'runs'}" for a in argv] + [
        f"--run.experiment_id={name}"]


# ---- config file and command line --------------------------------------------------------------

def test_config_that_is_a_folder_or_binary_names_the_file(tmp_path, capsys):
    assert train([str(tmp_path)], capsys) == (2, f"perfkit train: invalid config: config file {tmp_path} "
                                                  "is a folder; pass a .toml file\n")
    binary = tmp_path / "b.toml"
    binary.write_bytes(b'x = "\xff\xfe"\n')
    rc, err = train([str(binary)], capsys)
    assert rc == 2 and f"{binary}: not UTF-8 text" in err


def test_section_override_and_value_less_key(tmp_path, base, capsys):
    # docs/configuration.md: --scheduler='{kind = ...}' replaces the section; main rejected it
    rc, _ = train(base + ["--dry-run", '--scheduler={kind = "constant", warmup_steps = 3}'], capsys)
    assert rc == 0
    # a key without a value must not swallow the next override as its value
    rc, err = train([CPU_DEBUG, "--training.max_steps", "--optimizer.lr=1"], capsys)
    assert rc == 2 and "override '--training.max_steps' must look like --section.key=value" in err
    rc, err = train([CPU_DEBUG, "--training=3"], capsys)
    assert rc == 2 and "the key must be dotted" in err


@pytest.mark.parametrize("override,key", [
    ("--optimizer.lr=nan", "$.optimizer.lr"),
    ("--optimizer.lr=inf", "$.optimizer.lr"),
    ('--scheduler={kind = "onecycle", max_lr = nan}', "$.scheduler.max_lr"),
    ("--training.grad_clip=inf", "$.training.grad_clip"),
])
def test_non_finite_floats_are_refused_before_training(tmp_path, capsys, override, key):
    rc, err = train([CPU_DEBUG, f"--run.root={tmp_path / 'runs'}", override], capsys)
    assert rc == 2 and f"{key} must be a finite number" in err and f"(from the command line: {override})" in err
    assert not (tmp_path / "runs").exists()


def test_override_errors_name_the_override(capsys):
    rc, err = train([CPU_DEBUG, "--training.max_stpes=3"], capsys)
    assert rc == 2 and "did you mean `max_steps`? (from the command line: --training.max_stpes=3)" in err
    rc, err = train([CPU_DEBUG, '--run.experiment_id="a\\u0000b"'], capsys)
    assert rc == 2 and "$.run.experiment_id must not contain control characters" in err


# ---- paths the run writes or reads: checked before anything is built or written ----------------

def test_run_root_that_is_a_file(tmp_path, base, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    rc, err = train(base + [f"--run.root={blocker}"], capsys)
    assert (rc, err) == (2, f"perfkit train: $.run.root '{blocker}' is a file; it must be a folder\n")
    rc, err = train(base + [f"--run.root={blocker / 'sub'}"], capsys)
    assert rc == 2 and f"cannot be created: {blocker} is a file" in err
    assert blocker.read_text() == "mine"


def test_short_validation_data_fails_before_the_run_folder(tmp_path, base, capsys):
    short = write_pbin(tmp_path / "short.pbin", [np.arange(30) % 200])  # < one window of 65 tokens
    rc, err = train(base + [f'--data.val=["{short}"]'], capsys)
    assert rc == 2 and err.startswith(f"perfkit train: $.data.val: {short}: 30 tokens, too few")
    assert not (tmp_path / "runs").exists()  # it used to fail after creating the run folder


def test_fewer_validation_windows_than_ranks(tmp_path):
    from perfkit.config import load_config
    from perfkit.train.setup import open_datasets

    one = write_pbin(tmp_path / "one.pbin", [np.arange(70) % 200])  # exactly one window
    # (the train file too: CI has not packed the demo data cpu_debug.toml points at)
    cfg = load_config(CPU_DEBUG, [f'--data.train=["{one}"]', f'--data.val=["{one}"]', "--model.vocab_size=256"])
    with pytest.raises(ValueError, match=r"\$\.data\.val: 1 validation windows of 65 tokens for 2 ranks"):
        open_datasets(cfg, world_size=2)


def test_missing_resume_and_warm_start_paths_name_the_key(tmp_path, base, capsys):
    rc, err = train(base + ["--checkpoint.resume=atuo"], capsys)
    assert rc == 2 and "$.checkpoint.resume: checkpoint path 'atuo' does not exist" in err
    assert '"none", "auto"' in err
    rc, err = train(base + [f"--checkpoint.warm_start={tmp_path / 'nope'}"], capsys)
    assert rc == 2 and "$.checkpoint.warm_start: checkpoint path" in err
    assert not (tmp_path / "runs").exists()


# ---- resume: what the user had stays as it was -------------------------------------------------

def test_refused_resume_keeps_config_json_and_fresh_run_does_not_overwrite(trained, tmp_path, capsys):
    run_dir, argv = _copy_run(trained, tmp_path, "keep")
    before = (run_dir / "config.json").read_bytes()
    rc, err = train(argv + ["--checkpoint.resume=auto", "--model.n_layer=3"], capsys)
    assert rc == 2 and "different model config: n_layer: checkpoint 2, config 3" in err
    assert (run_dir / "config.json").read_bytes() == before  # it used to be rewritten with n_layer 3
    # no resume into a folder with checkpoints: they would be replaced and pruned
    rc, err = train(argv, capsys)
    assert rc == 2 and "already holds checkpoints (newest step_00000002)" in err
    assert "--checkpoint.resume=auto" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


def test_auto_names_skipped_and_damaged_checkpoints(trained, tmp_path, capsys):
    run_dir, argv = _copy_run(trained, tmp_path, "dmg")
    newest = run_dir / "checkpoints" / "step_00000002"
    (newest / "COMPLETE").unlink()
    rc, err = train(argv + ["--checkpoint.resume=auto", "--training.max_steps=1"], capsys)
    assert rc == 0 and f"resume=auto skips {newest} (no valid COMPLETE marker" in err

    run_dir, argv = _copy_run(trained, tmp_path, "crc")
    shard = next((run_dir / "checkpoints" / "step_00000002").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, err = train(argv + ["--checkpoint.resume=auto"], capsys)
    assert rc == 2 and "is corrupt (CRC32 differs from the manifest)" in err
    assert f"--checkpoint.resume={run_dir / 'checkpoints' / 'step_00000001'}" in err


# ---- export / generate ---------------------------------------------------------------------------

def test_export_output_checked_first_and_generate_messages_are_one_line(trained, tmp_path, capsys):
    from perfkit.cli import main as cli

    src, _ = trained
    with pytest.raises(SystemExit) as e:
        cli(["export", str(src / "runs" / "ck"), "-o", str(tmp_path)])
    assert e.value.code == 2 and f"-o {tmp_path} is a folder" in capsys.readouterr().err
    not_torch = tmp_path / "x.pbin"
    not_torch.write_text('{"text": "a jsonl line"}\n')
    assert cli(["generate", str(not_torch), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a readable perfkit export: not a torch.save file" in err
    assert cli(["generate", str(src / "runs" / "ck"), "--prompt", "hi", "--tokenizer", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert err == "perfkit generate: --tokenizer 'nosuch' cannot be loaded: Unknown encoding nosuch.\n"
