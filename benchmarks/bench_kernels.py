"""Kernel benchmark: the compiled rda_ext operators against the eager reference
(rda_ext.reference) and torch.compile of the reference, in one run on one machine.

For every op and size it reports the median time, the effective bandwidth (the fewest bytes the
op must move over the time), the fraction of the bandwidth floor reached (floor = those bytes over
the copy bandwidth measured here, first) and the speed-up over the eager reference. Inputs are
fresh random normals; small sizes rotate through enough input sets to overflow the caches.

    python benchmarks/bench_kernels.py [--quick] [--device cpu|cuda] [--out FILE.json]
        [--ops "convergence,convergence norms"] [--rows 334,5350] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from machine import machine, machine_slug

import rda_ext
from rda_ext import reference

COLS = 784  # MNIST-shaped rows, as in the papers
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Op:
    name: str
    operands: int  # input matrices
    bytes_per_element: int  # fewest bytes moved per element of X, float32 (issue 2 / issue 5)
    ours: Callable
    ref: Callable
    ours_out: Callable | None = None  # the out= form, writing into a preallocated result
    # Further arguments made from each input set before the timing (e.g. the residual's group
    # norms that shrink_residual(norms=) is given); their bytes are a vector, left out of the floor.
    extra: Callable | None = None


def lam_rows(rows, cols):  # about the median row norm of X - L, X and L standard normal
    return math.sqrt(2 * cols)


def lam_cols(rows, cols):
    return math.sqrt(2 * rows)


def ops(rows: int, cols: int) -> list[Op]:
    lr, lc = lam_rows(rows, cols), lam_cols(rows, cols)
    return [
        Op("soft_threshold", 1, 8, lambda x: rda_ext.soft_threshold(x, 0.5), lambda x: reference.soft_threshold(x, 0.5),
           lambda x, out: rda_ext.soft_threshold(x, 0.5, out=out)),
        Op("group_shrink rows", 1, 8, lambda x: rda_ext.group_shrink(x, lr / 1.4, 1),
           lambda x: reference.group_shrink(x, lr / 1.4, 1), lambda x, out: rda_ext.group_shrink(x, lr / 1.4, 1, out=out)),
        Op("group_shrink cols", 1, 12, lambda x: rda_ext.group_shrink(x, lc / 1.4, 0),
           lambda x: reference.group_shrink(x, lc / 1.4, 0), lambda x, out: rda_ext.group_shrink(x, lc / 1.4, 0, out=out)),
        Op("shrink_residual l1", 2, 12, lambda X, L: rda_ext.shrink_residual(X, L, 0.5, "l1"),
           lambda X, L: reference.shrink_residual(X, L, 0.5, "l1"),
           lambda X, L, out: rda_ext.shrink_residual(X, L, 0.5, "l1", out=out)),
        Op("shrink_residual l21_rows", 2, 12, lambda X, L: rda_ext.shrink_residual(X, L, lr, "l21_rows"),
           lambda X, L: reference.shrink_residual(X, L, lr, "l21_rows"),
           lambda X, L, out: rda_ext.shrink_residual(X, L, lr, "l21_rows", out=out)),
        Op("shrink_residual l21_cols", 2, 20, lambda X, L: rda_ext.shrink_residual(X, L, lc, "l21_cols"),
           lambda X, L: reference.shrink_residual(X, L, lc, "l21_cols"),
           lambda X, L, out: rda_ext.shrink_residual(X, L, lc, "l21_cols", out=out)),
        Op("group_norms rows", 1, 4, lambda x: rda_ext.group_norms(x, 1), lambda x: reference.group_norms(x, 1)),
        Op("convergence", 4, 16, rda_ext.convergence, reference.convergence),
        # The fused forms: the residual's norms without materialising it (reads X and L), the
        # shrinkage given those norms (reads X and L, writes S: one pass for columns too), and the
        # convergence numbers that also write LS_prev = L + S (reads X, L, S, LS_prev, writes LS_prev).
        Op("group_norms rows minus", 2, 8, lambda X, L: rda_ext.group_norms(X, 1, minus=L),
           lambda X, L: reference.group_norms(X, 1, L)),
        Op("group_norms cols minus", 2, 8, lambda X, L: rda_ext.group_norms(X, 0, minus=L),
           lambda X, L: reference.group_norms(X, 0, L)),
        Op("shrink_residual l21_rows norms", 2, 12,
           lambda X, L, n: rda_ext.shrink_residual(X, L, lr, "l21_rows", norms=n),
           lambda X, L, n: reference.shrink_residual(X, L, lr, "l21_rows", n),
           lambda X, L, n, out: rda_ext.shrink_residual(X, L, lr, "l21_rows", norms=n, out=out),
           extra=lambda X, L: (rda_ext.group_norms(X, 1, minus=L),)),
        Op("shrink_residual l21_cols norms", 2, 12,
           lambda X, L, n: rda_ext.shrink_residual(X, L, lc, "l21_cols", norms=n),
           lambda X, L, n: reference.shrink_residual(X, L, lc, "l21_cols", n),
           lambda X, L, n, out: rda_ext.shrink_residual(X, L, lc, "l21_cols", norms=n, out=out),
           extra=lambda X, L: (rda_ext.group_norms(X, 0, minus=L),)),
        Op("convergence_step", 4, 20, rda_ext.ops.convergence_step, reference.convergence_step),
        # The three norms instead of the two ratios: what each rank of a row-sharded fit computes.
        Op("convergence norms", 4, 16, lambda X, L, S, P: rda_ext.convergence(X, L, S, P, norms=True),
           lambda X, L, S, P: reference.convergence(X, L, S, P, True)),
        Op("convergence_step norms", 4, 20, lambda X, L, S, P: rda_ext.ops.convergence_step(X, L, S, P, norms=True),
           lambda X, L, S, P: reference.convergence_step(X, L, S, P, True)),
    ]


class Timer:
    """Seconds per call: host clock on the CPU, CUDA events on a GPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn: Callable, arg_sets: list, warmup: int, repeats: int) -> list[float]:
        for i in range(warmup):
            fn(*arg_sets[i % len(arg_sets)])
        times = []
        for i in range(repeats):
            args = arg_sets[i % len(arg_sets)]
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn(*args)
                times.append(time.perf_counter() - t0)
        return times


def copy_bandwidth(device: str, timer: Timer, nbytes: int = 1 << 30) -> float:
    """Bytes read plus bytes written per second by a large tensor copy."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = statistics.median(timer(lambda s: dst.copy_(s), [(src,)], warmup=2, repeats=10))
    return 2 * nbytes / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1 MB, 16 MB and 65536 x 784 only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/kernels-<device>.json)")
    parser.add_argument("--ops", help="comma-separated op names to run (default: all)")
    parser.add_argument("--rows", help="comma-separated row counts of 784 columns instead of the mode's sizes")
    args = parser.parse_args()
    device = args.device
    timer = Timer(device)
    gen = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(4), "little"))

    # Rows of 784 float32 columns: 1 MB, 16 MB, 205 MB (65536 x 784, the issue's target), 1 GB.
    row_counts = [334, 5350, 65536] if args.quick else [334, 5350, 65536, 342392]
    if device == "cuda" and not args.quick:
        row_counts.append(1369568)  # 4 GB
    if args.rows:
        row_counts = [int(r) for r in args.rows.split(",")]
    bw = copy_bandwidth(device, timer)
    print(f"device {device}: {machine(device)}")
    print(f"measured copy bandwidth: {bw / 1e9:.2f} GB/s (read + write)\n")

    # Enough distinct inputs to overflow the last-level cache (32 MB L3 here, 50 MB L2 on an H100).
    rotation_bytes = (256 if device == "cpu" else 512) << 20
    compiled_refs: dict[str, Callable] = {}
    rows_out = []
    header = (f"{'op':30s} {'shape':>13s} {'ours ms':>9s} {'out= ms':>9s} {'eager ms':>9s} {'compile ms':>10s} "
              f"{'GB/s':>7s} {'of floor':>8s} {'out= of':>8s} {'vs eager':>8s} {'vs compile':>10s}")
    print(header)
    for rows in row_counts:
        set_bytes = rows * COLS * 4
        n_sets = max(1, min(64, math.ceil(rotation_bytes / set_bytes)))
        repeats = max(10, min(50, int(2e9 / (set_bytes * 4))))
        for op in ops(rows, COLS):
            if args.ops and op.name not in args.ops.split(","):
                continue
            arg_sets = [
                tuple(torch.randn(rows, COLS, generator=gen, device=device) for _ in range(op.operands))
                for _ in range(n_sets)
            ]
            if op.extra:
                arg_sets = [args + op.extra(*args) for args in arg_sets]
            floor = rows * COLS * op.bytes_per_element / bw
            t_ours = statistics.median(timer(op.ours, arg_sets, warmup=3, repeats=repeats))
            t_out = None
            if op.ours_out:
                out = torch.empty(rows, COLS, device=device)
                t_out = statistics.median(timer(lambda *a: op.ours_out(*a, out), arg_sets, warmup=3, repeats=repeats))
                del out
            t_ref = statistics.median(timer(op.ref, arg_sets, warmup=2, repeats=max(5, repeats // 2)))
            t_comp = None
            if not args.no_compile:
                fn = compiled_refs.setdefault(op.name, torch.compile(op.ref, dynamic=True))
                t_comp = statistics.median(timer(fn, arg_sets, warmup=3, repeats=max(5, repeats // 2)))
            rec = {
                "op": op.name,
                "shape": [rows, COLS],
                "dtype": "float32",
                "input_mb": round(set_bytes / 2**20, 1),
                "min_bytes_per_element": op.bytes_per_element,
                "ours_s": t_ours,
                "ours_out_s": t_out,
                "eager_reference_s": t_ref,
                "compiled_reference_s": t_comp,
                "effective_gb_s": rows * COLS * op.bytes_per_element / t_ours / 1e9,
                "fraction_of_bandwidth_floor": floor / t_ours,
                "fraction_of_bandwidth_floor_out": floor / t_out if t_out else None,
                "speedup_vs_eager": t_ref / t_ours,
                "speedup_vs_compiled": t_comp / t_ours if t_comp else None,
            }
            rows_out.append(rec)
            comp = f"{t_comp * 1e3:10.3f}" if t_comp else f"{'-':>10s}"
            vs_comp = f"{rec['speedup_vs_compiled']:9.2f}x" if t_comp else f"{'-':>10s}"
            t_out_ms = f"{t_out * 1e3:9.3f}" if t_out else f"{'-':>9s}"
            out_floor = f"{floor / t_out:8.0%}" if t_out else f"{'-':>8s}"
            print(f"{op.name:30s} {rows:>7d}x{COLS:<5d} {t_ours * 1e3:9.3f} {t_out_ms} {t_ref * 1e3:9.3f} {comp} "
                  f"{rec['effective_gb_s']:7.2f} {rec['fraction_of_bandwidth_floor']:8.0%} {out_floor} "
                  f"{rec['speedup_vs_eager']:7.2f}x {vs_comp}")
            del arg_sets

    result = {
        "machine": machine(device),
        "device": device,
        "mode": "quick" if args.quick else "full",
        "copy_bandwidth_gb_s": bw / 1e9,
        "timing": "median of repeated calls after warm-up; " + ("CUDA events" if device == "cuda" else "host clock"),
        "results": rows_out,
    }
    out = args.out or RESULTS / f"kernels-{machine_slug(device)}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
