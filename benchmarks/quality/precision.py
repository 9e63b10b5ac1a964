"""bfloat16 against float32: does computing the autoencoder under bfloat16 autocast keep the
quality? The label-free outlier experiment of outliers.py (MNIST subset, digit 4 nominal, 5.2%
others, l21_rows with contamination = the true rate) and the denoising experiment of denoising.py
(l1 RDA on images with k corrupted pixels: random-forest error of the hidden features, and the
error of L against the clean images), each fitted in both precisions with the same seeds.

    python benchmarks/quality/precision.py --quick   # 1 seed, k = 100
    python benchmarks/quality/precision.py           # 3 seeds, k = 100, 200, 300
"""

from __future__ import annotations

import time

import numpy as np
from common import mean_sd, parser, report_path, save_json
from denoising import HIDDEN as DENOISING_HIDDEN
from denoising import forest_error
from outliers import EPOCHS_SMALL
from outliers import HIDDEN as OUTLIER_HIDDEN

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import corrupt_pixels, load_mnist_5k, make_outlier_set
from rda_ext.experiments.metrics import precision_recall_f1, roc_auc

PRECISIONS = ("float32", "bfloat16")
DENOISING_LAM = 0.2


def outlier_cell(X, y, seed, precision, device) -> dict:
    Xm, is_out, _ = make_outlier_set(X, y, 4, 0.052, seed)
    t = time.perf_counter()
    est = RobustAutoencoder(penalty="l21_rows", contamination=float(is_out.mean()), hidden=OUTLIER_HIDDEN,
                            outer_iter=EPOCHS_SMALL[0], inner_epochs=EPOCHS_SMALL[1], batch_size=64,
                            outlier_score="residual", device=device, random_state=seed, precision=precision).fit(Xm)
    return dict(seed=seed, precision=precision, f1=precision_recall_f1(is_out, est.labels_)[2],
                auroc=roc_auc(is_out, est.decision_scores_), seconds=time.perf_counter() - t)


def denoising_cell(X, y, k, seed, precision, device) -> dict:
    Xc = corrupt_pixels(X, k, seed)
    t = time.perf_counter()
    est = RobustAutoencoder(penalty="l1", lam=DENOISING_LAM, hidden=DENOISING_HIDDEN, outer_iter=10, inner_epochs=5,
                            batch_size=64, device=device, random_state=seed, precision=precision).fit(Xc)
    seconds = time.perf_counter() - t
    return dict(seed=seed, k=k, precision=precision, forest_error=forest_error(est.transform(Xc), y, seed),
                l_mae=float(np.abs(est.L_ - X).mean()), seconds=seconds)


def spread(cells, key) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) over seeds, per precision."""
    return {p: mean_sd([c[key] for c in cells if c["precision"] == p]) for p in PRECISIONS}


def main() -> None:
    cli = parser(__doc__)
    args = cli.parse_args()
    seeds = range(1 if args.quick else 3)
    ks = (100,) if args.quick else (100, 200, 300)
    X, y = load_mnist_5k()

    outliers = []
    for seed in seeds:
        for precision in PRECISIONS:
            outliers.append(outlier_cell(X, y, seed, precision, args.device))
            c = outliers[-1]
            print(f"outliers seed {seed} {precision:8s}: F1 {c['f1']:.3f} AUROC {c['auroc']:.3f} ({c['seconds']:.0f} s)",
                  flush=True)
    denoising = []
    for k in ks:
        for seed in seeds:
            for precision in PRECISIONS:
                denoising.append(denoising_cell(X, y, k, seed, precision, args.device))
                c = denoising[-1]
                print(f"denoising k {k} seed {seed} {precision:8s}: forest error {c['forest_error']:.3f}, "
                      f"MAE of L {c['l_mae']:.4f} ({c['seconds']:.0f} s)", flush=True)

    summary = {"outliers mnist5k digit 4, 5.2%": {key: spread(outliers, key) for key in ("f1", "auroc", "seconds")}}
    for k in ks:
        cells = [c for c in denoising if c["k"] == k]
        summary[f"denoising k={k}, lam={DENOISING_LAM}"] = {key: spread(cells, key)
                                                            for key in ("forest_error", "l_mae", "seconds")}
    for name, table in summary.items():
        print(name + ": " + "; ".join(f"{key} " + ", ".join(f"{p} {v['mean']:.4f} +- {v['sd']:.4f}" for p, v in s.items())
                                      for key, s in table.items()))
    path = report_path("precision", args)
    save_json(path, dict(mode="quick" if args.quick else "full", seeds=list(seeds), ks=list(ks),
                         denoising_lam=DENOISING_LAM, summary=summary, outliers=outliers, denoising=denoising),
              args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
