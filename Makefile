# One command sets everything up and runs the job: `make demo` (the main job) or `make test`.
# Everything goes into a virtual environment in .venv; the build is incremental (build/).

PYTHON ?= python3
VENV ?= .venv
# The CUDA build of torch, so that the CUDA kernels are compiled wherever nvcc is present.
TORCH ?= torch==2.14.1
# Compile the CUDA kernels for these GPUs without needing one (A100, H100/H200 + PTX).
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX

BIN := $(VENV)/bin

.PHONY: setup install test demo bench adbench gpu-check mutation kernel-bugs clean

setup: $(VENV)/.deps

$(VENV)/.deps: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)" "numpy>=1.24" "scikit-build-core>=0.10" "pybind11>=2.12" ninja "cmake>=3.26" \
		"tqdm>=4.60" \
		"scikit-learn>=1.3" "matplotlib>=3.7" "pytest>=7" "hypothesis>=6" "pyod>=2.1"
	touch $@

# Built against the torch in the venv, hence no build isolation.
install: setup
	$(BIN)/pip install --no-build-isolation --no-deps .

test: install
	$(BIN)/pytest -ra python_tests

demo: install
	$(BIN)/rda-ext demo

bench: install
	$(BIN)/python benchmarks/bench_kernels.py
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_path.py

# RDA against PyOD's detectors on a folder of ADBench tables (DATA=..., default ../shared/data/adbench).
DATA ?= ../shared/data/adbench
adbench: install
	$(BIN)/python benchmarks/quality/peers/adbench.py --data-dir "$(DATA)"

# On a lent GPU machine, no venv: builds with PYTHON (there the system python3, which holds torch)
# for that GPU, runs the tests and the quick benchmarks; logs and results go to OUT/<gpu>/.
gpu-check:
	PYTHON="$(PYTHON)" bash benchmarks/gpu_check.sh "$(OUT)"

# Mutation testing (benchmarks/mutation; too long for CI, see README). `mutation` runs mutmut over the
# Python core and prints the per-module summary; `kernel-bugs` tries the hand-made C++ bugs.
MUTMUT ?= mutmut==3.8.1

mutation: install
	$(BIN)/pip install -q "$(MUTMUT)"
	bash benchmarks/mutation/run.sh "$(abspath $(BIN))/python"

kernel-bugs: install
	$(BIN)/python benchmarks/mutation/kernel_bugs.py

clean:
	rm -rf build $(VENV)
