"""Smoke tests of the benchmark scripts that the suite can afford: the kernel, proximal-step,
training-step, trainer, scale, lambda-path and distributed benchmarks on small problems, and the
GPU check's refusal to start without a GPU."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_step_benchmark_times_both_steps_and_counts_their_flops(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_step.py"), "--widths", "3,20", "--batch-sizes", "16",
                          "--steps", "5", "--gemm-size", "128", "--rows", "3000", "--out", str(tmp_path / "s.json")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["machine"]["cpu"] and (tmp_path / "s.png").exists()
    assert [(r["d"], r["batch"], r["precision"]) for r in result["rows"]] == [(3, 16, "float32"), (20, 16, "float32")]
    for r in result["rows"]:
        # d-128-32-128-d: 6 FLOPs per multiply-add and row but the first layer's input gradient.
        macs = 2 * (r["d"] * 128 + 128 * 32)
        assert r["flops"] == 16 * (6 * macs - 2 * r["d"] * 128)
        assert r["speedup"] == pytest.approx(r["autograd"]["ms"] / r["fused"]["ms"])
        assert r["fused"]["gflops"] == pytest.approx(r["flops"] / r["fused"]["ms"] / 1e6)
    assert [(r["d"], r["rows"]) for r in result["reconstruction"]] == [(3, 3000), (20, 3000)]
    from rda_ext.solver.training import CHUNK_ROWS

    assert all(r["ms_chunks_of_65536"] > 0 and r[f"ms_chunks_of_{CHUNK_ROWS}"] > 0 for r in result["reconstruction"])


def test_scale_benchmark_times_each_method_at_each_size_and_fits_the_slopes(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_scale.py"), "--quick", "--methods", "rda,iforest",
                          "--repeats", "3", "--out", str(tmp_path / "scale.json")], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "scale.json").read_text())
    assert result["machine"]["cpu"] and (tmp_path / "scale.png").exists()
    assert [(r["source"], r["rows"], r["method"]) for r in result["runs"]] == [
        ("synthetic", n, m) for n in (2000, 6000) for m in ("rda", "iforest")]
    for method in ("rda", "iforest"):
        (a, b) = [r["seconds"] for r in result["runs"] if r["method"] == method]
        assert result["slopes"]["synthetic"][method] == pytest.approx(np.log(b / a) / np.log(3))
    assert all(0.5 < r["auroc"] <= 1 for r in result["runs"])
    # Each method's own AUROC, and the median of its three timed fits.
    assert all(r["auroc"] != f["auroc"] for r, f in zip(result["runs"][::2], result["runs"][1::2]))
    assert all(len(r["repeats"]) == 3 and r["seconds"] == sorted(r["repeats"])[1] for r in result["runs"])
    assert [r["rows"] for r in result["rda_against_iforest"]] == [2000, 6000]


def write_idx(path: Path, arr: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_trainer_benchmark_times_each_precision_and_counts_the_flops(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (300, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(300) % 10)
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_trainer.py"), "--rows", "300", "--outer-iter", "1",
                          "--inner-epochs", "2", "--data-root", str(tmp_path), "--gemm-size", "256",
                          "--out", str(tmp_path / "t.json")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["machine"]["cpu"] and result["rows"] == 300
    assert set(result["runs"]) == {"rda_ext float32", "rda_ext bfloat16", "DataLoader loop"}
    # 784-400-200-400-784: 787,200 multiply-adds per row; 6 FLOPs each per training row and epoch
    # but the first layer's input gradient (2 x 784 x 400), then 2 each for the reconstruction.
    macs = 2 * (784 * 400 + 400 * 200)
    assert result["flop_per_outer"] == dict(train=300 * 2 * (6 * macs - 2 * 784 * 400), reconstruct=300 * 2 * macs,
                                            total=300 * 2 * (6 * macs - 2 * 784 * 400) + 300 * 2 * macs)
    base = result["runs"]["DataLoader loop"]["median"]
    for r in result["runs"].values():
        assert r["median"] > 0 and r["speedup_vs_dataloader"] == pytest.approx(base / r["median"])
        assert r["gflops"] == pytest.approx(result["flop_per_outer"]["total"] / r["median"] / 1e9)
    assert result["runs"]["rda_ext bfloat16"]["fraction_of_gemm"] == pytest.approx(
        result["runs"]["rda_ext bfloat16"]["gflops"] / result["gemm_gflops"]["bfloat16"])


def test_path_benchmark_compares_the_parallel_path_with_separate_fits(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_path.py"), "--lams", "3", "--outer-iter", "2",
                          "--inner-epochs", "1", "--hidden", "16,4", "--out", str(tmp_path / "p.json")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "p.json").read_text())
    assert result["machine"]["cpu"] and len(result["lams"]) == len(result["per_lam"]) == 3
    assert result["speedup_parallel_vs_separate"] == pytest.approx(result["seconds_separate"] / result["seconds_parallel"])
    assert [r["lam"] for r in result["per_lam"]] == sorted(result["lams"], reverse=True)
    for r in result["per_lam"]:
        # A parallel fit is its separate fit (same seed, to rounding): the same rows flagged.
        assert r["flagged_parallel"] == r["flagged_separate"] and r["overlap"] == 1.0


def test_kernel_benchmark_times_the_chosen_ops_against_the_reference(tmp_path):
    ops = "convergence,convergence norms"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_kernels.py"), "--rows", "334", "--no-compile",
                          "--ops", ops, "--out", str(tmp_path / "k.json")], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "k.json").read_text())
    assert result["copy_bandwidth_gb_s"] > 0 and result["machine"]["cpu"]
    assert [(r["op"], r["shape"]) for r in result["results"]] == [(op, [334, 784]) for op in ops.split(",")]
    for r in result["results"]:
        assert r["speedup_vs_eager"] == pytest.approx(r["eager_reference_s"] / r["ours_s"])
        assert r["fraction_of_bandwidth_floor"] > 0 and r["compiled_reference_s"] is None


def test_distributed_benchmark_times_one_and_two_processes_and_counts_the_bytes(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_distributed.py"), "--rows", "300", "--outer-iter",
                          "2", "--penalties", "l21_cols", "--out", str(tmp_path / "d.json")],
                         capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "d.json").read_text())
    (r,) = result["results"]
    one, two = r["single"], r["distributed"]
    assert (one["processes"], one["rows"], two["processes"], two["rows"]) == (1, 300, 2, 600)
    assert r["weak_scaling_efficiency"] == pytest.approx(one["seconds_per_iteration"] / two["seconds_per_iteration"])
    # 784-128-32 with tied weights: 105,520 float32 gradients per step; a ring sends 2 (P - 1) / P of them.
    assert two["gradient_bytes_per_step"] == 4 * 105_520 and two["gradient_bytes_sent_per_step"] == 4 * 105_520
    assert one["gradient_bytes_per_step"] == 0
    # l21_cols exchanges its column norms every iteration: at least 2 x 784 float64 per rank.
    assert two["solver_collective_bytes_per_iteration"] >= 2 * 784 * 8


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
