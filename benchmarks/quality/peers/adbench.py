"""RDA's defaults against the detectors a PyOD user would pick, on any folder of ADBench-format
tables (npz files holding X and y, y = 1 for an anomaly and used only to evaluate): ours in
../shared/data/adbench, or a user's full ADBench. Label-free: every detector runs at its defaults
with contamination = the true rate (where it takes one; AUROC and AP do not depend on it). Two
settings: transductive (fit and score all rows, at most --max-rows of them) and ADBench's
inductive protocol (at most 10,000 rows of a table, fit on a stratified 70%, score the other 30%).
A larger table is cut to a stratified subsample, another for each seed, and in both settings
every detector sees the table min-max scaled by the rows it fits on, as ADBench scales them (in
raw units the widest column rules OCSVM's kernel and KNN's and LOF's distances). Every detector
runs on each seed's subsample or split (the seed also seeds RDA, IsolationForest and PyOD's
AutoEncoder).
Reports per table and detector the mean AUROC and AP over seeds and the fit time; per detector the
mean AUROC, mean AP and mean rank over the tables; and a Wilcoxon signed-rank test of RDA against
each peer over the tables (paired by table, on AUROC and on AP). PCA gets the numerical rank of the
standardised table as its number of components (PyOD's PCA divides by each component's variance,
which is 0 beyond the rank: constant columns gave inf scores).

    python benchmarks/quality/peers/adbench.py --quick   # 1 seed, the tables under 5,000 rows, 4 detectors
    python benchmarks/quality/peers/adbench.py           # 3 seeds, every table, every detector
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # quality/: common.py
from common import mean_sd, parser, plt, report_path, save_figure, save_json  # noqa: E402

from rda_ext import RobustAutoencoder  # noqa: E402
from rda_ext.experiments.metrics import average_precision, roc_auc  # noqa: E402

ADBENCH = Path(__file__).resolve().parents[4] / "shared" / "data" / "adbench"
DETECTORS = ("RDA", "IsolationForest", "ECOD", "COPOD", "KNN", "LOF", "PCA", "HBOS", "OCSVM", "AutoEncoder")
QUICK_DETECTORS = ("RDA", "IsolationForest", "ECOD", "PCA")
INDUCTIVE_ROWS = 10000  # ADBench's cap on a table's rows (its protocol subsamples larger ones)
SETTINGS = ("transductive", "inductive")


def numerical_rank(X: np.ndarray) -> int:
    """The rank of X standardised by column (constant columns dropped), at least 1."""
    sd = X.std(0)
    Z = (X[:, sd > 0] - X[:, sd > 0].mean(0)) / sd[sd > 0]
    return max(1, int(np.linalg.matrix_rank(Z))) if Z.size else 1


def make(name: str, rate: float, seed: int, X_fit: np.ndarray, device: str):
    """An unfitted detector with fit(X) and a score(X) method (higher = more anomalous)."""
    if name == "RDA":
        est = RobustAutoencoder(contamination=rate, random_state=seed, device=device)
        # The fitted rows' own scores (what fit_predict flags): a row among the local term's
        # neighbours leaves itself out there, and would count itself through decision_function.
        return est.fit, lambda X: est.decision_scores_ if X is X_fit else est.decision_function(X)
    if name == "IsolationForest":
        from sklearn.ensemble import IsolationForest

        est = IsolationForest(contamination=rate, random_state=seed, n_jobs=2)
        return est.fit, lambda X: -est.score_samples(X)
    # PyOD's detectors (an optional dependency: pip install .[pyod]).
    if name == "PCA":
        from pyod.models.pca import PCA

        est = PCA(contamination=rate, n_components=numerical_rank(X_fit))
    elif name == "AutoEncoder":
        from pyod.models.auto_encoder import AutoEncoder

        est = AutoEncoder(contamination=rate, random_state=seed, verbose=0, device=device if device != "auto" else None)
    else:
        module = {"ECOD": "ecod", "COPOD": "copod", "KNN": "knn", "LOF": "lof", "HBOS": "hbos", "OCSVM": "ocsvm"}[name]
        cls = getattr(__import__(f"pyod.models.{module}", fromlist=[name]), name)
        est = cls(contamination=rate)
    return est.fit, est.decision_function


def minmax(X_fit: np.ndarray, X_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices scaled column by column to [0, 1] over the rows of X_fit (a constant column
    to 0), as ADBench's data generator scales its tables before any detector sees them."""
    lo, hi = X_fit.min(0), X_fit.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (X_fit - lo) / span, (X_score - lo) / span


def split(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified random subset of the rows (indices, sorted): ``fraction`` of each class."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(y == c), max(1, round(fraction * (y == c).sum())), replace=False)
            for c in (0, 1)]
    return np.sort(np.concatenate(rows))


def tables(folder: Path, quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as f:
            X, y = f["X"].astype(np.float64), f["y"].astype(np.int64)
        if not (quick and len(X) > 5000):
            out[path.stem] = (X, y)
    return out


def cells(data: dict, setting: str, seeds, max_rows: int):
    """(table, seed, anomaly rate, X_fit, X_score, y_score) for each table and seed of ``setting``
    ("transductive": the rows scored are the rows fitted, at most ``max_rows``; "inductive": at
    most INDUCTIVE_ROWS rows, fit on a stratified 70%, score the rest), min-max scaled by X_fit."""
    for table, (X, y) in data.items():
        for seed in seeds:
            cap = max_rows if setting == "transductive" else INDUCTIVE_ROWS
            rows = split(y, cap / len(X), seed) if len(X) > cap else np.arange(len(X))
            Xs, ys = X[rows], y[rows]
            if setting == "transductive":
                X_fit = minmax(Xs, Xs[:0])[0]
                yield table, seed, float(y.mean()), X_fit, X_fit, ys  # one array: the rows scored are those fitted
            else:
                train = split(ys, 0.7, seed)
                test = np.setdiff1d(np.arange(len(Xs)), train)
                yield (table, seed, float(y.mean()), *minmax(Xs[train], Xs[test]), ys[test])


def run_one(name: str, X_fit, X_score, y_score, rate: float, seed: int, device: str) -> dict:
    t = time.perf_counter()
    fit, score = make(name, rate, seed, X_fit, device)
    fit(X_fit)
    s = np.asarray(score(X_score), dtype=np.float64)
    return dict(auroc=roc_auc(y_score, s), ap=average_precision(y_score, s), seconds=time.perf_counter() - t)


def ranks_of(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 for the highest value; ties share the mean of their ranks."""
    names = sorted(values, key=lambda n: -values[n])
    out, i = {}, 0
    while i < len(names):
        j = i
        while j + 1 < len(names) and values[names[j + 1]] == values[names[i]]:
            j += 1
        for n in names[i : j + 1]:
            out[n] = (i + j) / 2 + 1
        i = j + 1
    return out


def summarise(per_table: dict, detectors: tuple[str, ...]) -> dict:
    from scipy.stats import wilcoxon

    out = {}
    for metric in ("auroc", "ap"):
        ranks = [ranks_of({d: per_table[t][d][metric]["mean"] for d in detectors}) for t in per_table]
        for d in detectors:
            values = [per_table[t][d][metric]["mean"] for t in per_table]
            out.setdefault(d, {})[metric] = float(np.mean(values))
            out[d][f"rank_{metric}"] = float(np.mean([r[d] for r in ranks]))
            out[d]["seconds"] = float(np.mean([per_table[t][d]["seconds"]["mean"] for t in per_table]))
            if d != "RDA":
                ours = [per_table[t]["RDA"][metric]["mean"] for t in per_table]
                diff = np.subtract(ours, values)
                out[d][f"wilcoxon_p_{metric}"] = float(wilcoxon(ours, values).pvalue) if np.any(diff) else 1.0
                out[d][f"rda_wins_{metric}"] = int((diff > 0).sum())
    return out


def figure(result: dict, args) -> str:
    settings = list(result["settings"])
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        summary = result["settings"][setting]["summary"]
        names = sorted(summary, key=lambda d: -summary[d]["auroc"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [summary[d]["auroc"] for d in names], 0.4, label="mean AUROC")
        ax.bar(x + 0.2, [summary[d]["ap"] for d in names], 0.4, label="mean AP")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{setting}: {len(result['settings'][setting]['tables'])} tables")
        ax.legend(fontsize=8)
    return save_figure(fig, args, "adbench")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data-dir", type=Path, default=ADBENCH)
    p.add_argument("--max-rows", type=int, default=20000,
                   help="rows of a table in the transductive setting (a stratified subsample of a larger one, per seed)")
    p.add_argument("--detectors", default=None, help="comma-separated subset of " + ",".join(DETECTORS))
    args = p.parse_args()
    detectors = tuple(args.detectors.split(",")) if args.detectors else QUICK_DETECTORS if args.quick else DETECTORS
    if "RDA" not in detectors:
        raise SystemExit("adbench.py: RDA must be among the detectors (the tests compare it with the others)")
    seeds = range(1 if args.quick else 3)
    data = tables(args.data_dir, args.quick)
    result = dict(mode="quick" if args.quick else "full", data_dir=str(args.data_dir), seeds=list(seeds),
                  detectors=list(detectors), max_rows=args.max_rows, settings={})
    for setting in SETTINGS:
        runs = []
        for table, seed, rate, X_fit, X_score, y_score in cells(data, setting, seeds, args.max_rows):
            for name in detectors:
                r = run_one(name, X_fit, X_score, y_score, rate, seed, args.device)
                runs.append(dict(table=table, rows=int(len(X_fit)), cols=int(X_fit.shape[1]), seed=seed, detector=name,
                                 **r))
                print(f"{setting:12s} {table:22s} seed {seed} {name:15s} AUROC {r['auroc']:.3f} AP {r['ap']:.3f} "
                      f"{r['seconds']:6.1f} s", flush=True)
        per_table = {t: {d: {m: mean_sd([r[m] for r in runs if r["table"] == t and r["detector"] == d])
                             for m in ("auroc", "ap", "seconds")} for d in detectors} for t in data}
        result["settings"][setting] = dict(tables=per_table, summary=summarise(per_table, detectors), runs=runs)
        for d, s in sorted(result["settings"][setting]["summary"].items(), key=lambda kv: -kv[1]["auroc"]):
            print(f"{setting}: {d:15s} mean AUROC {s['auroc']:.3f} AP {s['ap']:.3f} rank {s['rank_auroc']:.2f} / "
                  f"{s['rank_ap']:.2f}" + (f", RDA vs it p = {s['wilcoxon_p_auroc']:.3f} / {s['wilcoxon_p_ap']:.3f}"
                                           if d != "RDA" else ""))
    result["figure"] = figure(result, args)
    path = report_path("adbench", args)
    save_json(path, result, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
