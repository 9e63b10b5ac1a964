"""Denoising without clean data, KDD'17 section 5.2: corrupt the MNIST subset with k pixels per
image (the paper's noise), train a plain autoencoder and l1 RDA of the same shape (784-196-49) on
the corrupted images only, and judge the hidden features by a random forest (50 trees, 2/3
train, 1/3 test) predicting the digit. Also the denoising itself: the error of L (RDA) and of the
autoencoder's output against the clean images.

The plain autoencoder is RobustAutoencoder(penalty="l1", lam=1): with a sigmoid output |X - L| < 1,
so S stays 0 and the training is that of RDA without the sparse part, step for step.

    python benchmarks/quality/denoising.py --quick   # k in 0, 50, 100, 200, 300; 4 lam; 1 seed
    python benchmarks/quality/denoising.py           # k from 0 to 350 by 25; 6 lam; 3 seeds (--seeds N)

--resume FILE takes the cells of an earlier run of the same grid and training from FILE (e.g. a
one-seed run when three are asked for) and fits only the missing ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import parser, plt, report_path, save_figure, save_json
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import corrupt_pixels, load_mnist_5k

HIDDEN = (196, 49)


def forest_error(features: np.ndarray, y: np.ndarray, seed: int) -> float:
    Xtr, Xte, ytr, yte = train_test_split(features, y, test_size=1 / 3, random_state=seed, stratify=y)
    forest = RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=-1).fit(Xtr, ytr)
    return float(1 - forest.score(Xte, yte))


def earlier_cells(path: Path | None, grid: dict) -> dict:
    """Cells of an earlier run keyed by (seed, k); refuses a file whose grid or training differ."""
    if path is None:
        return {}
    old = json.loads(path.read_text())
    differ = [key for key, value in json.loads(json.dumps(grid)).items() if old.get(key) != value]
    if differ:
        raise SystemExit(f"--resume {path}: its {', '.join(differ)} differ from this run's")
    by_group = {}
    for cell in old["cells"]:
        by_group.setdefault((cell["seed"], cell["k"]), []).append(cell)
    return {group: cells for group, cells in by_group.items() if len(cells) == len(grid["lams"])}


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1 quick, 3 full)")
    cli.add_argument("--resume", type=Path, default=None, help="JSON of an earlier run whose cells are reused")
    args = cli.parse_args()
    if args.quick:
        ks, lams, seeds = (0, 50, 100, 200, 300), (0.1, 0.2, 0.3, 0.5), range(args.seeds or 1)
    else:
        ks, lams, seeds = tuple(range(0, 351, 25)), (0.05, 0.1, 0.2, 0.3, 0.4, 0.5), range(args.seeds or 3)
    train = dict(hidden=HIDDEN, outer_iter=10, inner_epochs=5, batch_size=64, device=args.device)
    grid = dict(ks=list(ks), lams=list(lams), **{k: v for k, v in train.items() if k != "device"})
    done = earlier_cells(args.resume, grid)
    X, y = load_mnist_5k()
    shown = [int(np.flatnonzero(y == digit)[0]) for digit in range(6)]
    cells = []
    examples = {}
    for seed in seeds:
        for k in ks:
            # The example images come from seed 0, k 100: that group is always fitted.
            if (seed, k) in done and (seed, k) != (0, 100):
                cells += done[seed, k]
                continue
            Xc = corrupt_pixels(X, k, seed)
            ae = RobustAutoencoder(penalty="l1", lam=1.0, random_state=seed, **train).fit(Xc)
            ae_err = forest_error(ae.transform(Xc), y, seed)
            ae_mae = float(np.abs(ae.reconstruct(Xc) - X).mean())
            for lam in lams:
                rda = RobustAutoencoder(penalty="l1", lam=lam, random_state=seed, **train).fit(Xc)
                cell = dict(seed=seed, k=k, lam=lam, ae_error=ae_err, rda_error=forest_error(rda.transform(Xc), y, seed),
                            ae_mae=ae_mae, rda_mae=float(np.abs(rda.L_ - X).mean()), noisy_mae=float(np.abs(Xc - X).mean()),
                            s_nonzero=float((rda.S_ != 0).mean()))
                cells.append(cell)
                print(f"seed {seed} k {k:3d} lam {lam:.2f}: forest error AE {ae_err:.3f} RDA {cell['rda_error']:.3f}; "
                      f"MAE to clean: noisy {cell['noisy_mae']:.3f} AE {ae_mae:.3f} RDA L {cell['rda_mae']:.3f}", flush=True)
                if seed == 0 and k == 100 and lam == lams[len(lams) // 2]:
                    examples = dict(clean=X[shown], noisy=Xc[shown], rda=rda.L_[shown], ae=ae.reconstruct(Xc[shown]),
                                    lam=lam)
    figures(cells, ks, lams, examples, args)
    path = report_path("denoising", args)
    save_json(path, dict(mode="quick" if args.quick else "full", seeds=list(seeds), **grid, cells=cells), args.device)
    print(f"wrote {path}")


def mean_grid(cells, ks, lams, key) -> np.ndarray:
    return np.array([[np.mean([c[key] for c in cells if c["k"] == k and c["lam"] == lam]) for lam in lams] for k in ks])


def figures(cells, ks, lams, examples, args) -> None:
    diff = mean_grid(cells, ks, lams, "ae_error") - mean_grid(cells, ks, lams, "rda_error")
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    bound = np.abs(diff).max() or 1.0
    im = ax.imshow(diff, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(lams)), [f"{v:g}" for v in lams]), ax.set_yticks(range(len(ks)), ks)
    ax.set_xlabel("lam"), ax.set_ylabel("corrupted pixels per image k")
    for (i, j), v in np.ndenumerate(diff):
        ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, label="forest error: AE - RDA (blue: RDA better)")
    ax.set_title("hidden features, random forest (Figure 2)", fontsize=9)
    save_figure(fig, args, "denoising-heatmap")

    if examples:
        fig, axes = plt.subplots(4, 6, figsize=(6, 4.4))
        for row, (key, title) in enumerate((("clean", "original"), ("noisy", "corrupted, k=100"),
                                            ("rda", f"RDA L, lam {examples['lam']:g}"), ("ae", "AE output"))):
            for col in range(6):
                ax = axes[row, col]
                ax.imshow(examples[key][col].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
            axes[row, 0].set_ylabel(title, fontsize=7)
        save_figure(fig, args, "denoising-examples")


if __name__ == "__main__":
    main()
