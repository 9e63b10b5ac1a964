"""Lambda-path benchmark: ``lambda_path(parallel=True)`` (one network and one S per lam, all
networks trained in one batched step) against separate fits of the same lam values, in one run:
seconds, the per-network training throughput, and how closely each lam's flagged rows match its
separate fit's. Also the warm-start path (``lambda_path`` without parallel), which is shorter by
design. Data: the MNIST subset that ships with the package, the outlier set of the demo (digit 4
nominal, 5.2% other digits), layers 784-400-200 as in the outlier experiment.

    python benchmarks/bench_path.py [--lams 8] [--outer-iter 20] [--inner-epochs 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine, write_result

from rda_ext import RobustAutoencoder, lambda_path
from rda_ext.data.datasets import load_mnist_5k, make_outlier_set
from rda_ext.experiments.metrics import precision_recall_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lams", type=int, default=8, help="number of lam values")
    parser.add_argument("--outer-iter", type=int, default=20)
    parser.add_argument("--inner-epochs", type=int, default=10)
    parser.add_argument("--hidden", default="400,200")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    X, y = load_mnist_5k()
    X, is_out, _ = make_outlier_set(X, y, 4, 0.052, args.seed)
    # The paper's score: the labels of each lam are S's non-zero rows.
    params = dict(hidden=tuple(int(h) for h in args.hidden.split(",")), outer_iter=args.outer_iter,
                  inner_epochs=args.inner_epochs, batch_size=64, outlier_score="residual", device=args.device,
                  random_state=args.seed)
    # lam values around the label-free one (the quantile of the residual norms at the true rate).
    free = RobustAutoencoder(contamination=float(is_out.mean()), **params).fit(X)
    lams = [float(v) for v in free.lam_ * np.geomspace(0.6, 1.8, args.lams)]
    print(f"MNIST subset {X.shape[0]} x {X.shape[1]}, layers {params['hidden']}, {args.outer_iter} x "
          f"{args.inner_epochs} epochs, batch 64, {len(lams)} lam values, device {args.device}, "
          f"precision {free.precision}, {torch.get_num_threads()} threads", flush=True)

    t = time.perf_counter()
    separate = [RobustAutoencoder(lam=lam, **params).fit(X) for lam in sorted(lams, reverse=True)]
    t_separate = time.perf_counter() - t
    t = time.perf_counter()
    parallel = lambda_path(X, lams, parallel=True, **params)
    t_parallel = time.perf_counter() - t
    t = time.perf_counter()
    warm = lambda_path(X, lams, **params)
    t_warm = time.perf_counter() - t

    steps = args.outer_iter * args.inner_epochs * -(-X.shape[0] // params["batch_size"])
    rows = []
    for alone, par, w in zip(separate, parallel, warm):
        a, p = alone.labels_.astype(bool), par["labels"].astype(bool)
        rows.append(dict(
            lam=par["lam"], flagged_separate=int(a.sum()), flagged_parallel=int(p.sum()), flagged_warm=int(w["n_flagged"]),
            overlap=float((a & p).sum() / (a | p).sum()) if (a | p).any() else 1.0,  # Jaccard; 1 if both flag none
            f1_separate=precision_recall_f1(is_out, a)[2], f1_parallel=precision_recall_f1(is_out, p)[2],
            f1_warm=precision_recall_f1(is_out, w["labels"])[2],
        ))
        r = rows[-1]
        print(f"lam {r['lam']:7.3f}: flagged separate {r['flagged_separate']:3d}, parallel {r['flagged_parallel']:3d} "
              f"(overlap {r['overlap']:.2f}), warm path {r['flagged_warm']:3d}; F1 {r['f1_separate']:.3f} / "
              f"{r['f1_parallel']:.3f} / {r['f1_warm']:.3f}")
    result = {
        "machine": machine(args.device), "device": args.device, "rows": int(X.shape[0]), "cols": int(X.shape[1]),
        **{k: v for k, v in params.items() if k != "device"}, "precision": free.precision, "lams": lams,
        "seconds_separate": t_separate, "seconds_parallel": t_parallel, "seconds_warm_path": t_warm,
        "speedup_parallel_vs_separate": t_separate / t_parallel,
        "steps_per_second_per_network": {"separate": len(lams) * steps / t_separate,
                                         "parallel": len(lams) * steps / t_parallel},
        "per_lam": rows,
    }
    print(f"separate fits {t_separate:.1f} s, parallel path {t_parallel:.1f} s "
          f"({result['speedup_parallel_vs_separate']:.2f}x), warm-start path {t_warm:.1f} s; "
          f"mean overlap of the flagged rows {np.mean([r['overlap'] for r in rows]):.3f}")
    write_result(result, args.out, "path", args.device)


if __name__ == "__main__":
    main()
