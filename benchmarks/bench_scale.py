"""Fit time and AUROC against the number of rows: RDA's defaults, scikit-learn's IsolationForest
(n_jobs=2), PyOD's ECOD and PyOD's AutoEncoder, label-free (contamination = the true rate for every
detector that takes one), fit and score all rows, in one run on one machine. The data: ADBench
tables at full size and stratified subsamples of them (default http and cover, from
../shared/data/adbench or --data-dir), and a synthetic table drawn at each size (rows near a
3-dimensional curved manifold in 10 columns, 1% of them off it). Writes JSON, a log-log figure of
seconds against rows, and each method's slope (how its cost grows with n, least squares on the
log-log points of each data source).

    python benchmarks/bench_scale.py [--sizes 10000,30000,100000,300000,1000000] [--tables 16_http,10_cover]
                                     [--methods rda,iforest,ecod,pyod_ae] [--pyod-ae-rows 100000] [--repeats 1]
                                     [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from machine import log_log, machine, machine_slug, save_figure

from rda_ext import RobustAutoencoder
from rda_ext.experiments.metrics import roc_auc

ADBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "adbench"
RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(n: int, seed: int, d: int = 10, rate: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Rows tanh(z A) B + noise for z ~ N(0, I_3), and ``rate`` of them from z ~ N(0, 3^2 I_3)
    with 4 times the noise: a table an autoencoder can learn, with outliers in every column."""
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((3, 8)), rng.standard_normal((8, d))
    y = (rng.random(n) < rate).astype(np.int64)
    z = rng.standard_normal((n, 3)) * np.where(y[:, None] == 1, 3.0, 1.0)
    X = np.tanh(z @ A) @ B + rng.standard_normal((n, d)) * np.where(y[:, None] == 1, 0.4, 0.1)
    return X.astype(np.float32), y


def stratified(X: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows of (X, y) with y's rate kept (at least one anomaly)."""
    if n >= len(X):
        return X, y
    rng = np.random.default_rng(seed)
    out, inl = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = max(1, round(n * len(out) / len(X)))
    rows = np.sort(np.concatenate([rng.choice(out, k, replace=False), rng.choice(inl, n - k, replace=False)]))
    return X[rows], y[rows]


def detectors(rate: float, seed: int) -> dict:
    """name -> fit(X) returning the scores of X's rows (higher = more anomalous)."""
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.ecod import ECOD
    from sklearn.ensemble import IsolationForest

    return {
        "rda": lambda X: RobustAutoencoder(contamination=rate, random_state=seed).fit(X).decision_scores_,
        "iforest": lambda X: -IsolationForest(contamination=rate, random_state=seed, n_jobs=2).fit(X).score_samples(X),
        "ecod": lambda X: ECOD(contamination=rate).fit(X).decision_scores_,
        "pyod_ae": lambda X: AutoEncoder(contamination=rate, random_state=seed, verbose=0,
                                         device="cpu").fit(X).decision_scores_,
    }


def slope(points: list[tuple[int, float]]) -> float | None:
    """The least-squares slope of log(seconds) against log(rows)."""
    if len(points) < 2:
        return None
    n, s = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(n, s, 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,30000,100000,300000,1000000")
    p.add_argument("--tables", default="16_http,10_cover", help="ADBench tables (npz names without .npz)")
    p.add_argument("--data-dir", type=Path, default=ADBENCH)
    p.add_argument("--methods", default="rda,iforest,ecod,pyod_ae")
    p.add_argument("--pyod-ae-rows", type=int, default=100000,
                   help="PyOD's AutoEncoder only up to this many rows (10 epochs of batch 32: minutes beyond)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="time every fit this many times, the methods in turn, and keep the median (this VM's "
                        "speed drifts between minutes)")
    p.add_argument("--quick", action="store_true", help="sizes 2000 and 6000, the synthetic table only")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    sizes = [2000, 6000] if args.quick else [int(float(s)) for s in args.sizes.split(",")]
    tables = [] if args.quick else [t for t in args.tables.split(",") if t]
    methods = args.methods.split(",")

    sources = {"synthetic": [(n, *synthetic(n, args.seed)) for n in sizes]}
    for table in tables:
        with np.load(args.data_dir / f"{table}.npz") as f:
            X, y = f["X"].astype(np.float32), f["y"].astype(np.int64)
        sources[table] = [(n, *stratified(X, y, n, args.seed)) for n in sizes if n < len(X)] + [(len(X), X, y)]

    # One small fit of each first: the first call of a library pays its one-time set-up.
    warm_X, warm_y = synthetic(500, args.seed)
    for name, fit in detectors(float(warm_y.mean()), args.seed).items():
        if name in methods:
            fit(warm_X)
    runs = []
    for source, data in sources.items():
        for n, X, y in data:
            rate = float(y.mean())
            chosen = {name: fit for name, fit in detectors(rate, args.seed).items()
                      if name in methods and not (name == "pyod_ae" and n > args.pyod_ae_rows)}
            times: dict[str, list[float]] = {name: [] for name in chosen}
            aurocs: dict[str, float] = {}
            for _ in range(args.repeats):  # the methods in turn, so that a slow minute hits them alike
                for name, fit in chosen.items():
                    t = time.perf_counter()
                    scores = fit(X)
                    times[name].append(time.perf_counter() - t)
                    aurocs[name] = roc_auc(y, scores)  # the same every repeat: the fits are seeded
            for name, seconds in times.items():
                runs.append(dict(source=source, rows=int(n), cols=int(X.shape[1]), anomalies=int(y.sum()),
                                 method=name, seconds=float(np.median(seconds)), repeats=seconds, auroc=aurocs[name]))
                print(f"{source:10s} {n:8d} x {X.shape[1]:3d} {name:8s} {runs[-1]['seconds']:8.2f} s  "
                      f"AUROC {aurocs[name]:.3f}", flush=True)
    slopes = {source: {m: slope([(r["rows"], r["seconds"]) for r in runs if r["source"] == source and r["method"] == m])
                       for m in methods} for source in sources}
    ratios = [dict(source=r["source"], rows=r["rows"], rda_over_iforest=r["seconds"] / f["seconds"],
                   auroc_minus_iforest=r["auroc"] - f["auroc"])
              for r in runs if r["method"] == "rda"
              for f in runs if f["method"] == "iforest" and (f["source"], f["rows"]) == (r["source"], r["rows"])]
    result = dict(machine=machine("cpu"), seed=args.seed, sizes=sizes, methods=methods, repeats=args.repeats,
                  runs=runs, slopes=slopes,
                  rda_against_iforest=ratios)
    out = args.out or RESULTS / f"scale-{machine_slug('cpu')}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(result["slopes"])
    fig, axes = plt.subplots(1, len(sources), figsize=(4.5 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for method in result["methods"]:
            pts = [(r["rows"], r["seconds"]) for r in result["runs"] if r["source"] == source and r["method"] == method]
            if pts:
                s = result["slopes"][source][method]
                ax.plot(*zip(*pts), marker="o", label=f"{method} (slope {s:.2f})" if s is not None else method)
        log_log(ax, "rows", "seconds (fit and score)")
        ax.set_title(source)
        ax.legend(fontsize=8)
    save_figure(fig, path, f"Fit time against rows: {result['machine']['cpu']}, "
                           f"{result['machine']['torch_threads']} threads")


if __name__ == "__main__":
    main()
