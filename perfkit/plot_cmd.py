"""`perfkit plot RUN [RUN ...] -o out.png`: loss and tokens/s over steps for one or more runs.

Each RUN is a run folder (`<run.root>/<experiment_id>/`, holding the `metrics.jsonl` the trainer
writes) or a `metrics.jsonl` file itself. The picture has two panels: loss (train as a line,
validation as dots on the same colour) and tokens/s per GPU (per process on CPU), both over the
optimizer step, one colour per run; a third, validation bits per byte, when a run logged `val_bpb`
(comparable across tokenizers, unlike the loss). A one-line summary per run is printed as well.

Reading rules (perfkit.metrics writes one JSON object per line, `kind` "train" or "val"):
- a missing, unreadable, empty or corrupt file is an error that names the file (and the line);
- a last line without its newline is a record cut short by a live or killed run: skipped, with
  a warning;
- a resumed run appends to the same file, so a step can appear twice: the later record wins.

matplotlib is an optional dependency (the `[plot]` extra), imported only here and
only when a picture is drawn, with the non-interactive Agg canvas (no display needed).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from perfkit.errors import UserError

METRICS_FILE = "metrics.jsonl"


def install_hint() -> str:
    """A command that works where perfkit runs: perfkit is installed from a checkout, not PyPI, so
    `pip install 'perfkit[plot]'` fails; this interpreter's pip installs matplotlib itself."""
    return f"install it with: {sys.executable} -m pip install 'matplotlib>=3.7'"


class MetricsError(UserError):
    """A metrics.jsonl that cannot be plotted; the message names the file."""


@dataclass
class RunMetrics:
    """One run's series, sorted by step. Values are floats (NaN where the trainer logged NaN)."""

    label: str
    path: Path
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    tok_steps: list[int] = field(default_factory=list)       # steps with a tokens/s value
    tokens_per_s: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    bpb_steps: list[int] = field(default_factory=list)       # val records with a bits-per-byte value
    val_bpb: list[float] = field(default_factory=list)
    seen: dict[int, int] = field(default_factory=dict)       # step -> tokens_seen (train records)
    warnings: list[str] = field(default_factory=list)

    def tokens_at(self, steps: list[int]) -> list[float]:
        """Tokens trained on at each step: tokens_seen of that step's train record, else
        interpolated between the neighbouring records (from step 0 with 0 tokens), and past the
        last record extrapolated with its tokens per step. Raises MetricsError without tokens_seen."""
        if not self.seen:
            raise MetricsError(f"{self.path}: no `tokens_seen` in the train records; plot over steps instead")
        known = sorted(self.seen.items())
        if known[0][0] != 0:
            known.insert(0, (0, 0))
        out = []
        for step in steps:
            i = bisect.bisect_left(known, (step, -1))
            if i < len(known) and known[i][0] == step:
                out.append(float(known[i][1]))
                continue
            if len(known) < 2:  # only a step-0 record: nothing to scale by
                out.append(float(known[0][1]))
                continue
            (s0, t0), (s1, t1) = (known[i - 1], known[i]) if i < len(known) else (known[-2], known[-1])
            out.append(t0 + (t1 - t0) * (step - s0) / (s1 - s0))
        return out


def metrics_path(run: str | Path) -> Path:
    """The metrics.jsonl of a run folder, or the path itself when it names a file."""
    p = Path(run)
    return p if p.is_file() or p.suffix == ".jsonl" else p / METRICS_FILE


def _number(value, where: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetricsError(f"{where}: `{key}` must be a number, got {value!r}")
    return float(value)


def read_metrics(run: str | Path, label: str | None = None) -> RunMetrics:
    """Parse one run's metrics.jsonl. Raises MetricsError naming the file (and line) on bad input."""
    path = metrics_path(run)
    if not path.exists():
        hint = "" if Path(run).exists() else f" ({run} does not exist)"
        if Path(run).is_dir():
            inner = sorted(p.parent.name for p in Path(run).glob(f"*/{METRICS_FILE}"))
            if inner:
                raise MetricsError(f"{path}: no such file; {run} holds run folders ({', '.join(inner[:5])}"
                                   f"{', ...' if len(inner) > 5 else ''}): pass those, e.g. {Path(run) / '*'}")
        raise MetricsError(f"{path}: no such file{hint}; is {run} a run folder "
                           f"(<run.root>/<experiment_id>/, written with $.metrics.jsonl = true)?")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsError(f"{path}: cannot read: {e}") from None
    out = RunMetrics(label=label or _default_label(path), path=path)
    train: dict[int, tuple[float | None, float | None]] = {}
    val: dict[int, float | None] = {}
    bpb: dict[int, float | None] = {}
    lines = text.split("\n")
    complete = text.endswith("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines) and not complete:
                out.warnings.append(f"{where}: last line is cut short (a live or killed run); skipped")
                continue
            raise MetricsError(f"{where}: not a JSON line ({e.msg}); is this a perfkit metrics.jsonl?") from None
        if not isinstance(record, dict):
            raise MetricsError(f"{where}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise MetricsError(f"{where}: record has no integer `step`")
        kind = record.get("kind", "train")
        if kind == "val":
            val[step] = _number(record.get("val_loss"), where, "val_loss")
            bpb[step] = _number(record.get("val_bpb"), where, "val_bpb")
        elif kind == "train":
            train[step] = (_number(record.get("loss"), where, "loss"),
                           _number(record.get("tokens_per_s_per_gpu"), where, "tokens_per_s_per_gpu"))
            seen = _number(record.get("tokens_seen"), where, "tokens_seen")
            if seen is not None and math.isfinite(seen):
                out.seen[step] = int(seen)
        # other kinds (a later trainer may add some) are not plotted
    if not train and not val:
        raise MetricsError(f"{path}: no training or validation records (has the run logged a step yet?)")
    for step in sorted(train):
        loss, tok = train[step]
        if loss is not None:
            out.train_steps.append(step)
            out.train_loss.append(loss)
        if tok is not None:
            out.tok_steps.append(step)
            out.tokens_per_s.append(tok)
    for step in sorted(val):
        if val[step] is not None:
            out.val_steps.append(step)
            out.val_loss.append(val[step])
        if bpb[step] is not None:
            out.bpb_steps.append(step)
            out.val_bpb.append(bpb[step])
    return out


def _default_label(path: Path) -> str:
    return path.parent.name if path.name == METRICS_FILE else path.stem


def _unique_labels(runs: list[RunMetrics]) -> None:
    """Two runs with the same folder name (e.g. a/run1 and b/run1) get their whole paths as labels."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = str(r.path.parent if r.path.name == METRICS_FILE else r.path)


def summary(r: RunMetrics) -> str:
    """One line: step range, first -> last train loss, last val loss, median tokens/s."""
    parts = [r.label + ":"]
    if r.train_steps:
        parts.append(f"steps {r.train_steps[0]}..{r.train_steps[-1]}, train loss "
                     f"{r.train_loss[0]:.4f} -> {r.train_loss[-1]:.4f}")
    if r.val_steps:
        parts.append(f"val loss {r.val_loss[-1]:.4f} (step {r.val_steps[-1]})")
    if r.bpb_steps:
        parts.append(f"val bpb {r.val_bpb[-1]:.4f} (step {r.bpb_steps[-1]})")
    finite = [t for t in r.tokens_per_s if math.isfinite(t)]
    if finite:
        parts.append(f"median {statistics.median(finite):,.0f} tokens/s per GPU")
    return " ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


def draw(runs: list[RunMetrics], output: Path, title: str | None = None, log_loss: bool = False,
         x: str = "step") -> None:
    """Write the two-panel figure (three with bits per byte) over steps or tokens trained on
    (x = "step" | "tokens").
    Raises ImportError when matplotlib is missing, MetricsError when a run lacks tokens_seen."""
    def xs(r: RunMetrics, steps: list[int]) -> list[float]:
        return r.tokens_at(steps) if x == "tokens" else steps

    if x == "tokens":
        for r in runs:
            r.tokens_at([])  # fail before matplotlib is imported
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
    from matplotlib.ticker import EngFormatter

    with_bpb = any(r.bpb_steps for r in runs)
    fig = Figure(figsize=(16 if with_bpb else 11, 4.2), layout="constrained")
    ax_loss, ax_tok, *ax_bpb = fig.subplots(1, 3 if with_bpb else 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for r, color in zip(runs, colors):
        if r.train_steps:
            ax_loss.plot(xs(r, r.train_steps), r.train_loss, color=color, lw=1.5, label=f"{r.label} train")
        if r.val_steps:
            ax_loss.plot(xs(r, r.val_steps), r.val_loss, color=color, ls="--", marker="o", ms=5, lw=1,
                         label=f"{r.label} val")
        if r.tok_steps:
            ax_tok.plot(xs(r, r.tok_steps), r.tokens_per_s, color=color, lw=1.5, marker=".", label=r.label)
        if r.bpb_steps:
            ax_bpb[0].plot(xs(r, r.bpb_steps), r.val_bpb, color=color, ls="--", marker="o", ms=5, lw=1,
                           label=f"{r.label} val")
    xlabel = "tokens trained on" if x == "tokens" else "step"
    ax_loss.set(xlabel=xlabel, ylabel="loss (cross-entropy per token)", title="loss")
    if log_loss:
        ax_loss.set_yscale("log")
    ax_tok.set(xlabel=xlabel, ylabel="tokens/s per GPU", title="throughput")
    ax_tok.set_ylim(bottom=0)
    if with_bpb:
        ax_bpb[0].set(xlabel=xlabel, ylabel="bits per UTF-8 byte of the validation text", title="val bits per byte")
    for ax in (ax_loss, ax_tok, *ax_bpb):
        ax.grid(True, alpha=0.3)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1.5M, 2G: no overlapping digits
        if ax.has_data():
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="perfkit plot", description="Plot loss (train and validation) and tokens/s per GPU over "
        "steps for one or more runs, from each run folder's metrics.jsonl.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a run folder (runs/<experiment_id>) or a metrics.jsonl")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="image to write; the suffix picks the format (.png, .svg, .pdf)")
    parser.add_argument("--label", action="append", default=[],
                        help="legend name of a run, once per RUN in order (default: the folder name)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--log-loss", action="store_true", help="logarithmic loss axis")
    parser.add_argument("--x", choices=("step", "tokens"), default="step",
                        help="x axis: optimizer step (default) or tokens trained on (compares runs "
                             "with different batch sizes)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.label and len(args.label) != len(args.runs):
        parser.error(f"--label given {len(args.label)} times for {len(args.runs)} runs")

    try:
        runs = [read_metrics(run, label) for run, label in
                zip(args.runs, args.label or [None] * len(args.runs))]
    except MetricsError as e:
        print(f"perfkit plot: {e}", file=sys.stderr)
        return 1
    _unique_labels(runs)
    for r in runs:
        for w in r.warnings:
            print(f"perfkit plot: warning: {w}", file=sys.stderr)
    try:
        draw(runs, args.output, args.title, args.log_loss, args.x)
    except MetricsError as e:
        print(f"perfkit plot: {e}", file=sys.stderr)
        return 1
    except ImportError:
        print(f"perfkit plot: matplotlib is not installed; {install_hint()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # unwritable path, unknown image suffix
        print(f"perfkit plot: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    for r in runs:
        print(summary(r))
    print(f"perfkit plot: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
