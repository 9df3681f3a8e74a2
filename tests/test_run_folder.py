"""The run folder's config hash: what `checkpoint.resume=auto` uses to find the run a requeued job
continues when the experiment id is not pinned."""

import json
import subprocess
import sys

from perfkit.train.run_folder import config_hash, new_experiment_id


def resolved(*overrides: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "perfkit.train", "configs/cpu_debug.toml", "--dry-run", *overrides],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_launch_settings_do_not_change_the_run_identity():
    base = resolved()
    same = [resolved("--checkpoint.resume=auto", "--metrics.log_every=7", "--run.root=elsewhere")]
    rescaled = json.loads(json.dumps(base))
    rescaled["derived"]["world_size"] = 4  # resuming on another number of ranks is the same run
    same.append(rescaled)
    assert all(config_hash(c) == config_hash(base) for c in same)


def test_training_settings_change_the_run_identity():
    base = resolved()
    assert config_hash(resolved("--optimizer.lr=0.002")) != config_hash(base)
    assert config_hash(resolved("--model.n_layer=3")) != config_hash(base)
    assert new_experiment_id(base).endswith("_" + config_hash(base))
