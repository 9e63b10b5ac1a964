#!/usr/bin/env bash
# One-call check of rda_ext on a lent GPU machine: build for this GPU, run the whole test suite
# (CUDA cases included) and the quick benchmarks, with logs, timings and a summary.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        (or: make gpu-check OUT=OUTDIR)
#
# OUTDIR defaults to $OUT (the device machine's result folder). Everything goes into
# OUTDIR/<gpu-slug>/ (e.g. nvidia-h100-80gb-hbm3/), at most 8 files, which is all the device tool
# brings back:
#   summary.txt        each step's exit code, seconds and time limit; the overall result
#   env.txt            nvidia-smi, Python/torch/CUDA/nvcc/compiler versions, packages, commit
#   build.log          pip install -v, then the import check (rda_ext.build_info())
#   pytest.log         python -m pytest -ra python_tests;  pytest-junit.xml  the same as JUnit XML
#   bench.log          the output of both benchmarks
#   kernels-<gpu-slug>-quick.json, trainer-<gpu-slug>[-standin].json   their results
#
# Environment: PYTHON (default python3: on the GPU machine the system Python that holds torch),
# GPU_CHECK_BUDGET (seconds for the whole run, default 560: the device tool stops a command at
# 600), FASHION_MNIST_ROOT (folder of the Fashion-MNIST IDX files for the trainer benchmark; also
# looked for in /usr/share/datasets/fashion-mnist and <repo>/.data/fashion-mnist; without them the
# trainer runs on a stand-in of the same shape, MNIST-5k tiled to 60,000 rows, and says so),
# PYTEST_ADDOPTS (extra pytest options, read by pytest itself).
#
# Exit status: 0 when every step passed, 1 when a step failed or ran out of time, 2 on a usage
# error, 3 when no CUDA GPU is usable (checked before anything is built).

# The step functions are called through step(); shellcheck cannot see that.
# shellcheck disable=SC2317
set -uo pipefail

PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

die() {  # one line on stderr, then exit with the given status
    echo "gpu_check: $2" >&2
    exit "$1"
}

# ---- output folder ---------------------------------------------------------------------------
OUTDIR=${1:-${OUT:-}}
if [[ -z "$OUTDIR" ]]; then
    die 2 "usage: bash benchmarks/gpu_check.sh OUTDIR (or set OUT; make gpu-check OUT=OUTDIR)"
fi

# ---- 1. a usable CUDA GPU, before anything is built ------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    die 3 "no usable CUDA GPU: nvidia-smi not found (run this on a GPU machine)"
fi
if ! timeout 60 nvidia-smi -L >/dev/null 2>&1; then
    die 3 "no usable CUDA GPU: nvidia-smi -L failed"
fi
# Prints "name|major.minor|slug"; the slug is benchmarks/machine.py's machine_slug of the GPU.
probe=$(timeout 120 "$PYTHON" -c '
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
name = torch.cuda.get_device_name()
major, minor = torch.cuda.get_device_capability()
slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
print(f"{name}|{major}.{minor}|{slug}")
' 2>&1) || die 3 "no usable CUDA GPU: $PYTHON -c 'import torch; assert torch.cuda.is_available()' failed: $(tail -n 1 <<<"$probe")"
probe=$(tail -n 1 <<<"$probe")
IFS='|' read -r GPU_NAME GPU_ARCH SLUG <<<"$probe"
[[ -n "${SLUG:-}" && -n "${GPU_ARCH:-}" ]] || die 3 "no usable CUDA GPU: unexpected probe output: $probe"

mkdir -p "$OUTDIR/$SLUG" || die 2 "cannot create $OUTDIR/$SLUG"
D=$(cd "$OUTDIR/$SLUG" && pwd)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || die 2 "mktemp failed"
trap 'rm -rf "$SCRATCH"' EXIT

export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export TORCH_CUDA_ARCH_LIST="$GPU_ARCH"  # this GPU only (overrides the Makefile's default list)

# ---- step bookkeeping --------------------------------------------------------------------------
BUDGET=${GPU_CHECK_BUDGET:-560}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T0=$(now_ms)
SUMMARY="$D/summary.txt"
STEP_LINES=()
FAILED=0
fmt_s() { printf '%d.%d' $(($1 / 1000)) $((($1 % 1000) / 100)); }

# step NAME CAP RESERVE COMMAND...: runs COMMAND (which applies `timeout $STEP_LIMIT`) for at most CAP s
# and never into the RESERVE seconds kept for the steps after it; records rc, seconds, the limit, NOTE.
STEP_RC=0
step() {
    local name=$1 cap=$2 reserve=$3
    shift 3
    local left=$((BUDGET - ($(now_ms) - T0) / 1000 - reserve))
    local limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        STEP_RC=125
        record "$name" 125 0 "$limit" "skipped: no time left in the budget of ${BUDGET}s"
        return
    fi
    echo "== $name (limit ${limit}s) =="
    local t
    t=$(now_ms)
    STEP_LIMIT=$limit "$@"
    STEP_RC=$?
    record "$name" "$STEP_RC" $(($(now_ms) - t)) "$limit" "${NOTE:-}"
    NOTE=
}
record() {  # name rc ms limit note
    local line
    line=$(printf '%-14s %4s %9s %7s  %s' "$1" "$2" "$(fmt_s "$3")" "$4" "$5")
    STEP_LINES+=("$line")
    echo "$line"
    (($2 == 0)) || FAILED=1
    write_summary
}
write_summary() {
    {
        echo "gpu_check: $GPU_NAME (compute capability $GPU_ARCH, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
        echo "started $(date -u -d "@$((T0 / 1000))" '+%Y-%m-%d %H:%M:%S UTC'), budget ${BUDGET}s, python $PYTHON, repo $REPO"
        echo "rc: 124 = ran out of its time limit, 125 = not run"
        printf '%-14s %4s %9s %7s  %s\n' step rc seconds limit note
        printf '%s\n' "${STEP_LINES[@]}"
    } >"$SUMMARY"
}
skip_rest() {  # the steps that cannot run after a failed build
    local s
    for s in "$@"; do record "$s" 125 0 0 "skipped: $SKIP_WHY"; done
}
NOTE=

# ---- 3. environment ------------------------------------------------------------------------------
env_info() {
    {
        echo "# gpu_check environment, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(hostname)"
        echo "uname: $(uname -a)"
        echo "cpus: $(nproc); memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
        echo
        echo "## git"
        echo "HEAD: $(git -C "$REPO" rev-parse HEAD 2>&1 | head -n 1)"
        git -C "$REPO" status --short 2>&1 | head -n 40
        echo "source hash (sha256 over csrc rda_ext CMakeLists.txt pyproject.toml, as:"
        echo "  find csrc rda_ext CMakeLists.txt pyproject.toml -type f ! -path '*/__pycache__/*' ! -name '*.so' | LC_ALL=C sort | xargs sha256sum | sha256sum):"
        echo "  $(find csrc rda_ext CMakeLists.txt pyproject.toml -type f ! -path '*/__pycache__/*' ! -name '*.so' \
            | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
        echo
        echo "## nvidia-smi"
        timeout 30 nvidia-smi
        timeout 30 nvidia-smi --format=csv --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit
        echo
        echo "## python / torch"
        timeout 120 "$PYTHON" -c '
import platform, sys, torch
print("python", sys.executable, platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
p = torch.cuda.get_device_properties(0)
print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
      "SMs", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1))
print("torch threads", torch.get_num_threads())
'
        echo
        echo "## toolchain"
        echo "nvcc: $(command -v nvcc || echo "not on PATH; /usr/local/cuda/bin/nvcc exists: $([[ -x /usr/local/cuda/bin/nvcc ]] && echo yes || echo no)")"
        { command -v nvcc >/dev/null && nvcc --version; } || /usr/local/cuda/bin/nvcc --version
        echo "CC=${CC:-} CXX=${CXX:-} CUDACXX=${CUDACXX:-} CUDA_HOME=${CUDA_HOME:-}"
        echo "c++: $(c++ --version 2>&1 | head -n 1)  ($(command -v c++))"
        echo "g++: $(g++ --version 2>&1 | head -n 1)  ($(command -v g++))"
        echo "cmake: $(cmake --version 2>&1 | head -n 1)  ($(command -v cmake))"
        echo "ninja: $(ninja --version 2>&1)  ($(command -v ninja))"
        echo
        echo "## python packages"
        "$PYTHON" -m pip list --format=freeze 2>/dev/null \
            | grep -iE '^(torch|triton|numpy|pybind11|scikit[-_]build[-_]core|cmake|ninja|pytest|pytest[-_]timeout|hypothesis|scikit[-_]learn|matplotlib|tqdm|rda[-_]ext)=='
        echo "hypothesis: $HYPOTHESIS"
    } >"$D/env.txt" 2>&1
}
if "$PYTHON" -c 'import hypothesis' >/dev/null 2>&1; then
    HYPOTHESIS=present
    PYTEST_IGNORE=()
else
    HYPOTHESIS="MISSING: python_tests/test_ops_properties.py is left out of the test run"
    PYTEST_IGNORE=(--ignore "$REPO/python_tests/test_ops_properties.py")
fi
step env 60 480 env_info
[[ $HYPOTHESIS == present ]] || echo "gpu_check: hypothesis is $HYPOTHESIS"

# ---- 4. build for this GPU, then import from outside the source tree ---------------------------
build() {
    {
        echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
        echo "+ $PYTHON -m pip install --no-build-isolation --no-deps --no-index -v ."
    } >"$D/build.log"
    timeout -k 10 "$STEP_LIMIT" "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v . >>"$D/build.log" 2>&1
}
# Run from the scratch folder: Python started in the repo root would import the source folder
# rda_ext/, which has no compiled module, instead of the installed package.
import_check() {
    echo "+ (cd $SCRATCH && $PYTHON -c 'import rda_ext; print(rda_ext.build_info())')" >>"$D/build.log"
    (cd "$SCRATCH" && timeout -k 10 "$STEP_LIMIT" "$PYTHON" -c '
import rda_ext
info = rda_ext.build_info()
print("rda_ext from", rda_ext.__file__)
print(info)
assert info["cuda_kernels"], "build_info() reports cuda_kernels False: the CUDA kernels were not compiled"
assert info["cuda_available"], "torch sees no GPU"
') >>"$D/build.log" 2>&1
    local rc=$?
    tail -n 3 "$D/build.log"
    NOTE=$(grep -o "'cuda_kernels': [A-Za-z]*" "$D/build.log" | tail -n 1)
    return "$rc"
}
step build 300 240 build
if ((STEP_RC != 0)); then
    tail -n 30 "$D/build.log"
    SKIP_WHY="the build failed (build.log)"
    skip_rest import pytest bench_kernels bench_trainer
else
    step import 60 220 import_check
    if ((STEP_RC != 0)); then
        SKIP_WHY="rda_ext does not import (build.log)"
        skip_rest pytest bench_kernels bench_trainer
    else
        # ---- 5. the whole test suite; a failure does not stop the run ---------------------------
        # SIGINT at the limit: pytest then stops, prints its summary and writes the JUnit XML.
        run_tests() {
            (cd "$SCRATCH" && timeout -s INT -k 30 "$STEP_LIMIT" "$PYTHON" -m pytest -ra --durations=15 \
                -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" \
                --junitxml "$D/pytest-junit.xml" "${PYTEST_IGNORE[@]}" "$REPO/python_tests") >"$D/pytest.log" 2>&1
            local rc=$?
            NOTE=$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* =+$' "$D/pytest.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
            ((rc != 124)) || NOTE="STOPPED at the time limit: $NOTE"
            [[ $HYPOTHESIS == present ]] || NOTE="$NOTE; hypothesis missing, test_ops_properties.py left out"
            return "$rc"
        }
        step pytest 360 130 run_tests

        # ---- 6. benchmarks (quick) --------------------------------------------------------------
        bench_kernels() {
            echo "+ $PYTHON benchmarks/bench_kernels.py --quick --device cuda" | tee -a "$D/bench.log"
            timeout -k 10 "$STEP_LIMIT" "$PYTHON" benchmarks/bench_kernels.py --quick --device cuda \
                --out "$D/kernels-$SLUG-quick.json" 2>&1 | tee -a "$D/bench.log"
        }
        step bench_kernels 200 60 bench_kernels

        # Fashion-MNIST, or a stand-in of its shape: the 5,000 MNIST digits shipped in the package,
        # tiled to 60,000 rows (the timing depends on the shape, not on the pictures).
        find_fashion() {
            local d
            for d in ${FASHION_MNIST_ROOT:+"$FASHION_MNIST_ROOT"} /usr/share/datasets/fashion-mnist \
                "$REPO/.data/fashion-mnist" "$REPO/shared/data/fashion-mnist"; do
                if compgen -G "$d/train-images-idx3-ubyte*" >/dev/null && compgen -G "$d/train-labels-idx1-ubyte*" >/dev/null; then
                    echo "$d"
                    return 0
                fi
            done
            return 1
        }
        bench_trainer() {
            local data name=trainer-$SLUG
            if data=$(find_fashion); then
                NOTE="Fashion-MNIST from $data"
            else
                data="$SCRATCH/standin"
                name=trainer-$SLUG-standin
                NOTE="STAND-IN data: no Fashion-MNIST found, MNIST-5k tiled to 60000 rows (timing only)"
                echo "gpu_check: $NOTE" | tee -a "$D/bench.log"
                (cd "$SCRATCH" && "$PYTHON" -c '
import gzip, sys
from importlib import resources
import numpy as np
with resources.files("rda_ext").joinpath("data/mnist_5k.npz").open("rb") as f, np.load(f) as d:
    images, labels = np.tile(d["images"], (12, 1, 1)), np.tile(d["labels"], 12)
out = sys.argv[1]
import os; os.makedirs(out, exist_ok=True)
def idx(arr, code):
    head = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return head + np.ascontiguousarray(arr, np.uint8).tobytes()
with gzip.open(f"{out}/train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
    f.write(idx(images, 0x08))
with gzip.open(f"{out}/train-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
    f.write(idx(labels, 0x08))
' "$data") 2>&1 | tee -a "$D/bench.log" || return 1
            fi
            # 3 outer iterations: the median then leaves out the first one's warm-up.
            echo "+ $PYTHON benchmarks/bench_trainer.py --device cuda --outer-iter 3 --inner-epochs 5 --data-root $data" | tee -a "$D/bench.log"
            timeout -k 10 "$STEP_LIMIT" "$PYTHON" benchmarks/bench_trainer.py --device cuda --outer-iter 3 \
                --inner-epochs 5 --data-root "$data" --out "$D/$name.json" 2>&1 | tee -a "$D/bench.log"
        }
        step bench_trainer 180 0 bench_trainer
    fi
fi

# ---- 7. summary ----------------------------------------------------------------------------------
total_ms=$(($(now_ms) - T0))
write_summary
{
    printf '%-14s %4s %9s\n' overall "$FAILED" "$(fmt_s "$total_ms")"
    echo "files: $(find "$D" -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | tr '\n' ' ')"
} >>"$SUMMARY"
if [[ -f "$D/pytest.log" ]]; then
    echo
    echo "== pytest.log (end) =="
    grep -E '^(FAILED|ERROR) ' "$D/pytest.log" | head -n 40
    tail -n 3 "$D/pytest.log"
fi
echo
echo "== $SUMMARY =="
cat "$SUMMARY"
exit "$FAILED"
