"""Trainer benchmark: time per RDA outer iteration on Fashion-MNIST (60,000 x 784), l21_rows,
layers 784-400-200, with ``rda_ext.RobustAutoencoder`` against a straightforward PyTorch loop with a
DataLoader (how the paper's PyTorch ports train): same architecture (untied nn.Linear layers,
sigmoid), same optimizer, batch size, lam and epochs, in one run on one machine.

    python benchmarks/bench_trainer.py [--outer-iter 2] [--inner-epochs 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine, machine_slug
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import FASHION_MNIST_ROOT, load_fashion_mnist
from rda_ext.experiments.metrics import roc_auc

RESULTS = Path(__file__).resolve().parent / "results"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-iter", type=int, default=2)
    parser.add_argument("--inner-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=60000, help="first rows of the train split")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-root", default=FASHION_MNIST_ROOT, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    X_all, y_all = load_fashion_mnist(args.data_root, split="train")
    X, y = X_all[: args.rows], y_all[: args.rows]
    # Class 0 (T-shirt/top) stands in as the "outliers" only to check that both loops learn the
    # same thing; lam lets about 10% of the rows survive in the first iteration.
    is_out = (y == 0).astype(int)
    lam, lr, seed = 4.0, 1e-3, 0
    common = dict(outer_iter=args.outer_iter, inner_epochs=args.inner_epochs, batch_size=args.batch_size)
    print(f"Fashion-MNIST {X.shape[0]} x {X.shape[1]}, layers 784-400-200, {args.inner_epochs} inner epochs "
          f"per outer iteration, batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} threads")

    est = RobustAutoencoder(hidden=HIDDEN, penalty="l21_rows", lam=lam, lr=lr, tied_weights=False,
                            tol=1e-7, device=args.device, random_state=seed, **common).fit(X)
    ours = [h["seconds"] for h in est.history_]
    ours_auc = roc_auc(is_out, est.decision_scores_)
    print(f"rda_ext trainer : {statistics.median(ours):7.2f} s per outer iteration  {np.round(ours, 2)}")

    base, base_scores = dataloader_rda(X, lam, lr=lr, device=args.device, seed=seed, **common)
    base_auc = roc_auc(is_out, base_scores)
    print(f"DataLoader loop : {statistics.median(base):7.2f} s per outer iteration  {np.round(base, 2)}")
    speedup = statistics.median(base) / statistics.median(ours)
    print(f"speed-up {speedup:.2f}x (score AUROC of the class-0 rows: ours {ours_auc:.3f}, loop {base_auc:.3f})")

    result = {
        "machine": machine(args.device), "device": args.device, "rows": int(X.shape[0]), "cols": int(X.shape[1]),
        "hidden": HIDDEN, "lam": lam, "lr": lr, **common,
        "ours_seconds_per_outer": ours, "dataloader_seconds_per_outer": base,
        "median_ours": statistics.median(ours), "median_dataloader": statistics.median(base),
        "speedup": speedup, "auroc_class0_ours": ours_auc, "auroc_class0_dataloader": base_auc,
    }
    out = args.out or RESULTS / f"trainer-{machine_slug(args.device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
