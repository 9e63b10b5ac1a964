"""Tables: the estimator's defaults on real tabular data that ships with scikit-learn, whose columns
are in different units (or, for the digits, pixel counts 0-16): breast cancer (benign nominal, 5%
malignant mixed in) and the 8x8 digits (each digit nominal in turn, 5% other digits). Label-free:
every method is told the true outlier rate, nothing is tuned. RDA with its defaults (preprocessing
"auto" maps these columns to [0, 1] by their range, the output is a sigmoid) against RDA with the
robust standardisation (linear output), RDA on the raw columns (linear output), the defaults
with the paper's score (the residual norm) and IsolationForest. F1 of the flagged rows and AUROC
of the scores; mean +- sample standard deviation over seeds (and digits).

    python benchmarks/quality/tabular.py --quick   # 1 seed, digits 0 and 1
    python benchmarks/quality/tabular.py           # 3 seeds, every digit
"""

from __future__ import annotations

import time

from common import mean_sd, parser, report_path, save_json
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import IsolationForest

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import make_outlier_set
from rda_ext.experiments.metrics import precision_recall_f1, roc_auc

RDA_VARIANTS = {
    "RDA defaults": {},
    "RDA defaults, residual score": dict(outlier_score="residual"),  # the paper's score, as before the sweep chose
    "RDA standardize": dict(preprocessing="standardize"),
    "RDA raw columns": dict(preprocessing="none", output_activation="linear"),
}
METHODS = (*RDA_VARIANTS, "IsolationForest")


def run_one(X, is_out, seed, device) -> dict:
    rate = float(is_out.mean())
    out = {}
    for name, extra in RDA_VARIANTS.items():
        t = time.perf_counter()
        est = RobustAutoencoder(contamination=rate, random_state=seed, device=device, **extra).fit(X)
        out[name] = dict(f1=precision_recall_f1(is_out, est.labels_)[2], auroc=roc_auc(is_out, est.decision_scores_),
                         seconds=time.perf_counter() - t)
    t = time.perf_counter()
    forest = IsolationForest(n_estimators=100, contamination=rate, random_state=seed).fit(X)
    out["IsolationForest"] = dict(f1=precision_recall_f1(is_out, forest.predict(X) == -1)[2],
                                  auroc=roc_auc(is_out, -forest.score_samples(X)), seconds=time.perf_counter() - t)
    return out


def summary(runs: list[dict]) -> dict:
    return {m: {k: mean_sd([r[m][k] for r in runs]) for k in ("f1", "auroc", "seconds")} for m in METHODS}


def main() -> None:
    args = parser(__doc__).parse_args()
    seeds = range(1 if args.quick else 3)
    digits_nominal = (0, 1) if args.quick else range(10)
    result = {"mode": "quick" if args.quick else "full", "seeds": list(seeds), "datasets": {}}

    cancer = load_breast_cancer()
    runs = []
    for seed in seeds:
        X, is_out, _ = make_outlier_set(cancer.data, cancer.target, 1, 0.05, seed)  # target 1 = benign
        runs.append(run_one(X, is_out, seed, args.device))
        print(f"breast cancer seed {seed} ({len(X)} rows): " + ", ".join(
            f"{m} F1 {r['f1']:.2f} AUROC {r['auroc']:.3f}" for m, r in runs[-1].items()), flush=True)
    result["datasets"]["breast cancer, benign + 5% malignant"] = dict(summary=summary(runs), runs=runs)

    digits = load_digits()
    runs = []
    for d in digits_nominal:
        for seed in seeds:
            X, is_out, _ = make_outlier_set(digits.data, digits.target, d, 0.05, seed)
            runs.append(dict(digit=d, seed=seed, **run_one(X, is_out, seed, args.device)))
            print(f"digits {d} seed {seed} ({len(X)} rows): " + ", ".join(
                f"{m} F1 {runs[-1][m]['f1']:.2f} AUROC {runs[-1][m]['auroc']:.3f}" for m in METHODS), flush=True)
    result["datasets"]["digits 8x8, each digit + 5% others"] = dict(digits=list(digits_nominal), summary=summary(runs),
                                                                   runs=runs)
    for name, data in result["datasets"].items():
        print(name + ": " + "; ".join(f"{m} F1 {s['f1']['mean']:.3f} +- {s['f1']['sd']:.3f}, AUROC "
                                      f"{s['auroc']['mean']:.3f} +- {s['auroc']['sd']:.3f}"
                                      for m, s in data["summary"].items()))
    path = report_path("tabular", args)
    save_json(path, result, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
