#!/usr/bin/env bash
# bench/device_check.sh OUTDIR - the one prepared GPU check of perfkit (issue 7).
#
# Run from the repository root on a CUDA machine with torch >= 2.11 and triton >= 3.6 already
# installed and no network. In well under 8 minutes it runs, in this order (the headline first, so
# a slow step late in the list cannot cost it):
#   env        nvidia-smi, versions, git commit                       -> OUTDIR/env.txt
#   deps       which of perfkit's modules this python lacks (said first); each missing one installed
#              by name from .whl/ (msgspec; torchao for float8: carry .whl with the call)
#   install    perfkit importable as perfkit.kernels / perfkit.bench (pip -e, else a symlink shim,
#              with PYTHONSAFEPATH=1 so the checkout's own perfkit/ does not shadow it)
#   train      perfkit bench configs/gpt2.toml --compare kernels --profile (on the demo .pbin when
#              data/preprocessed travelled with the call, else --synthetic) -> OUTDIR/train.jsonl (both variants, each profiled after its timed steps: one process,
#              so the compile of each variant is paid once); the Triton variant's rank-0 Chrome trace
#              gzipped to OUTDIR/trace_rank0.json.gz when it is small enough
#   gpu-tests  pytest -m gpu (the only place the CUDA tests of every part run)
#   kernels    python -m perfkit.bench.kernels at the model's shapes           -> OUTDIR/kernels.jsonl
#   loss       python -m perfkit.bench.loss: head + loss step, fused vs compiled unfused at the gpt2
#              and llama3_1b shapes (issue 15's speed target)        -> appended to OUTDIR/kernels.jsonl
#   loader     python -m perfkit.bench.loader                                  -> OUTDIR/loader.jsonl
#   then, only while the budget lasts: train-llama1b-float8 (configs/llama3_1b.toml, bf16 vs float8
#   rowwise vs tensorwise block linears: issue 15's float8 >= 1.2x target), kernels-wide (hidden
#   4096/8192 at 64k rows), train-mb32 and train-llama1b-loss (llama3_1b.toml, fused vs unfused loss)
#   (the Triton variant at micro-batch 32, a candidate default for gpt2.toml)
# Every step has its own timeout and all share one deadline (BUDGET_S, default 465 s); a step that
# fails or times out is recorded with its exit code and the next one runs. All output goes to
# OUTDIR/steps.log; OUTDIR/summary.md gets the step table and the numbers (bench/device_summary.py).
# At most 7 files, none in subfolders. Exit code: 0 when every step returned 0, else 1.
# For a dry run of the script itself on a CPU box (tests/test_bench_device_check.py):
#   DEVICE_CHECK_CONFIG=configs/cpu_debug.toml DEVICE_CHECK_EXTRA='--model.vocab_size=256'
#   DEVICE_CHECK_SKIP_INSTALL=1 (use the perfkit already importable) bench/device_check.sh OUTDIR
# DEVICE_CHECK_WHEELS (default ./.whl), DEVICE_CHECK_NEEDS / DEVICE_CHECK_OPTIONAL (module names,
# also the wheels' names) change the deps step; DEVICE_CHECK_STEPS="NAME ..." runs only those steps
# (env, deps and install always run); BUDGET_S sets the shared deadline. Needs Python >= 3.11.
set -u
set -o pipefail

OUT=${1:?usage: bench/device_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(pwd)
PY=${PYTHON:-python3}
LOG="$OUT/steps.log"
STEPS=$(mktemp /tmp/perfkit_steps.XXXXXX)   # name, rc, seconds, command - kept out of OUTDIR
RUNS=/tmp/perfkit_bench_runs                 # run folders (traces) stay on the machine
BUDGET_S=${BUDGET_S:-465}
DEADLINE=$(( $(date +%s) + BUDGET_S ))
RESERVE_S=15                                 # kept for the summary at the end
FAILED=0
ONLY=${DEVICE_CHECK_STEPS:-}                 # e.g. "train kernels": only these steps (a rerun of what failed)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
: >"$LOG"

note() { echo "$*" | tee -a "$LOG"; }

record() {  # record NAME RC SECONDS COMMAND...
    local name=$1 rc=$2 secs=$3
    shift 3
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$*" >>"$STEPS"
    [ "$rc" = 0 ] || FAILED=1
}

step() {  # step NAME CAP_SECONDS COMMAND... : run with min(cap, time left) as its timeout
    local name=$1 cap=$2
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        note "=== $name: not in DEVICE_CHECK_STEPS ($ONLY)"
        return
    fi
    local left=$(( DEADLINE - RESERVE_S - $(date +%s) ))
    local limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 30 ]; then
        note "=== $name: skipped, ${left}s left of the ${BUDGET_S}s budget"
        record "$name" skipped 0 "$@"
        return
    fi
    note "=== $name (timeout ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    note "=== $name: rc=$rc in $(( $(date +%s) - t0 ))s$([ "$rc" = 124 ] && echo ' (timed out)')"
    record "$name" "$rc" "$(( $(date +%s) - t0 ))" "$@"
}

# ---- env: the machine and the software, first -------------------------------------------------
{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) CPUs, $(uname -srm)"
    timeout 30 nvidia-smi
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv
    timeout 60 "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); import triton; print('triton', triton.__version__)"
    echo "git $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    git status --short --untracked-files=no 2>/dev/null | head -20
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$LOG"

# ---- deps: what this python lacks, said before any step runs --------------------------------------
# The GPU image has torch, triton, numpy, tiktoken, tensorboard and pytest but not msgspec (which
# perfkit.config needs) nor torchao (float8). Their cp312 wheels travel in .whl/ (command in
# bench/results/README.md); each missing one is installed BY NAME from that folder, so an extra or
# unreadable wheel there cannot break the install. Modules are also pip names here.
WHEELS=${DEVICE_CHECK_WHEELS:-$REPO/.whl}
NEEDS=${DEVICE_CHECK_NEEDS:-"torch triton numpy tiktoken tensorboard pytest msgspec"}
OPTIONAL=${DEVICE_CHECK_OPTIONAL:-torchao}
SITE=$(mktemp -d /tmp/perfkit_site.XXXXXX)     # wheels install here, never into the image
SHIM=$(mktemp -d /tmp/perfkit_shim.XXXXXX)     # the package-dir mapping made of links (fallback)
missing() {  # missing MODULE... -> the names this python cannot import, space-separated
    timeout 60 "$PY" -c 'import importlib, sys
out = []
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception:
        out.append(m)
print(" ".join(out))' "$@"
}
left_s() { echo $(( DEADLINE - RESERVE_S - $(date +%s) )); }
cap() { local c=$1 l; l=$(left_s); [ "$l" -lt "$c" ] && c=$l; [ "$c" -lt 5 ] && c=5; echo "$c"; }  # pip timeouts
t0=$(date +%s)
install_rc=0
miss=$(missing $NEEDS) miss_opt=$(missing $OPTIONAL)
note "deps: missing before install: ${miss:-none}${miss_opt:+ (optional: $miss_opt)}"
echo "deps missing before install: ${miss:-none}${miss_opt:+ (optional: $miss_opt)}" >>"$OUT/env.txt"
from_wheels=()
for m in $miss $miss_opt; do
    if ls "$WHEELS/$m"-*.whl >/dev/null 2>&1; then from_wheels+=("$m")
    else note "deps: no wheel for $m in $WHEELS"; fi
done
if [ "${#from_wheels[@]}" -gt 0 ]; then
    note "deps: installing ${from_wheels[*]} from $WHEELS"
    timeout "$(cap 60)" "$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-compile \
        --no-cache-dir --disable-pip-version-check --target "$SITE" "${from_wheels[@]}" 2>&1 | tee -a "$LOG"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
still=$miss still_opt=$miss_opt   # re-checked only when something was installed (each check imports torch)
[ "${#from_wheels[@]}" -eq 0 ] || { still=$(missing $miss); still_opt=$(missing $miss_opt); }
[ -z "$still" ] || { note "deps: still missing: $still (the steps that import them will fail)"; install_rc=1; }
[ -z "$still_opt" ] || note "deps: optional, unavailable: $still_opt"

# ---- install: perfkit.kernels and perfkit.bench only resolve through the package-dir mapping ------
# PYTHONSAFEPATH (Python >= 3.11): `python -c` / `python -m` from the repo root would put the root
# first on sys.path, and `import perfkit` would load ./perfkit (no kernels/ or bench/ inside) before
# the shim on PYTHONPATH is reached. An editable install works either way; the shim needs this.
export PYTHONSAFEPATH=1
if [ "${DEVICE_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    note "install skipped (DEVICE_CHECK_SKIP_INSTALL=1)"
    install_cmd="(skipped: DEVICE_CHECK_SKIP_INSTALL=1)"
elif timeout "$(cap 60)" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
        --disable-pip-version-check -e . 2>&1 | tee -a "$LOG"; then
    install_cmd="pip install --no-index --no-deps --no-build-isolation -e ."
else
    # the same layout as the mapping, made of links: perfkit/* plus kernels/ and bench/ inside it
    note "pip install -e . failed; importing through a symlink shim instead ($SHIM)"
    mkdir -p "$SHIM/perfkit"
    for f in "$REPO"/perfkit/*; do ln -s "$f" "$SHIM/perfkit/"; done
    ln -s "$REPO/kernels" "$SHIM/perfkit/kernels"
    ln -s "$REPO/bench" "$SHIM/perfkit/bench"
    export PYTHONPATH=$SHIM${PYTHONPATH:+:$PYTHONPATH}
    install_cmd="symlink shim $SHIM on PYTHONPATH (pip install -e . failed)"
fi
timeout 120 "$PY" -c "import perfkit.config, perfkit.kernels, perfkit.bench.train, perfkit.bench.kernels; \
print('perfkit imports from', perfkit.__file__, '- kernels from', perfkit.kernels.__file__)" 2>&1 | tee -a "$LOG" \
    || install_rc=1
record install "$install_rc" "$(( $(date +%s) - t0 ))" "$install_cmd"

# ---- benchmarks and tests -----------------------------------------------------------------------
CONFIG=${DEVICE_CHECK_CONFIG:-configs/gpt2.toml}
read -r -a EXTRA <<<"${DEVICE_CHECK_EXTRA:-}"
# The config's own .pbin when it travelled with the call (carry data/preprocessed: the demo corpus,
# ~6 MB): then the timed step includes the real loader and its data wait. Else random tokens.
DATA=(--synthetic)
if [ -f data/preprocessed/shakespeare_train.pbin ] && [ -z "${DEVICE_CHECK_SYNTHETIC:-}" ]; then DATA=(); fi
note "train data: ${DATA[*]:-the .pbin files of the config}"
BENCH=("$PY" -m perfkit.cli bench "$CONFIG" "${DATA[@]}" --json "$OUT/train.jsonl" --run.root="$RUNS" "${EXTRA[@]}")
step train 270 "${BENCH[@]}" --steps 12 --warmup 4 --compare kernels --profile --profile-steps 2

trace=$(ls -t "$RUNS"/bench_*/trace_triton_rank0.json 2>/dev/null | head -1)
[ -n "$trace" ] || trace=$(ls -t "$RUNS"/bench_*/trace_*_rank0.json 2>/dev/null | head -1)
if [ -n "$trace" ]; then
    gzip -c "$trace" >"$OUT/trace_rank0.json.gz"
    if [ "$(stat -c %s "$OUT/trace_rank0.json.gz")" -gt $(( 12 * 1024 * 1024 )) ]; then
        note "trace $trace is too large to bring back gzipped; left on the machine"
        rm -f "$OUT/trace_rank0.json.gz"
    else
        note "trace $trace -> $OUT/trace_rank0.json.gz"
    fi
fi

pytest_args=(-m gpu -v -rs -p no:cacheprovider --continue-on-collection-errors)  # -v: one line per test, so a timeout still shows which passed
"$PY" -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 120)
# correctness tests only (no timing inside): 4 workers share the GPU and the 16 cores that compile
"$PY" -c "import xdist" 2>/dev/null && pytest_args+=(-n 4)
step gpu-tests 170 "$PY" -m pytest "${pytest_args[@]}"
step kernels 100 "$PY" -m perfkit.bench.kernels --rows 16384 --hidden 768 2048 --json "$OUT/kernels.jsonl"
step loss 100 "$PY" -m perfkit.bench.loss --json "$OUT/kernels.jsonl"
step loader 45 "$PY" -m perfkit.bench.loader --batch 16 --seconds 1 --wait-steps 100 --json "$OUT/loader.jsonl"
# ---- only if time is left (or named alone: DEVICE_CHECK_STEPS=train-llama1b-float8) --------------
# issue 15's float8 target: Llama 3.2 1B shapes (seq 8192, two micro-batches per step: the
# optimizer step amortized as in a real run, and the memory estimate checked with FSDP2's fp32
# unsharded gradients of an accumulation), bf16 block linears vs torchao float8 rowwise vs
# tensorwise, each variant compiled; every record is written as soon as its variant finishes, so
# a timeout keeps the variants measured before it
step train-llama1b-float8 240 "$PY" -m perfkit.cli bench configs/llama3_1b.toml --synthetic --json "$OUT/train.jsonl" \
    --run.root="$RUNS" --steps 6 --warmup 2 --compare float8 --training.global_batch_size=2
# the rest of issue 4's shape grid, and a larger micro-batch for gpt2.toml
step kernels-wide 90 "$PY" -m perfkit.bench.kernels --rows 65536 --hidden 4096 8192 --json "$OUT/kernels.jsonl"
step train-mb32 120 "${BENCH[@]}" --steps 8 --warmup 3 --training.micro_batch_size=32
# issue 15 on the GPU: Llama 3.2 1B shapes (seq 8192, vocab 128,256), fused vs compiled unfused loss,
# one micro-batch per step (MFU and peak memory per variant; random tokens: no Llama-vocab .pbin travels)
step train-llama1b-loss 200 "$PY" -m perfkit.cli bench configs/llama3_1b.toml --synthetic --json "$OUT/train.jsonl" \
    --run.root="$RUNS" --steps 6 --warmup 2 --compare loss --training.global_batch_size=1

# ---- summary ------------------------------------------------------------------------------------
timeout 60 "$PY" bench/device_summary.py "$OUT" "$STEPS" 2>&1 | tee -a "$LOG" || {
    { echo "# perfkit device check"; echo; echo "summary writer failed; steps:"; sed 's/^/    /' "$STEPS"; } \
        >"$OUT/summary.md"
}
rm -rf "$STEPS" "$SHIM"   # $SITE stays: a shell on the machine can reuse it
note "=== done: $(ls "$OUT" | tr '\n' ' ')"
exit "$FAILED"
