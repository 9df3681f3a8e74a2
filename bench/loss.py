"""The head and loss alone: fused linear + cross-entropy against the compiled unfused loss.

    python -m perfkit.bench.loss [--shapes gpt2 llama3_1b] [--json FILE]
    python -m perfkit.bench.loss --tokens 512 --hidden 64 --vocab 5000   # one custom shape

For each shape it times one training step of the head and loss - forward, then the gradients of
the loss w.r.t. the final hidden states and the head weight - for three implementations in one
process, with the same random inputs:
- `unfused`: torch.compile of F.linear + fp32 F.cross_entropy (what `model.fused_linear_cross_entropy
  = false` trains with, compiled as the trainer compiles the loss module);
- `fused`: perfkit.kernels.fused_linear_cross_entropy, gradient made in the forward (the training path);
- `fused_recompute`: the same with lse_grad=True (logits recomputed in backward; the earlier design).
Shapes: gpt2 = configs/gpt2.toml's micro-batch (16 x 1,024 tokens, width 768, vocab 50,304);
llama3_1b = configs/llama3_1b.toml's (8,192 tokens, width 2,048, vocab 128,256). Issue 15's target:
`fused` at least as fast as `unfused` at both. Each record has the median step time, the ratio to
`unfused`, the peak memory the step allocated beyond its inputs (CUDA) and the largest error of
the loss and gradients relative to `unfused` (a mismatch makes the exit status 1).
On CUDA: bf16, timed with triton.testing.do_bench (median, warm-up and compile excluded). On CPU:
fp32, wall-clock median of --repeat steps - indicative only (a shared CPU; no GPU numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from perfkit.bench.records import append_jsonl, environment, json_path_problem
from perfkit.kernels import fused_linear_cross_entropy

SHAPES = {"gpt2": (16 * 1024, 768, 50304), "llama3_1b": (8192, 2048, 128256)}  # (tokens, width, vocab)
IGNORE_INDEX = -100


def _unfused(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t, ignore_index=IGNORE_INDEX)


def _fused(h, w, t):
    return fused_linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX)[0]


def _fused_recompute(h, w, t):
    return fused_linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, lse_grad=True)[0]


def variants() -> dict:
    torch._dynamo.reset()  # one specialized compile per shape
    return {"unfused": torch.compile(_unfused, dynamic=False), "fused": _fused, "fused_recompute": _fused_recompute}


def _step(fn, h, w, t):
    loss = fn(h, w, t)
    dh, dw = torch.autograd.grad(loss, (h, w))
    return loss.detach(), dh, dw


def _time_ms(step, device: torch.device, repeat: int) -> float:
    step()  # untimed: compiles, allocates
    if device.type == "cuda":
        import triton.testing  # triton.testing only on CUDA: a CPU run needs no triton
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(step, warmup=5, rep=60, return_mode="median"))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _peak_mib(step, device: torch.device) -> float | None:
    """MiB the step allocated at its peak beyond what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)


def _rel_error(got: tuple, ref: tuple) -> float:
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()
               for a, b in zip(got, ref))


def bench_shape(name: str, tokens: int, width: int, vocab: int, device: torch.device,
                dtype: torch.dtype, repeat: int) -> list[dict]:
    gen = torch.Generator(device=device).manual_seed(0)
    h = (torch.randn(tokens, width, device=device, dtype=torch.float32, generator=gen)).to(dtype)
    w = (torch.randn(vocab, width, device=device, dtype=torch.float32, generator=gen) * width ** -0.5).to(dtype)
    t = torch.randint(0, vocab, (tokens,), device=device, generator=gen)
    t[::97] = IGNORE_INDEX  # some ignored targets, as the validation padding has
    h.requires_grad_(True)
    w.requires_grad_(True)
    impls = variants()
    reference = _step(impls["unfused"], h, w, t)
    rows = []
    for impl, fn in impls.items():
        step = lambda fn=fn: _step(fn, h, w, t)  # noqa: E731
        error = _rel_error(step(), reference)
        ms = _time_ms(step, device, repeat)
        rows.append(dict(shape=name, impl=impl, tokens=tokens, width=width, vocab=vocab,
                         dtype=str(dtype).removeprefix("torch."), ms=round(ms, 4),
                         peak_mib=_peak_mib(step, device), max_rel_error=error))
    base_ms = rows[0]["ms"]
    for r in rows:
        r["ratio_to_unfused"] = round(r["ms"] / base_ms, 4)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perfkit.bench.loss", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    p.add_argument("--tokens", type=int, help="a custom shape instead of --shapes (with --hidden, --vocab)")
    p.add_argument("--hidden", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--repeat", type=int, default=5, help="CPU only: timed steps per implementation")
    p.add_argument("--json", metavar="FILE", help="append one JSON line per implementation and shape")
    args = p.parse_args(argv)
    if (problem := json_path_problem(args.json)) is not None:
        p.error(f"--json {args.json}: {problem}")
    custom = (args.tokens, args.hidden, args.vocab)
    if any(v is not None for v in custom):
        if any(v is None or v < 1 for v in custom):
            p.error("--tokens, --hidden and --vocab go together, each >= 1")
        shapes = {f"{args.tokens}x{args.hidden}x{args.vocab}": custom}
    else:
        shapes = {name: SHAPES[name] for name in args.shapes}
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    meta = dict(environment(device), suite="loss")
    print(f"{meta['device_name']}  torch {meta['torch']}  commit {meta['git_commit']}  {dtype}")
    print(f"{'shape':18s} {'impl':16s} {'ms':>10s} {'x unfused':>9s} {'peak MiB':>9s} {'rel err':>8s}")
    records, failed = [], False
    limit = 3e-2 if dtype != torch.float32 else 1e-4
    for name, (tokens, width, vocab) in shapes.items():
        for r in bench_shape(name, tokens, width, vocab, device, dtype, args.repeat):
            bad = r["max_rel_error"] > limit
            failed |= bad
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            print(f"{name:18s} {r['impl']:16s} {r['ms']:10.3f} {r['ratio_to_unfused']:9.3f} {peak:>9s} "
                  f"{r['max_rel_error']:8.1e}{'  MISMATCH' if bad else ''}")
            records.append(dict(r, **meta))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fused = [r for r in records if r["impl"] == "fused"]
    print("target (issue 15): fused at least as fast as compiled unfused: "
          + ", ".join(f"{r['shape']} {r['ratio_to_unfused']:.3f}x ({'met' if r['ratio_to_unfused'] <= 1.0 else 'not met'})"
                      for r in fused)
          + ("" if device.type == "cuda" else "  [CPU, fp32: indicative only]"))
    if args.json:
        append_jsonl(args.json, records)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
