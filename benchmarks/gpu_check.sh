#!/usr/bin/env bash
# The GPU checks of issue 14 in one go.  NEEDS A CUDA GPU (on a CPU machine the steps run, skip or
# report "no CUDA GPU" and the summary says so).  From the repository root:
#
#     bash benchmarks/gpu_check.sh                # logs and summary in ${OUT:-gpu_check_out}/
#     OUT=/tmp/x PYTHON=python3 bash benchmarks/gpu_check.sh
#
# Steps, each under `timeout` (15, 150, 180, 100, 45 s; override with T_INFO, T_PYTEST, T_BENCH_GPU,
# T_TRAIN, T_DEFORM), 8.2 minutes at most in all:
#   info       nvidia-smi -L; python, torch, CUDA, triton and kornia versions; missing imports
#   pytest     python -m pytest -o addopts= -m cuda -q -rfE -p no:cacheprovider
#   bench_gpu  python benchmarks/bench_gpu.py --quick --json $OUT/bench_gpu.json   (BENCH_GPU_ARGS: --quick)
#   bench_train python benchmarks/bench_train.py --quick --device cuda   (BENCH_TRAIN_ARGS to change)
#   bench_deform python benchmarks/bench_deform.py --device cuda   (against torchvision.ops.deform_conv2d)
# A failing step does not stop the others; the exit status is non-zero if any step failed (a timeout
# is exit status 124).  Each step's output is in $OUT/<step>.log, the summary in $OUT/summary.md.
# src/ is put first on PYTHONPATH, so stnkit needs no install; wheels in .whl/ (if any) are installed
# into /tmp/gpu_check_site first (for packages the GPU machine lacks: kornia, mlxtend, ...).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT_DIR="${OUT:-gpu_check_out}"
mkdir -p "$OUT_DIR" || exit 2
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .whl/*.whl >"$OUT_DIR/wheels.log" 2>&1 \
        && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site" \
        || echo "warning: installing .whl/*.whl failed, see $OUT_DIR/wheels.log"
fi

T_INFO="${T_INFO:-15}" T_PYTEST="${T_PYTEST:-150}" T_BENCH_GPU="${T_BENCH_GPU:-180}" T_TRAIN="${T_TRAIN:-100}"
T_DEFORM="${T_DEFORM:-45}"
BENCH_GPU_ARGS="${BENCH_GPU_ARGS:---quick}" BENCH_TRAIN_ARGS="${BENCH_TRAIN_ARGS:---quick --device cuda}"

STEPS=() RCS=() SECS=()
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    local log="$OUT_DIR/$name.log" t0 rc
    echo "=== $name (timeout ${limit}s): $*"
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >"$log" 2>&1
    rc=$?
    local dt
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "    exit $rc after ${dt}s, log $log"
    STEPS+=("$name") RCS+=("$rc") SECS+=("$dt")
    [ "$rc" -ne 0 ] && failed=1
    return 0
}

info() {
    echo "--- nvidia-smi -L"
    nvidia-smi -L || echo "nvidia-smi: not available (exit $?)"
    echo "--- python"
    "$PYTHON" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU)")
missing = []
for m in ("triton", "kornia", "stnkit", "pytest", "hypothesis", "mlxtend", "scipy", "yaml", "safetensors"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "(no __version__)"), getattr(mod, "__file__", ""))
    except Exception as e:
        missing.append(m)
        print(m, "NOT importable:", type(e).__name__, e)
print("missing:", ", ".join(missing) or "none")
EOF
}

export -f info
export PYTHON
step info "$T_INFO" bash -c info
# -o addopts= : pyproject's addopts ('-m "not slow and not cuda" -q') would make this -qq, which
# prints no final summary line; -m cuda on the command line selects the GPU tests either way
step pytest "$T_PYTEST" "$PYTHON" -m pytest -o addopts= -m cuda -q -rfE -p no:cacheprovider
# shellcheck disable=SC2086  # *_ARGS are lists of words
step bench_gpu "$T_BENCH_GPU" "$PYTHON" benchmarks/bench_gpu.py $BENCH_GPU_ARGS --json "$OUT_DIR/bench_gpu.json"
# shellcheck disable=SC2086
step bench_train "$T_TRAIN" "$PYTHON" benchmarks/bench_train.py $BENCH_TRAIN_ARGS
step bench_deform "$T_DEFORM" "$PYTHON" benchmarks/bench_deform.py --device cuda --repeats 5

key_line() {  # the line(s) of a step's log that say how it went
    local name="$1" log="$OUT_DIR/$1.log" rc="$2"
    local line=""
    case "$name" in
        info) line=$(grep -E '^(GPU [0-9]|torch |triton |missing:)' "$log" | paste -sd ';' -) ;;
        pytest) line=$(grep -E '([0-9]+ (passed|failed|skipped|deselected|errors?))|no tests ran' "$log" | tail -n 1) ;;
        bench_gpu) line=$(grep -E '^(# bench_gpu|no CUDA GPU|\(total)' "$log" | paste -sd ';' -) ;;
        bench_train) line=$(grep -E '^training images/s' "$log" | tail -n 1) ;;
        bench_deform) line=$(grep -E '^(torch |\(torchvision)' "$log" | paste -sd ';' -) ;;
    esac
    if [ -z "$line" ] || [ "$rc" -ne 0 ]; then  # say why it failed: the log's last non-empty line
        local last
        last=$(grep -v '^[[:space:]]*$' "$log" 2>/dev/null | tail -n 1)
        line="${line:+$line; }last: ${last:-(empty log)}"
    fi
    [ "$rc" -eq 124 ] && line="TIMED OUT; $line"
    printf '%s' "$line" | tr '|' '/' | cut -c1-400
}

{
    echo
    echo "## gpu_check summary ($(date -u +%FT%TZ), $OUT_DIR)"
    echo
    echo "| step | exit | seconds | key line |"
    echo "|---|---:|---:|---|"
    for i in "${!STEPS[@]}"; do
        echo "| ${STEPS[$i]} | ${RCS[$i]} | ${SECS[$i]} | $(key_line "${STEPS[$i]}" "${RCS[$i]}") |"
    done
    echo
    echo "### bench_gpu tables"
    grep -E '^(\||## |Footnotes:|  \[[0-9]+\]|Outputs differing)' "$OUT_DIR/bench_gpu.log" || echo "(none: see bench_gpu.log)"
    echo
    echo "### bench_train table"
    grep -E '^(\||training images/s)' "$OUT_DIR/bench_train.log" || echo "(none: see bench_train.log)"
    echo
    echo "### bench_deform table"
    grep -E '^\|' "$OUT_DIR/bench_deform.log" || echo "(none: see bench_deform.log)"
    echo
    echo "overall: $([ "$failed" -eq 0 ] && echo "all steps exited 0" || echo "SOME STEP FAILED")"
} | tee "$OUT_DIR/summary.md"

exit "$failed"
