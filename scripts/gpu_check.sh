#!/usr/bin/env bash
# The GPU proof in one prepared run (issue 14): on a machine with an NVIDIA GPU, CuPy and PyTorch
# with CUDA, and no internet, in order and within about 9 minutes:
#   1. info   nvidia-smi, `python -m xpnet info`, versions and the CuPy settings that matter
#   2. tests  the test suite on XPNET_TEST_BACKENDS=numpy,cupy (not the slow ones; a per-test timeout)
#   3. bench  benchmarks/run.py --device gpu (short repeats) against CUDA PyTorch
#   4. train  the headline: seed001-tf with its recipe on the GPU, with --time-limit so it ends in time
#   5. pack   at most 8 files under the output folder: summary.txt, logs.tar.gz, bench.json,
#             run.tar.gz (the run folder without its checkpoint) and junit.xml
#
#   scripts/gpu_check.sh [--dry-run] [--out DIR] [--steps info,tests,bench,train] [--minutes M]
#
# Nothing is installed: the checkout runs as it is (PYTHONPATH), with $PYTHON (default python3).
# The output folder is --out DIR, else $OUT (set on the lent GPU machine), else ./gpu-check-out.
# --minutes M (default 9) is the whole run's budget; each step gets a cap (`timeout`) and the
# training gets what is left, less a margin for evaluation and packing. A failing step is recorded
# in summary.txt and the next step still runs; the exit status is 0 when every step passed.
# --dry-run runs the same steps on the CPU at tiny sizes (strict backend, one small test file,
# a one-model benchmark, 64 training images): the test suite runs it, so the script itself cannot
# fail on a typo when a GPU comes. TF32: the tests never use it; benchmarks/run.py turns it on for
# both frameworks unless CUPY_TF32=0 is set; the training uses it only with CUPY_TF32=1 set for the
# whole script. The settings step (logs/settings.log) and result.json record it. See DEVELOPERS.md.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
out="${OUT:-}"
dry=0
steps="info,tests,bench,train"
minutes=9

die() { echo "gpu_check.sh: $*" >&2; exit 2; }
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --out) [ "$#" -ge 2 ] || die "--out needs a folder"; out="$2"; shift ;;
        --steps) [ "$#" -ge 2 ] || die "--steps needs a list"; steps="$2"; shift ;;
        --minutes) [ "$#" -ge 2 ] || die "--minutes needs a number"; minutes="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
case "$minutes" in ''|*[!0-9.]*) die "--minutes must be a number, got '$minutes'" ;; esac
for s in ${steps//,/ }; do
    case "$s" in info|tests|bench|train) ;; *) die "unknown step '$s' (info, tests, bench, train)" ;; esac
done
out="${out:-$root/gpu-check-out}"
mkdir -p "$out" || die "cannot create the output folder $out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")" || die "cannot create a work folder"
logs="$work/logs"
mkdir -p "$logs" "$work/bench" "$work/runs"
summary="$out/summary.txt"
: > "$summary"

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export XPNET_DATA="${XPNET_DATA:-$root/data}"
# CuPy compiles kernels once into its cache; keep it in the work folder when $HOME is not writable.
if ! mkdir -p "${CUPY_CACHE_DIR:-$HOME/.cupy/kernel_cache}" 2>/dev/null; then
    export CUPY_CACHE_DIR="$work/cupy-cache"
fi

start=$(date +%s)
budget=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
deadline=$((start + budget))
failed=0

if [ "$dry" = 1 ]; then
    device=strict; backends=numpy,strict; bench_device=cpu
    test_args=(tests/test_schedules.py); test_cap=120; per_test=60
    bench_args=(--models lenet5 --batch-size 8 --repeats 1 --warmup 0 --threads 1); bench_cap=120
    train_args=(--train-images 64 --test-images 64 --epochs 1)
else
    device=gpu; backends=numpy,cupy; bench_device=gpu
    # The default suite (not slow) with the GPU backend; the strict backend already runs in CI.
    test_args=(tests --ignore tests/test_gpu_check.py); test_cap=240; per_test=120
    bench_args=(--models big,medium,lenet5 --batch-size 128 --repeats 10 --warmup 3); bench_cap=90
    train_args=()
fi

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((deadline - $(date +%s))); }

# step NAME CAP_SECONDS COMMAND...: run with a cap, log to logs/NAME.log, record the outcome.
step() {
    local name="$1" cap="$2" t0 rc
    shift 2
    if [ "$(left)" -le 5 ]; then
        note "[$name] skipped: the budget of $minutes minutes is spent"
        failed=1
        return
    fi
    [ "$cap" -gt "$(left)" ] && cap="$(left)"
    t0=$(date +%s)
    echo "== $name (cap ${cap}s): $*" | tee "$logs/$name.log"
    timeout --kill-after=10 "$cap" "$@" >> "$logs/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
        note "[$name] ok in $(( $(date +%s) - t0 ))s"
    else
        failed=1
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && rc="$rc (stopped at its cap of ${cap}s)"
        note "[$name] FAILED with status $rc after $(( $(date +%s) - t0 ))s; last lines of logs/$name.log:"
        tail -n 15 "$logs/$name.log" | sed 's/^/    /' | tee -a "$summary"
    fi
}

cat > "$work/settings.py" <<'EOF'
import os, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "cupy", "torch"):
    try:
        module = __import__(name)
        print(name, module.__version__)
    except Exception as exc:  # noqa: BLE001 - report whatever is missing or broken
        print(name, "unavailable:", type(exc).__name__, exc)
for var in ("CUPY_TF32", "CUPY_CACHE_DIR", "CUPY_GPU_MEMORY_LIMIT", "CUPY_ACCELERATORS",
            "XPNET_OPS", "XPNET_DATA", "CUDA_VISIBLE_DEVICES"):
    print(f"{var}={os.environ.get(var, '')}")
from xpnet.backends import get_backend
from xpnet.backends.cupy_backend import gpu_problem
problem = gpu_problem()
print("gpu:", "usable" if problem is None else problem)
if problem is None:
    print("cupy settings:", get_backend("gpu").settings())
EOF

has() { case ",$steps," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

note "gpu_check.sh $( [ "$dry" = 1 ] && echo '--dry-run ')started $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $root"
note "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown), budget $minutes min, steps $steps"

if has info; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        step nvidia-smi 30 nvidia-smi
    else
        note "[nvidia-smi] not found on this machine"
    fi
    step info 60 "$py" -m xpnet info
    step settings 60 "$py" "$work/settings.py"
fi

if has tests; then
    test_cmd=("$py" -m pytest -q -p no:cacheprovider -m "not slow" --timeout "$per_test"
              --junitxml "$work/junit.xml" -o junit_family=xunit2)
    if [ "$dry" = 0 ] && "$py" -c "import xdist" >/dev/null 2>&1; then
        test_cmd+=(-n 8 --dist loadfile)
    fi
    # TF32 changes float32 products by about 1e-3: the tests check tighter than that.
    step tests "$test_cap" env -u CUPY_TF32 XPNET_TEST_BACKENDS="$backends" "${test_cmd[@]}" "${test_args[@]}"
fi

if has bench; then
    step bench "$bench_cap" "$py" "$root/benchmarks/run.py" --device "$bench_device" --out "$work/bench" \
        "${bench_args[@]}"
fi

if has train; then
    # What is left, less 60 s for the last epoch's overrun, the test-set evaluation and packing.
    train_cap=$(( $(left) - 20 ))
    limit=$(awk -v s="$(( train_cap - 60 ))" 'BEGIN { m = s / 60; if (m < 0.1) m = 0.1; printf "%.2f", m }')
    step train "$train_cap" "$py" "$root/examples/train_mnist.py" --model seed001-tf --device "$device" \
        --seed 0 --plot --out "$work/runs" --time-limit "$limit" "${train_args[@]}"
    result=$(ls "$work"/runs/*/result.json 2>/dev/null | head -n 1)
    if [ -n "$result" ]; then
        "$py" - "$result" <<'EOF' | tee -a "$summary"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"headline: {r['model']} test error {r['test_error_percent']:.2f} % ({r['mistakes']} mistakes of "
      f"{r['test_samples']}), {r['epochs_run']} epochs, best epoch {r['best_epoch']}, "
      f"{r['seconds_per_epoch']:.1f} s per epoch, fit {r['seconds_fit']:.0f} s, total "
      f"{r['seconds_total']:.0f} s, stopped by the time limit: {r['stopped_by_time_limit']}, "
      f"device {r['device']}")
EOF
    fi
fi

# -- pack: at most 8 files, each far below 16 MiB -------------------------------------------
note "finished the steps in $(( $(date +%s) - start ))s; status: $( [ "$failed" = 0 ] && echo 'all passed' || echo 'some FAILED')"
tar -czf "$out/logs.tar.gz" -C "$work" logs
[ -f "$work/junit.xml" ] && cp "$work/junit.xml" "$out/junit.xml"
bench_json=$(ls "$work"/bench/*.json 2>/dev/null | head -n 1)
[ -n "$bench_json" ] && cp "$bench_json" "$out/bench.json"
if ls "$work"/runs/* >/dev/null 2>&1; then
    tar -czf "$out/run.tar.gz" --exclude=last.npz -C "$work" runs
fi
for f in "$out"/*; do
    size=$(wc -c < "$f")
    [ "$size" -gt $((16 * 1024 * 1024)) ] && note "warning: $(basename "$f") is $size bytes, over the 16 MiB that come back"
done
note "output in $out: $(cd "$out" && ls | tr '\n' ' ')"
rm -rf "$work"
exit "$failed"
