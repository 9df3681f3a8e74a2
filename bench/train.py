"""`perfkit bench [train] [CONFIG] ...`: tokens/s per GPU of a config's real training step.

    perfkit bench configs/gpt2.toml [--steps 20] [--warmup 5] [--synthetic] [--profile [--memory-snapshot]]
                  [--compare kernels|compile|reshard|loss|float8] [--json FILE] [--override KEY=VALUE ...] [--KEY=VALUE ...]
    torchrun --nproc_per_node 8 -m perfkit.bench.train configs/gpt2.toml --synthetic

Builds the trainer's own parts (perfkit.bench.train_parts), runs `--warmup` untimed steps (compile,
autotuning, first allocations), then `--steps` timed optimizer steps with a device synchronize at
each timer boundary (perfkit.bench.train_measure), and prints device, versions, git commit,
tokens/s per GPU (median, p20, p80), step time, TFLOP/s and MFU (formula and peak named), peak
memory and the share of time spent waiting for data. Every rank times its own steps; rank 0 prints
and appends one JSON line per measured variant to --json, each as soon as that variant finishes
(default: bench.jsonl in the run folder <run.root>/bench_<time>/, so a benchmark never writes into
the checkout; bench/results/ holds only the records committed on purpose).

--profile       torch.profiler over --profile-steps more steps after the timed ones: a Chrome/Perfetto
                trace per rank in the run folder (<run.root>/bench_<time>/) and a table of top operations.
--compare AXIS  variants in one run, each built fresh, side by side with ratios to the first:
                kernels (triton vs torch), compile (on vs off), reshard (reshard_after_forward on vs off),
                loss (fused linear + cross-entropy vs unfused),
                float8 (bf16 block linears vs float8 rowwise vs float8 tensorwise; CUDA >= 8.9 only).
On CPU (configs/cpu_debug.toml) the numbers are tokens/s per process and MFU is n/a.
Exit codes: 0 measured; 1 error (missing data, non-finite loss, ...); 2 bad config or arguments.

torch, and the modules that import it, are imported inside the functions that use them, after the
command line and the config are checked: `--help` and config errors do not load torch.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path

from perfkit.bench.records import append_jsonl, environment, json_path_problem, percentiles
from perfkit.config import ConfigError, load_config
from perfkit.errors import UserError

DEFAULT_CONFIG = "configs/gpt2.toml"

# axis -> [(variant name, config overrides)]; the first variant is the baseline of the ratios
COMPARE = {
    "kernels": [("triton", ["--model.kernels=triton"]), ("torch", ["--model.kernels=torch"])],
    "compile": [("compile", ["--parallel.compile=true"]), ("eager", ["--parallel.compile=false"])],
    "reshard": [("reshard", ["--parallel.reshard_after_forward=true"]),
                ("no-reshard", ["--parallel.reshard_after_forward=false"])],
    "loss": [("fused", ["--model.fused_linear_cross_entropy=true"]),
             ("unfused", ["--model.fused_linear_cross_entropy=false"])],
    "float8": [("bf16", ["--parallel.float8=false"]),
               ("rowwise", ["--parallel.float8=true", "--parallel.float8_recipe=rowwise"]),
               ("tensorwise", ["--parallel.float8=true", "--parallel.float8_recipe=tensorwise"])],
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="perfkit bench train", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Overrides use the TOML keys: --training.micro_batch_size=8 or "
                                       "--override training.micro_batch_size=8 (values are TOML literals).")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first: compile, autotune (default 5)")
    p.add_argument("--synthetic", action="store_true", help="random tokens of the configured shape instead "
                                                            "of $.data.train (no data files needed)")
    p.add_argument("--profile", action="store_true", help="profile a few steps after the timed ones")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--memory-snapshot", action="store_true", help="profile (implies --profile) and, on CUDA, "
                                                                  "write a memory snapshot of the profiled steps")
    p.add_argument("--compare", choices=sorted(COMPARE), help="measure the variants of one axis side by side")
    p.add_argument("--json", metavar="FILE", help="append records here (default: bench.jsonl in the run "
                                                  "folder <run.root>/bench_<time>/)")
    p.add_argument("--override", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --override training.micro_batch_size=8 model.kernels=torch "
                        "(put CONFIG before them)")
    args, rest = p.parse_known_args(argv)
    args.profile = args.profile or args.memory_snapshot
    if json_path_problem(args.json):
        p.error(json_path_problem(args.json))
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 1:
        p.error("--steps and --profile-steps must be >= 1, --warmup >= 0")
    bad = [o for o in args.override if "=" not in o or "." not in o.split("=", 1)[0]]
    if bad:
        p.error(f"--override {bad[0]!r}: overrides look like section.key=value")
    overrides = [f"--{o.removeprefix('--')}" for o in args.override]
    for item in rest:  # the trainer's own spelling: --section.key=value
        if not (item.startswith("--") and "=" in item and "." in item.split("=", 1)[0]):
            p.error(f"unrecognized argument {item!r} (overrides look like --section.key=value)")
        overrides.append(item)
    return args, overrides


def _release(device) -> None:
    """Free one variant's model, optimizer state and compiled graphs before building the next."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _gather_medians(value: float) -> list[float]:
    from perfkit.ranks import gather_objects

    return [float(v) for v in gather_objects(value)]


def _float8_refusal(configs, device) -> str | None:
    """float8 where it cannot run (CPU, a GPU below compute capability 8.9, no torchao) or where it
    would convert nothing: the one-line reason, found before any variant is built."""
    from perfkit.train import float8

    try:
        for _, cfg in configs:
            if cfg.parallel.float8:
                float8.plan(cfg.model, cfg.parallel)
                float8.check_device(cfg.parallel, device)
    except UserError as e:
        return str(e)
    return None


def run_variant(args, cfg, env, env_info, peak, run_dir, variant, show_header) -> dict:
    from perfkit.bench.profile import profile_steps
    from perfkit.bench.train_measure import measure
    from perfkit.bench.train_parts import bench_plan, build_parts
    from perfkit.bench.train_report import header, make_record, summary

    plan = bench_plan(cfg, env, args.synthetic)
    _release(env.device)  # what a failed previous variant may have left (its traceback is gone by now)
    if env.is_main:
        print(f"perfkit bench train: building {variant or 'the config'} and running {args.warmup} warm-up "
              f"step(s) (compile {'on' if cfg.parallel.compile else 'off'}) ...", flush=True)
        if args.warmup == 0 and cfg.parallel.compile:
            print("perfkit bench train: warning: --warmup 0 with compile on: the first timed step includes "
                  "compilation", flush=True)
    parts = build_parts(cfg, env, plan, args.synthetic)
    try:
        m = measure(parts, args.warmup, args.steps)
        per_rank = _gather_medians(percentiles(m.step_times_s)["median"])
        args_info = {"config": args.config, "overrides": args.overrides_used, "synthetic": args.synthetic,
                     "steps": args.steps, "warmup": args.warmup, "compare": args.compare,
                     "run_dir": str(run_dir) if run_dir else None}
        record = make_record(parts=parts, m=m, env_info=env_info, peak=peak, args_info=args_info,
                             variant=variant, per_rank_median_s=per_rank)
        if env.is_main:
            if show_header:
                print(header(record, args.config))
            print(summary(record), flush=True)
        if args.profile:
            prof = profile_steps(parts, args.profile_steps, run_dir, variant or "config", args.memory_snapshot)
            if env.is_main:
                print(prof["table"])
                print(f"  trace: {prof['trace']}" + (f"; memory snapshot: {prof['memory_snapshot']}"
                                                     if prof["memory_snapshot"] else ""), flush=True)
            record["profile"] = {k: v for k, v in prof.items() if k != "table"}
        return record
    finally:
        parts.close()
        del parts
        _release(env.device)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, overrides = parse_args(argv)
    args.overrides_used = overrides

    variants = COMPARE[args.compare] if args.compare else [(None, [])]
    try:  # every variant's config is checked before anything is built
        configs = [(name, load_config(args.config, overrides + extra)) for name, extra in variants]
    except ConfigError as e:
        print(f"perfkit bench train: invalid config: {e}", file=sys.stderr)
        return 2

    import torch

    from perfkit.bench.train_parts import bench_plan, with_steps
    from perfkit.metrics import peak_flops
    from perfkit.train import distributed, setup
    from perfkit.train.faults import NonFiniteError
    from perfkit.train.memory_estimate import check_fits, estimate_for_plan

    total = args.warmup + args.steps + (args.profile_steps + 1 if args.profile else 0)
    configs = [(name, with_steps(cfg, total)) for name, cfg in configs]
    first = configs[0][1]
    try:
        env = distributed.read_env(first.run)
        refused = _float8_refusal(configs, env.device)
        if refused:  # a config that cannot run here, not a data problem: exit 2 and no --synthetic hint
            print(f"perfkit bench train: {refused}", file=sys.stderr)
            return 2
        if not args.synthetic:
            setup.check_data(first, setup.open_datasets(first, env.world_size))  # token ids < vocab: a bad file fails here, not as a device assert
        for _, cfg in configs:  # a GPU-sized config on a CPU host is refused here, not after minutes of swapping
            check_fits(estimate_for_plan(cfg, bench_plan(cfg, env, args.synthetic), env.device.type), env.device,
                       cfg.run.check_memory)
    except UserError as e:
        hint = "" if args.synthetic else " (or benchmark on random tokens with --synthetic)"
        print(f"perfkit bench train: {e}{hint}", file=sys.stderr)
        return 1

    distributed.init(env, first.parallel)
    try:
        env_info = environment(env.device)
        peak = peak_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
        # the run folder, made when something goes there: traces and memory snapshots (--profile)
        # and, without --json, the JSON records of this run
        run_dir = None
        if args.profile or not args.json:
            run_dir = Path(first.run.root) / distributed.broadcast_object(
                time.strftime("bench_%Y-%m-%d__%H-%M-%S", time.gmtime()))
            run_dir.mkdir(parents=True, exist_ok=True)  # every rank: on other nodes it holds their traces
        json_path = Path(args.json) if args.json else run_dir / "bench.jsonl"
        records, failed = [], []
        for name, cfg in configs:
            try:
                records.append(run_variant(args, cfg, env, env_info, peak, run_dir, name, show_header=not records))
                if env.is_main:  # at once: a later variant that times out must not cost this one
                    append_jsonl(json_path, records[-1:])
            except Exception as e:
                if not args.compare:
                    raise
                # one variant failing (out of memory, a kernel that does not build) must not cost the
                # numbers of the others in a one-shot device run; the exit code still says it failed
                failed.append(name)
                print(f"perfkit bench train: rank {env.rank}: variant {name} failed: {type(e).__name__}: {e}",
                      file=sys.stderr)
                traceback.print_exc()
        if env.is_main and records:
            if args.compare:
                from perfkit.bench.train_report import compare_table
                print(compare_table(records, args.compare) + (f"\nfailed: {', '.join(failed)}" if failed else ""))
            print(f"perfkit bench train: appended {len(records)} record(s) to {json_path}", flush=True)
        return 1 if failed else 0
    except (NonFiniteError, UserError) as e:
        print(f"perfkit bench train: rank {env.rank}: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    from perfkit.process_exit import exit_process
    exit_process(main())  # a process group's threads must not race finalization (perfkit/process_exit.py)
