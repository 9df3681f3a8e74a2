"""The run folder's config hash: what `checkpoint.resume=auto` uses to find the run a requeued job
continues when the experiment id is not pinned."""

import json
import subprocess
import sys

import numpy as np
import pytest

from perfkit.formats.pbin import write_pbin
from perfkit.train.run_folder import config_hash, new_experiment_id


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A small .pbin of its own, so the dry run does not depend on the demo data being packed."""
    path = tmp_path_factory.mktemp("data") / "tiny.pbin"
    tokens = np.random.default_rng(0).integers(0, 50257, 20_000)
    write_pbin(path, tokens, np.full(20, 1_000), token_width=2)
    return str(path)


@pytest.fixture
def resolved(data):
    def run(*overrides: str) -> dict:
        argv = [sys.executable, "-m", "perfkit.train", "configs/cpu_debug.toml", "--dry-run",
                f'--data.train=["{data}"]', f'--data.val=["{data}"]', *overrides]
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    return run


def test_launch_settings_do_not_change_the_run_identity(resolved):
    base = resolved()
    same = [resolved("--checkpoint.resume=auto", "--metrics.log_every=7", "--run.root=elsewhere")]
    rescaled = json.loads(json.dumps(base))
    rescaled["derived"]["world_size"] = 4  # resuming on another number of ranks is the same run
    same.append(rescaled)
    assert all(config_hash(c) == config_hash(base) for c in same)


def test_training_settings_change_the_run_identity(resolved):
    base = resolved()
    assert config_hash(resolved("--optimizer.lr=0.002")) != config_hash(base)
    assert config_hash(resolved("--model.n_layer=3")) != config_hash(base)
    assert new_experiment_id(base).endswith("_" + config_hash(base))
