"""The cost of one training step of RDA's autoencoder against the data's width: milliseconds per
step and matrix-product GFLOP/s (also as a fraction of what a large GEMM reaches on the device in
the same run), for the default network (d-128-32, tied, sigmoid) at d = 3, 10, 39, 100 and 784,
through autograd (the reference: forward under autocast, backward, ``optimizer.step()``, what fit
ran before) and through the fused step (one ``autoencoder_grads`` call and the fused optimizer
kernel, ``rda_ext.solver.fused_step``), in one run on one machine. Then the other pass of an
outer iteration through the network, the reconstruction L = AE(L) of every row, timed at each
width for chunks of 65,536 rows (what fit used before) and of ``training.CHUNK_ROWS``.

    python benchmarks/bench_step.py [--widths 3,10,39,100,784] [--batch-sizes 128,1024]
                                    [--device cpu|cuda] [--precisions float32,bfloat16] [--steps 200]
                                    [--rows 200000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_trainer import gemm_rate
from machine import log_log, machine, save_figure, write_result
from torch.nn import functional as F

from rda_ext.solver import training
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.fused_step import FusedStep
from rda_ext.solver.training import autocast, make_optimizer, reconstruct_into

HIDDEN = (128, 32)


def step_flops(sizes: tuple[int, ...], batch: int) -> int:
    """Matrix-product FLOPs of a step: forward, the weight gradients and the input gradients of
    every layer but the first (2 per multiply-add each)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    layers += [(o, i) for i, o in reversed(layers)]
    macs = sum(i * o for i, o in layers)
    return batch * (6 * macs - 2 * sizes[0] * sizes[1])


def time_steps(step, batches: list[torch.Tensor], device: str, repeats: int = 5) -> float:
    """Median seconds per step over ``repeats`` runs of all ``batches`` (after one warm-up run)."""
    times = []
    for r in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches:
            step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append((time.perf_counter() - t) / len(batches))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="3,10,39,100,784")
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed run")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=200000, help="rows of the timed reconstruction")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    amps = {"float32": None, "bfloat16": torch.bfloat16}
    peaks = {p: gemm_rate(amps[p] or torch.float32, args.device, args.gemm_size) for p in precisions}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for precision in precisions:
        amp = amps[precision]
        for batch in batch_sizes:
            for d in widths:
                sizes = (d, *HIDDEN)
                X = torch.rand(batch * 8, d, generator=gen).to(args.device)
                batches = [X[torch.randint(len(X), (batch,), generator=gen).to(args.device)]
                           for _ in range(args.steps)]
                model = DeepAutoencoder(sizes, "sigmoid", "linear", True, gen).to(args.device)
                optimizer = make_optimizer(model, "adam", 1e-3)

                def autograd_step(b):
                    with autocast(b.device, amp):
                        loss = F.mse_loss(model(b), b)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

                fused = FusedStep(model, optimizer, amp)
                seconds = {"autograd": time_steps(autograd_step, batches, args.device),
                           "fused": time_steps(fused, batches, args.device)}
                flops = step_flops(sizes, batch)
                row = dict(precision=precision, batch=batch, d=d, flops=flops)
                for how, s in seconds.items():
                    row[how] = dict(ms=s * 1e3, gflops=flops / s / 1e9, fraction_of_gemm=flops / s / 1e9 / peaks[precision])
                row["speedup"] = seconds["autograd"] / seconds["fused"]
                rows.append(row)
                print(f"{precision:8s} batch {batch:5d} d {d:4d}: autograd {row['autograd']['ms']:7.3f} ms "
                      f"({row['autograd']['gflops']:6.1f} GFLOP/s), fused {row['fused']['ms']:7.3f} ms "
                      f"({row['fused']['gflops']:6.1f} GFLOP/s, {100 * row['fused']['fraction_of_gemm']:4.1f}% of the "
                      f"GEMM rate), {row['speedup']:.2f}x")
    reconstruction = []
    for d in widths:
        model = DeepAutoencoder((d, *HIDDEN), "sigmoid", "sigmoid", True, gen).to(args.device)
        L = torch.rand(args.rows, d, generator=gen).to(args.device)
        cell = dict(d=d, rows=args.rows)
        for chunk in (65536, training.CHUNK_ROWS):
            own, training.CHUNK_ROWS = training.CHUNK_ROWS, chunk
            cell[f"ms_chunks_of_{chunk}"] = time_steps(lambda x: reconstruct_into(model, x, x), [L], args.device) * 1e3
            training.CHUNK_ROWS = own
        reconstruction.append(cell)
        print(f"reconstruction of {args.rows} x {d}: " + ", ".join(f"{v:.1f} ms ({k.replace('_', ' ')[3:]} rows)"
                                                              for k, v in cell.items() if k.startswith("ms")))
    result = dict(machine=machine(args.device), device=args.device, hidden=HIDDEN, activation="sigmoid",
                  tied=True, steps=args.steps, gemm_size=args.gemm_size, gemm_gflops=peaks, rows=rows,
                  reconstruction=reconstruction)
    path = write_result(result, args.out, "step", args.device)
    plot(result, path.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ms, rate) = plt.subplots(1, 2, figsize=(11, 4))
    for (precision, batch) in sorted({(r["precision"], r["batch"]) for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["precision"] == precision and r["batch"] == batch]
        d = [r["d"] for r in rows]
        for how, style in (("autograd", "--"), ("fused", "-")):
            label = f"{how}, batch {batch}, {precision}"
            ms.plot(d, [r[how]["ms"] for r in rows], style, marker="o", label=label)
            rate.plot(d, [r[how]["gflops"] for r in rows], style, marker="o", label=label)
    for precision, peak in result["gemm_gflops"].items():
        rate.axhline(peak, color="grey", lw=0.8)
        rate.annotate(f"{result['gemm_size']}^3 GEMM, {precision}", (3, peak), va="bottom", fontsize=8)
    for ax, label in ((ms, "ms per step"), (rate, "matrix-product GFLOP/s")):
        log_log(ax, "columns d (network d-128-32)", label)
    ms.legend(fontsize=7)
    where = result["machine"]["cpu"] if result["device"] == "cpu" else result["machine"]["gpu"]
    save_figure(fig, path, f"One training step: {where}, {result['machine']['torch_threads']} threads")


if __name__ == "__main__":
    main()
