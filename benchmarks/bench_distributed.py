"""Weak scaling of a row-sharded fit: 1 process of 1 thread on n rows against P processes of 1
thread each on P x n rows (gloo, this machine), the time per outer iteration, and what the ranks
exchange: the gradient all-reduce of every training step (one flat buffer of the network's
parameters in float32, ``RowGroup.shared_gradients``) and the solver's own collectives per outer
iteration (column norms, convergence norms, the contamination selection, the history's sums),
counted as they happen.

Data: the embedded MNIST digits, n rows per process (rows repeated when P x n exceeds 5,000).
Weak-scaling efficiency = time per iteration on 1 process / time per iteration on P processes
(1.0 is perfect: P times the rows in the same time)."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from machine import machine, write_result

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import load_mnist_5k
from rda_ext.io.readers import row_range
from rda_ext.solver.collectives import RowGroup
from rda_ext.solver.schedule import Schedule

PENALTIES = ("l21_rows", "l1", "l21_cols")


def _count_payload(counter: list[int]):
    """RowGroup's all-reduces, counted: the bytes this rank contributes to each."""
    reduce = RowGroup._reduce

    def counted(self, t, op):
        counter[0] += t.numel() * t.element_size()
        return reduce(self, t, op)

    RowGroup._reduce = counted


def _fit(rank: int, world: int, port: int, rows: int, params: dict, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:  # 1 process: the plain single-process fit, the baseline
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=600))
    payload = [0]
    _count_payload(payload)
    X, _ = load_mnist_5k()
    X = np.resize(X, (rows * world, X.shape[1]))  # repeated rows beyond the 5,000
    start, stop = row_range(len(X), rank, world)
    est = RobustAutoencoder(device="cpu", random_state=0, **params).fit(X[start:stop])
    if rank == 0:
        params_count = sum(p.numel() for p in est.model_.parameters())
        torch.save(dict(history=est.history_, payload=payload[0], params=params_count), out)
    if world > 1:
        dist.barrier()  # no rank closes its connections while another still reads from them
        dist.destroy_process_group()
        os._exit(0)  # skips the finalisation where gloo's threads may abort a finished rank


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, rows: int, params: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.pt")
        mp.start_processes(_fit, args=(world, _port(), rows, params, out), nprocs=world, start_method="spawn")
        r = torch.load(out, weights_only=False)
    h = r["history"]
    schedule = Schedule.of_fit(params["inner_epochs"], params["batch_size"], [rows], lockstep=True)
    grad_bytes = 4 * r["params"]
    return dict(
        processes=world, rows=rows * world, rows_per_process=rows,
        seconds_per_iteration=statistics.median(x["seconds"] for x in h[1:]) if len(h) > 1 else h[0]["seconds"],
        steps_per_iteration=schedule.epochs * min(schedule.steps, schedule.budget or schedule.steps),
        gradient_bytes_per_step=grad_bytes if world > 1 else 0,
        # A ring all-reduce sends and receives 2 (P - 1) / P of the payload per rank.
        gradient_bytes_sent_per_step=int(2 * (world - 1) / world * grad_bytes),
        solver_collective_bytes_per_iteration=r["payload"] / len(h),
        iterations=len(h),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2500, help="rows per process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--outer-iter", type=int, default=6)
    parser.add_argument("--penalties", default=",".join(PENALTIES))
    parser.add_argument("--batch-size", type=int, default=128, help="rows per step on each process")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each rank runs (and as the results file's name says)
    results = []
    for penalty in args.penalties.split(","):
        # The residual norm as the score: the default score's once-per-fit quantiles (8 MiB, README)
        # would be spread over the iterations' collectives. One network, the default's narrow shape:
        # hidden="auto" trains a second, wide one on the MNIST rows' 784 features.
        params = dict(penalty=penalty, hidden=(128, 32), outer_iter=args.outer_iter, inner_epochs="auto",
                      batch_size=args.batch_size, outlier_score="residual")
        one = run(1, args.rows, params)
        many = run(args.processes, args.rows, params)
        efficiency = one["seconds_per_iteration"] / many["seconds_per_iteration"]
        results.append(dict(penalty=penalty, single=one, distributed=many, weak_scaling_efficiency=efficiency))
        print(f"{penalty:9s} 1 x {one['rows']} rows: {one['seconds_per_iteration']:.3f} s/iteration; "
              f"{args.processes} x {args.rows} rows: {many['seconds_per_iteration']:.3f} s/iteration "
              f"(efficiency {efficiency:.2f}); gradient all-reduce {many['gradient_bytes_per_step'] / 1e3:.1f} kB "
              f"x {many['steps_per_iteration']} steps, solver collectives "
              f"{many['solver_collective_bytes_per_iteration'] / 1e3:.1f} kB per iteration", flush=True)
    write_result({"machine": machine("cpu"), "threads_per_process": 1, "backend": "gloo",
                  "batch_size": args.batch_size, "results": results},
                 args.out, "distributed" if args.batch_size == 128 else f"distributed-batch{args.batch_size}", "cpu")


if __name__ == "__main__":
    main()
