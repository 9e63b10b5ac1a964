"""Trainer benchmark: time per RDA outer iteration on Fashion-MNIST (60,000 x 784), l21_rows,
layers 784-400-200, with ``rda_ext.RobustAutoencoder`` against a straightforward PyTorch loop with a
DataLoader (how the paper's PyTorch ports train): same architecture (untied nn.Linear layers,
sigmoid), same optimizer, batch size, lam and epochs, in one run on one machine.

    python benchmarks/bench_trainer.py [--outer-iter 2] [--inner-epochs 5] [--device cpu|cuda]
                                       [--precisions float32,bfloat16]

Each precision of the estimator is timed (on CUDA once without and once with ``cuda_graphs``, the
training step captured in a CUDA graph), and the matrix-product FLOPs of an outer iteration are
counted (``flops_per_outer``) to give GFLOP/s, also as a fraction of what a large square GEMM of
the same dtype reaches on the device in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine, write_result
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import FASHION_MNIST_ROOT, load_fashion_mnist
from rda_ext.experiments.metrics import roc_auc
from rda_ext.validation import resolve_device, resolve_precision

HIDDEN = (400, 200)


def dataloader_rda(X: np.ndarray, lam: float, outer_iter: int, inner_epochs: int, batch_size: int,
                   lr: float, device: str, seed: int) -> tuple[list[float], np.ndarray]:
    """The loop of the PyTorch ports: numpy L and S, a DataLoader over L each outer iteration,
    the proximal step and the convergence norms in numpy. Returns seconds per outer iteration
    and the row scores ||X - L||."""
    torch.manual_seed(seed)
    d = X.shape[1]
    model = nn.Sequential(
        nn.Linear(d, HIDDEN[0]), nn.Sigmoid(), nn.Linear(HIDDEN[0], HIDDEN[1]), nn.Sigmoid(),
        nn.Linear(HIDDEN[1], HIDDEN[0]), nn.Sigmoid(), nn.Linear(HIDDEN[0], d), nn.Sigmoid(),
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    S = np.zeros_like(X)
    LS0 = np.zeros_like(X)
    x_norm = np.linalg.norm(X)
    seconds = []
    for _ in range(outer_iter):
        t0 = time.perf_counter()
        L = X - S
        loader = DataLoader(TensorDataset(torch.from_numpy(L)), batch_size=batch_size, shuffle=True)
        model.train()
        for _ in range(inner_epochs):
            for (batch,) in loader:
                batch = batch.to(device)
                opt.zero_grad()
                loss = F.mse_loss(model(batch), batch)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            L = model(torch.from_numpy(L).to(device)).cpu().numpy()
        R = X - L
        norms = np.linalg.norm(R, axis=1, keepdims=True)
        S = R * np.maximum(0, 1 - lam / np.maximum(norms, np.finfo(R.dtype).tiny))
        c1 = np.linalg.norm(X - L - S) / x_norm
        c2 = np.linalg.norm(LS0 - L - S) / x_norm
        LS0 = L + S
        seconds.append(time.perf_counter() - t0)
        if c1 < 1e-7 and c2 < 1e-7:
            break
    return seconds, np.linalg.norm(X - L, axis=1)


def flops_per_outer(n: int, sizes: tuple[int, ...], epochs: int) -> dict:
    """Matrix-product FLOPs of one outer iteration (elementwise work left out): per training row
    and epoch, 2 per multiply-add forward, 2 for the weight gradients and 2 for the input
    gradients, except the first layer's (its input needs none); then one forward pass over X."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    layers += [(o, i) for i, o in reversed(layers)]
    macs = sum(i * o for i, o in layers)
    train = n * epochs * (6 * macs - 2 * sizes[0] * sizes[1])
    return dict(train=train, reconstruct=2 * n * macs, total=train + 2 * n * macs)


def gemm_rate(dtype: torch.dtype, device: str, size: int, repeats: int = 7) -> float:
    """GFLOP/s of a square matrix product of side ``size`` in ``dtype``: the reference "peak" of the fractions
    below (what the device's GEMM reaches, measured in the same run, rather than a datasheet)."""
    a, b = (torch.rand(size, size, device=device).to(dtype) for _ in range(2))
    rates = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first is a warm-up
            rates.append(2 * size**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-iter", type=int, default=2)
    parser.add_argument("--inner-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=60000, help="first rows of the train split")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="comma-separated precisions of RobustAutoencoder to time (default float32,bfloat16)")
    parser.add_argument("--data-root", default=FASHION_MNIST_ROOT, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square GEMM timed as the peak")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    precisions = args.precisions.split(",")

    X_all, y_all = load_fashion_mnist(args.data_root, split="train")
    X, y = X_all[: args.rows], y_all[: args.rows]
    # Class 0 (T-shirt/top) stands in as the "outliers" only to check that the loops learn the
    # same thing; lam lets about 10% of the rows survive in the first iteration.
    is_out = (y == 0).astype(int)
    lam, lr, seed = 4.0, 1e-3, 0
    common = dict(outer_iter=args.outer_iter, inner_epochs=args.inner_epochs, batch_size=args.batch_size)
    flops = flops_per_outer(X.shape[0], (X.shape[1], *HIDDEN), args.inner_epochs)
    peaks = {name: gemm_rate(dtype, args.device, args.gemm_size) for name, dtype in (("float32", torch.float32),
                                                                                     ("bfloat16", torch.bfloat16))}
    print(f"Fashion-MNIST {X.shape[0]} x {X.shape[1]}, layers 784-400-200, {args.inner_epochs} inner epochs "
          f"per outer iteration, batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} threads; "
          f"{flops['total'] / 1e12:.3f} TFLOP per outer iteration; {args.gemm_size}^3 GEMM: "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))

    def report(seconds: list[float], dtype: str, scores: np.ndarray) -> dict:
        median = statistics.median(seconds)
        rate = flops["total"] / median / 1e9
        return dict(seconds_per_outer=seconds, median=median, gflops=rate, fraction_of_gemm=rate / peaks[dtype],
                    auroc_class0=roc_auc(is_out, scores))

    runs = {}
    for precision in precisions:
        amp = resolve_precision(precision, resolve_device(args.device), torch.float32)
        for graphs in (False, True) if args.device == "cuda" else (False,):
            est = RobustAutoencoder(hidden=HIDDEN, penalty="l21_rows", lam=lam, lr=lr, tied_weights=False, tol=1e-7,
                                    outlier_score="residual", device=args.device, random_state=seed,
                                    precision=precision, cuda_graphs=graphs, **common).fit(X)
            runs[f"rda_ext {precision}{' + CUDA graphs' if graphs else ''}"] = report(
                [h["seconds"] for h in est.history_], "bfloat16" if amp is not None else "float32",
                est.decision_scores_)
    base, base_scores = dataloader_rda(X, lam, lr=lr, device=args.device, seed=seed, **common)
    runs["DataLoader loop"] = report(base, "float32", base_scores)
    for name, r in runs.items():
        r["speedup_vs_dataloader"] = runs["DataLoader loop"]["median"] / r["median"]
        print(f"{name:36s}: {r['median']:7.2f} s per outer iteration {np.round(r['seconds_per_outer'], 2)}, "
              f"{r['gflops']:5.0f} GFLOP/s ({100 * r['fraction_of_gemm']:.0f}% of the GEMM rate), "
              f"{r['speedup_vs_dataloader']:.2f}x the DataLoader loop, AUROC of class 0 {r['auroc_class0']:.3f}")

    result = {
        "machine": machine(args.device), "device": args.device, "rows": int(X.shape[0]), "cols": int(X.shape[1]),
        "hidden": HIDDEN, "lam": lam, "lr": lr, **common, "flop_per_outer": flops,
        "gemm_size": args.gemm_size, "gemm_gflops": peaks, "runs": runs,
    }
    write_result(result, args.out, "trainer", args.device)


if __name__ == "__main__":
    main()
