"""Corrupted features, KDD'17 section 3.2: a few pixels (columns of X) are broken across many
images; l21_cols RDA should put exactly those columns in S and repair them in L.

Two kinds of broken pixel, planted in the MNIST subset: "stuck" (set to 1 in a random 40% of the
images) and "noisy" (a uniform random value in a random 60% of the images). A column set to one
constant in every image is no anomaly for an autoencoder (a bias learns it), so it is not used.
Reported: precision and recall of the detected columns (the non-zero columns of S), label-free
(contamination = planted columns / 784) and at the best lam of a grid, and the mean absolute
error against the clean images on the broken entries, for X and for L.

    python benchmarks/quality/stuck_pixels.py --quick   # 1 seed, 2,000 images
    python benchmarks/quality/stuck_pixels.py           # 3 seeds, all 5,000 images
"""

from __future__ import annotations

import numpy as np
from common import parser, plt, report_path, save_figure, save_json

from rda_ext import RobustAutoencoder, lambda_path
from rda_ext.data.datasets import load_mnist_5k
from rda_ext.experiments.metrics import precision_recall_f1

N_STUCK, N_NOISY = 3, 3


def plant(X: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (corrupted X, the broken columns, a mask of the corrupted entries). The columns are
    drawn among the pixels that carry ink in at least a fifth of the images, so that they matter."""
    rng = np.random.default_rng(seed)
    inked = np.flatnonzero((X > 0.5).mean(0) > 0.2)
    cols = rng.choice(inked, N_STUCK + N_NOISY, replace=False)
    Xc = X.copy()
    mask = np.zeros(X.shape, bool)
    for j, col in enumerate(cols):
        rows = rng.random(len(X)) < (0.4 if j < N_STUCK else 0.6)
        Xc[rows, col] = 1.0 if j < N_STUCK else rng.random(rows.sum())
        mask[rows, col] = True
    return Xc, np.sort(cols), mask


def column_report(truth: np.ndarray, found: np.ndarray) -> dict:
    """Precision and recall of the detected columns ``found`` against the planted ``truth``."""
    p, r, f1 = precision_recall_f1(truth, found)
    return dict(precision=p, recall=r, f1=f1, n_detected=int(found.sum()))


def main() -> None:
    cli = parser(__doc__)
    args = cli.parse_args()
    seeds, n_rows = (range(1), 2000) if args.quick else (range(3), 5000)
    X_all, _ = load_mnist_5k()
    train = dict(hidden=(400, 200), outer_iter=20, inner_epochs=5, batch_size=64, device=args.device)
    runs = []
    for seed in seeds:
        X = X_all[np.random.default_rng(seed).permutation(len(X_all))[:n_rows]]
        Xc, cols, mask = plant(X, seed)
        rate = len(cols) / X.shape[1]
        est = RobustAutoencoder(penalty="l21_cols", contamination=rate, random_state=seed, **train).fit(Xc)
        truth = np.isin(np.arange(X.shape[1]), cols)
        found = np.abs(est.S_).sum(0) > 0
        free = column_report(truth, found)
        path = lambda_path(Xc, est.lam_ * np.geomspace(0.5, 2.0, 9), penalty="l21_cols", random_state=seed, **train)
        best = max(((r["lam"], column_report(truth, r["nonzero_groups"])) for r in path), key=lambda t: t[1]["f1"])
        run = dict(
            seed=seed, planted=cols.tolist(), detected=np.flatnonzero(found).tolist(),
            label_free=free, lam_label_free=est.lam_, best_lam=best[0],
            best=best[1],
            mae_broken_X=float(np.abs(Xc - X)[mask].mean()), mae_broken_L=float(np.abs(est.L_ - X)[mask].mean()),
            mae_clean_L=float(np.abs(est.L_ - X)[~mask].mean()),
        )
        runs.append(run)
        print(f"seed {seed}: planted {run['planted']} detected {run['detected']}; label-free P/R "
              f"{free['precision']:.2f}/{free['recall']:.2f}; MAE on broken entries X {run['mae_broken_X']:.3f} "
              f"-> L {run['mae_broken_L']:.3f}", flush=True)
        if seed == 0:
            figure(X, Xc, est, cols, args)
    path = report_path("stuck-pixels", args)
    save_json(path, dict(mode="quick" if args.quick else "full", rows=n_rows, runs=runs, **{k: v for k, v in train.items()
                                                                                       if k != "device"}), args.device)
    print(f"wrote {path}")


def figure(X, Xc, est, cols, args) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    norms = np.linalg.norm(est.S_, axis=0).reshape(28, 28)
    axes[0].imshow(norms, cmap="magma")
    r, c = np.divmod(cols, 28)
    axes[0].scatter(c, r, s=60, facecolors="none", edgecolors="cyan")
    axes[0].set_title("column norms of S (o: planted)", fontsize=9)
    i = int(np.argmax(np.abs(Xc - X).sum(1)))
    for ax, img, title in ((axes[1], X[i], "clean"), (axes[2], Xc[i], "X (broken pixels)"), (axes[3], est.L_[i], "L")):
        ax.imshow(img.reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    save_figure(fig, args, "stuck-pixels")


if __name__ == "__main__":
    main()
