#!/usr/bin/env bash
# `make mutation`: mutation-tests the core of the Python package with mutmut, in a scratch copy
# (build/mutation) so that the sources are never edited, then prints the per-module summary and
# writes it to benchmarks/results/mutation-summary.json.
# Usage: run.sh [PYTHON [MUTANT ...]]   (PYTHON: the venv's python, which holds the built extension
# and mutmut; MUTANT: names or patterns of mutants to run again, e.g. the survivors after new tests)
# Re-runs are incremental: mutmut keeps the verdicts of functions whose code and tests did not change.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${1:-$root/.venv/bin/python}"
shift || true
work="$root/build/mutation"

# The compiled kernels come from the installed package: mutmut imports the mutated copy of rda_ext,
# which must hold the extension beside its Python files.
so="$(cd / && "$python" -c 'import rda_ext._C as c; print(c.__file__)')"
mkdir -p "$work"
rm -rf "$work/rda_ext" "$work/python_tests"
# -p keeps the modification times, by which mutmut knows which files changed since the last run.
cp -rp "$root/rda_ext" "$work/rda_ext"
cp "$so" "$work/rda_ext/"
# mutmut copies the package once: a rebuilt extension must replace its copy too.
if [ -d "$work/mutants/rda_ext" ]; then cp "$so" "$work/mutants/rda_ext/"; fi
cp -rp "$root/python_tests" "$work/python_tests"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
cat "$root/pyproject.toml" "$here/mutmut.toml" > "$work/pyproject.toml"

cd "$work"
# One worker per core, one thread per worker (nproc follows OMP_NUM_THREADS: it is asked first).
jobs="${MUTATION_JOBS:-$(nproc)}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# mutmut exits non-zero when it cannot start (the clean tests fail): then there is nothing to sum up.
"$(dirname "$python")/mutmut" run --max-children "$jobs" "$@"
"$python" "$here/summary.py" "$work" "$here/EQUIVALENT.md" --unreachable "$here/UNREACHABLE.md" \
    --json "$root/benchmarks/results/mutation-summary.json"
