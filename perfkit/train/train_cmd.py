"""`perfkit train CONFIG [--section.key=value ...] [--dry-run]` (also `python -m perfkit.train`,
`torchrun ... -m perfkit.train`).

Setup order, chosen so that bad input fails on every rank before any collective can hang:
config (parse, overrides, validation) -> environment (rank, device) -> data files and the plan
(batch geometry, target, token ids < vocab) -> agreement of all ranks on the outcome (under
torchrun, through the launcher's store: a problem only one node sees stops every rank) ->
process group -> model/optimizer/scheduler -> run folder, checkpoint restore -> loop.

Exit codes (EXIT_CODES; the table in docs/multi-node.md is checked against it by a test):
0 done; 2 the run did not start: invalid config, command line or input (data files, batch
geometry, run folder, resume, memory) found before the first step; 1 an error during training
(non-finite loss, failed checkpoint save or metrics write) or an unexpected error anywhere;
143/130 preempted by SIGTERM/SIGINT (after saving a checkpoint when a step had completed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback

from perfkit.config import Config, ConfigError, config_to_dict, load_config
from perfkit.errors import UserError, print_line

EXIT_CODES = {
    0: "training reached its target",
    1: "an error during training, or an unexpected error (a traceback names it)",
    2: "the run did not start: invalid config, command line or input found before the first step",
    143: "SIGTERM received: a checkpoint was saved at the step boundary (none before the first step)",
    130: "SIGINT received: the same",
}
INVALID = 2   # bad config or input, found before training
FAILED = 1    # an error during training

EPILOG = """Overrides use the TOML keys: --training.max_steps=100 --data.train='["a.pbin", "b.pbin"]'
--run.root=/scratch/runs (values are TOML literals; text that is not one is taken as a string).
Exit codes: 0 done, 2 invalid config or input (found before training), 1 error during training,
143/130 preempted (SIGTERM/SIGINT). The run's log goes to stderr; stdout carries only --dry-run's JSON."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="perfkit train", description="Train a GPT from a TOML config.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="TOML config file, e.g. configs/gpt2.toml")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config with derived values as JSON and exit (no GPU used)")
    parser.add_argument("--world-size", type=int, default=None, metavar="N",
                        help="with --dry-run: plan for N ranks (the job's real world size, e.g. nodes x GPUs "
                             "per node) instead of this launch's WORLD_SIZE")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="with --dry-run: estimate the memory for this device type (e.g. cuda from a login "
                             "node without GPUs: bf16 compute) instead of this machine's")
    args, rest = parser.parse_known_args(argv)
    overrides, i = [], 0
    while i < len(rest):  # accept --a.b=value and --a.b value
        item = rest[i]
        # the next word is a value only if it is not the next override (`--a.b --c.d=1` must not
        # set a.b to the text "--c.d=1"; a negative number such as -1 stays a value)
        if (item.startswith("--") and "=" not in item and "." in item and i + 1 < len(rest)
                and not rest[i + 1].startswith("--")):
            item, i = f"{item}={rest[i + 1]}", i + 1
        # --section={...} replaces a whole section (docs: --scheduler='{kind = "cosine"}');
        # load_config checks the rest of the shape and names the key
        if not item.startswith("--") or ("." not in item.split("=", 1)[0] and "=" not in item):
            parser.error(f"unrecognized argument {item!r} (overrides look like --section.key=value)")
        overrides.append(item)
        i += 1
    return args, overrides


def resolved_config(cfg: Config, plan) -> dict:
    """The config as decoded (defaults filled in) plus the derived numbers under "derived"."""
    out = config_to_dict(cfg)
    out["derived"] = plan.to_dict()
    return out


def _stop(code: int, message: str) -> int:
    """A setup problem of this rank: agreed with the other ranks (they may be on nodes that do not
    see it), printed, returned as the exit code."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a single process needs no torch import here
        from perfkit.train.distributed import agree_on_setup

        code, message = agree_on_setup((code, message)) or (code, message)
    print_line(f"perfkit train: {message}")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    if args.world_size is not None and (not args.dry_run or args.world_size < 1):
        print("perfkit train: --world-size N (N >= 1) plans a --dry-run for N ranks; torchrun sets the world "
              "size of a real run", file=sys.stderr)
        return INVALID
    if args.device is not None and not args.dry_run:
        print("perfkit train: --device plans a --dry-run's memory estimate; a real run uses the device it is "
              "launched on", file=sys.stderr)
        return INVALID
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        if args.dry_run:
            print_line(f"perfkit train: invalid config: {e}")
            return INVALID
        return _stop(INVALID, f"invalid config: {e}")

    from perfkit.train import setup  # imports torch; kept out of `--help` and config errors
    from perfkit.train.memory_estimate import check_fits, estimate_for_plan

    try:
        env = setup.distributed.read_env(cfg.run)
        if args.world_size is not None:
            env = dataclasses.replace(env, world_size=args.world_size, rank=0, local_rank=0)
        datasets = setup.open_datasets(cfg, env.world_size)  # every .pbin opened once, here
        plan = setup.make_run_plan(cfg, env, datasets)
        estimate = estimate_for_plan(cfg, plan, args.device or env.device.type)
        float8_plan = setup.float8.plan(cfg.model, cfg.parallel) if cfg.parallel.float8 else None
        if args.dry_run:  # printed, not enforced: a pre-check may run on a login node without the GPUs
            out = resolved_config(cfg, plan)
            out["derived"]["memory_estimate"] = estimate.to_dict()
            if float8_plan is not None:
                out["derived"]["float8"] = float8_plan.to_dict()
            print(json.dumps(out, indent=2))
            return 0
        setup.float8.check_device(cfg.parallel, env.device)  # CPU, pre-Hopper GPUs, no torchao: refused here
        check_fits(estimate, env.device, cfg.run.check_memory)  # before the model is built
        setup.check_outputs(cfg)
        setup.check_data(cfg, datasets)
        val_bytes = setup.check_metrics(cfg, datasets)  # W&B installed; how val/bpb is computed
    except UserError as e:  # bad input: one line; a bug (any other error) keeps its traceback
        if args.dry_run:
            print_line(f"perfkit train: {e}")
            return INVALID
        return _stop(INVALID, str(e))
    except Exception as e:  # unexpected (an unreadable .pbin, ...): a traceback, but agreed like the rest
        if args.dry_run:
            raise
        traceback.print_exc()
        return _stop(FAILED, f"{type(e).__name__}: {e}")
    # this rank's checks passed; go on only if every rank's did, with the same config and plan
    agreed = setup.distributed.agree_on_setup(None, resolved_config(cfg, plan))
    if agreed is not None:
        print_line(f"perfkit train: {agreed[1]}")
        return agreed[0]
    from perfkit.metrics import MetricsWriteError
    from perfkit.train.faults import NonFiniteError
    from perfkit.train.loop import TrainingError

    try:
        return setup.run(cfg, env, plan, resolved_config(cfg, plan), datasets, val_bytes)
    except (NonFiniteError, TrainingError, MetricsWriteError) as e:  # during training
        print_line(f"perfkit train: rank {env.rank}: {e}")
        return FAILED
    except UserError as e:  # found after the process group exists, before the first step
        print_line(f"perfkit train: rank {env.rank}: {e}")
        return INVALID
    except Exception:
        traceback.print_exc()
        return 1
