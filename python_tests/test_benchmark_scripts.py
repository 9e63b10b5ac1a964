"""Smoke tests of the benchmark scripts that the suite can afford: the proximal-step benchmark on a
small matrix, and the GPU check's refusal to start without a GPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_prox_step_benchmark_runs_and_records_both_sequences(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_prox_step.py"), "--rows", "600", "--cols", "40",
                          "--repeats", "2", "--out", str(tmp_path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    (report,) = tmp_path.glob("prox-step-*.json")
    result = json.loads(report.read_text())
    assert result["machine"]["cpu"] and (result["rows"], result["cols"]) == (600, 40)
    cells = {(r["penalty"], r["lam"]) for r in result["results"]}
    assert cells == {(p, lam) for p in ("l1", "l21_rows", "l21_cols") for lam in ("contamination", "fixed")}
    for r in result["results"]:
        assert r["before_ms"] > 0 and r["after_ms"] > 0
        assert r["speedup"] == pytest.approx(r["before_ms"] / r["after_ms"])


@pytest.mark.skipif(torch.cuda.is_available() or shutil.which("nvidia-smi"), reason="a GPU machine runs it for real")
def test_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 3, run.stderr
    assert run.stderr.startswith("gpu_check: no usable CUDA GPU") and len(run.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing built, nothing written


def test_gpu_check_without_an_output_folder_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, timeout=60,
                         env=env, check=False)
    assert run.returncode == 2 and "usage:" in run.stderr
