"""Other ways to build RDA's score from the same fit: what shrinking the code covariance, leaving
out the residual term, weighing the three terms apart, adding per-feature tails or weighing the
network's terms by the variance it explains would be worth, on ADBench's tables (both settings of
adbench.py), bench_scale.py's synthetic table (one the network compresses) and the label-free
sweep's image instances. Each instance is fitted once with the defaults; every variant is computed
from that fit's terms, so that they differ by the score alone.

Variants (higher = more anomalous; "spread" is scoring.spread over the training rows, as the default
divides its two parts by it):
- default: "residual+code+knn", as the fit scores (``decision_scores_``, else ``decision_function``);
- shrunk code: the default with the code's covariance shrunk to a multiple of the identity
  (Ledoit-Wolf, scikit-learn) instead of its pseudo-inverse: a covariance of k code units from few
  reference rows (196 units from about 500 rows on the digits) is poorly determined;
- code + local: the code term and the local term, without the residual term;
- shrunk code + local: both changes;
- three terms apart: the residual, code and local terms each divided by its own spread and added;
- default + tails of X, default + tails of the residual: the default plus a term of two-sided
  per-feature tails (after ECOD, Li et al. 2022, which sums each side's tails over the columns and
  keeps the largest of its sums; here each column keeps its smaller tail), with the reference rows
  as the sample, divided by its spread: the sum over columns of -log of the smaller of a value's two
  tail fractions among the reference rows, of the row (X) or of its residual (X - L, as the fit
  reconstructs it). It weighs a value far out on one feature, which IsolationForest and HBOS find
  and a distance over all columns can miss;
- weighed by R^2: the default with its "residual+code" part weighed by the share of the reference
  rows' variance that the reconstruction explains (R^2 = 1 - sum |x - L|^2 / sum |x - mean|^2 over
  them, 0 where that is negative or the rows do not vary): the network's terms count as far as it
  has learnt the rows, and where it has learnt nothing the score is the local term alone.

    python benchmarks/quality/peers/score_variants.py --quick
    python benchmarks/quality/peers/score_variants.py --peers benchmarks/results/adbench-amd-epyc-2t.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # quality/: common.py, sweep.py
from adbench import ADBENCH, SETTINGS, cells, tables  # noqa: E402
from common import mean_sd, parser, report_path, save_json  # noqa: E402
from score_terms import code_term, ranks_among_peers, read_peers, residual_rows, terms  # noqa: E402
from sweep import instances  # noqa: E402

from rda_ext import RobustAutoencoder  # noqa: E402
from rda_ext.estimator.scoring import spread  # noqa: E402
from rda_ext.experiments.metrics import average_precision, precision_recall_f1, roc_auc  # noqa: E402
from rda_ext.solver.collectives import SINGLE_PROCESS  # noqa: E402

VARIANTS = ("default", "shrunk code", "code + local", "shrunk code + local", "three terms apart",
            "default + tails of X", "default + tails of the residual", "weighed by R^2")
IMAGES = ("mnist", "fashion500", "fashion")
IMAGE_NAMES = {"mnist": "MNIST subset", "fashion500": "fashion500", "fashion": "Fashion-MNIST"}


def spread_of(values: np.ndarray) -> float:
    return float(spread(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)), SINGLE_PROCESS))


def tails(reference: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The per-feature tail term of each of ``rows``: the sum over columns of -log of the smaller of
    the fractions of ``reference`` rows at or below and at or above the value (each counted with one
    more, so that a value beyond every reference row scores log(m + 1), not infinity)."""
    m = reference.shape[0]
    out = np.zeros(rows.shape[0])
    for column, values in zip(np.sort(reference, axis=0).T, rows.T):
        below = np.searchsorted(column, values, side="right") + 1
        above = m - np.searchsorted(column, values, side="left") + 1
        out -= np.log(np.minimum(below, above) / (m + 1))
    return out


def variants(est: RobustAutoencoder, X_fit: np.ndarray, X_score: np.ndarray) -> dict[str, np.ndarray]:
    """Each variant's scores of the rows X_score (X_fit itself: the training rows) from ``est``,
    fitted on X_fit with the defaults (inputs in [0, 1], so the network sees X as given)."""
    same = X_score is X_fit
    spreads = est.term_spread_
    residuals_fit = residual_rows(est, X_fit, fitted=True)
    residuals = residuals_fit if same else residual_rows(est, X_score)
    residual_fit, code_fit = terms(est, X_fit, residuals=residuals_fit)
    local_fit = (est.decision_scores_ - (residual_fit + code_fit) / spreads[0]) * spreads[1]
    if same:
        residual, code, local, default = residual_fit, code_fit, local_fit, est.decision_scores_
    else:
        default = est.decision_function(X_score)
        residual, code = terms(est, X_score, residuals=residuals)
        local = (default - (residual + code) / spreads[0]) * spreads[1]
    # The reference rows, as the fit chose them: residual norm at most its (1 - contamination) quantile.
    norms = np.linalg.norm(residuals_fit, axis=1)
    reference = norms <= np.quantile(norms, 1 - est.contamination)
    codes = est.transform(X_fit).astype(np.float64)
    if not np.allclose(codes[reference].mean(0), est.code_center_, rtol=1e-5, atol=1e-7):
        raise RuntimeError("score_variants.py: the reference rows are not those of the fit")
    precision = np.linalg.inv(ledoit_wolf(codes[reference] - est.code_center_, assume_centered=True)[0])
    shrunk_fit = code_term(codes, est.code_center_, precision)
    shrunk = shrunk_fit if same else code_term(est.transform(X_score).astype(np.float64), est.code_center_, precision)

    def with_local(part_fit: np.ndarray, part: np.ndarray) -> np.ndarray:
        return part / spread_of(part_fit) + local / spreads[1]

    def with_tails(rows_fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
        both = tails(rows_fit[reference], rows_fit if same else np.vstack([rows_fit, rows]))
        fitted = both[: len(rows_fit)]
        return default + (fitted if same else both[len(rows_fit):]) / spread_of(fitted)

    kept = X_fit[reference]
    variance = np.square(kept - kept.mean(0)).sum()
    explained = max(1 - np.square(residuals_fit[reference]).sum() / variance, 0.0) if variance > 0 else 0.0

    return {"default": default,
            "shrunk code": with_local(residual_fit + shrunk_fit, residual + shrunk),
            "code + local": with_local(code_fit, code),
            "shrunk code + local": with_local(shrunk_fit, shrunk),
            "three terms apart": residual / spread_of(residual_fit) + with_local(code_fit, code),
            "default + tails of X": with_tails(X_fit, X_score),
            "default + tails of the residual": with_tails(residuals_fit, residuals),
            "weighed by R^2": explained * (residual + code) / spreads[0] + local / spreads[1]}


def fit_default(X: np.ndarray, rate: float, seed: int, device: str) -> RobustAutoencoder:
    if X.min() < 0 or X.max() > 1:
        raise ValueError("score_variants.py: the rows fitted must lie in [0, 1]")
    return RobustAutoencoder(contamination=rate, random_state=seed, device=device).fit(X)


def tables_run(data: dict, seeds, max_rows: int, peers: dict | None, device: str) -> dict:
    """AUROC and AP of each variant per table and setting (mean over seeds), their means, and, with
    ``peers`` (adbench.py's JSON), each variant's mean rank among its detectors in RDA's place."""
    out = {}
    for setting in SETTINGS:
        runs = []
        for table, seed, rate, X_fit, X_score, y_score in cells(data, setting, seeds, max_rows):
            t = time.perf_counter()
            scores = variants(fit_default(X_fit, rate, seed, device), X_fit, X_score)
            runs += [dict(table=table, seed=seed, variant=v, auroc=roc_auc(y_score, s),
                          ap=average_precision(y_score, s)) for v, s in scores.items()]
            print(f"{setting:12s} {table:22s} seed {seed} " + " ".join(
                f"{r['variant']} {r['auroc']:.3f}/{r['ap']:.3f}" for r in runs[-len(scores):]) +
                f" {time.perf_counter() - t:.1f} s", flush=True)
        per_table = {t: {v: {m: mean_sd([r[m] for r in runs if r["table"] == t and r["variant"] == v])
                             for m in ("auroc", "ap")} for v in VARIANTS} for t in data}
        summary = {v: {m: float(np.mean([per_table[t][v][m]["mean"] for t in data])) for m in ("auroc", "ap")}
                   for v in VARIANTS}
        if peers is not None:
            for v, ranks in ranks_among_peers(per_table, peers["settings"][setting]["tables"], VARIANTS).items():
                summary[v].update(ranks)
        out[setting] = dict(tables=per_table, summary=summary, runs=runs)
        for v, s in summary.items():
            print(f"{setting}: {v:20s} mean AUROC {s['auroc']:.3f} AP {s['ap']:.3f}" +
                  (f" rank {s['rank_auroc']:.2f} / {s['rank_ap']:.2f}" if peers is not None else ""), flush=True)
    return out


def images_run(names, quick: bool, device: str) -> dict:
    """F1 (of the top contamination fraction) and AUROC of each variant on the sweep's instances,
    their means, and each variant's paired difference in F1 from the default."""
    out = {}
    for name in names:
        runs = []
        for key, X, is_out, seed in instances(name, argparse.Namespace(quick=quick, seeds=1 if quick else 3,
                                                                       fashion_root=None)):
            rate = float(is_out.mean())
            for v, s in variants(fit_default(X, rate, seed, device), X, X).items():
                flagged = s > np.quantile(s, 1 - rate)
                runs.append(dict(instance=key, variant=v, f1=precision_recall_f1(is_out, flagged)[2],
                                 auroc=roc_auc(is_out, s)))
            print(key, " ".join(f"{r['variant']} {r['f1']:.3f}" for r in runs[-len(VARIANTS):]), flush=True)
        default = np.array([r["f1"] for r in runs if r["variant"] == "default"])
        summary = {}
        for v in VARIANTS:
            f1 = np.array([r["f1"] for r in runs if r["variant"] == v])
            gain = f1 - default
            summary[v] = dict(f1=float(f1.mean()), auroc=float(np.mean([r["auroc"] for r in runs if r["variant"] == v])),
                              f1_gain=float(gain.mean()),
                              f1_gain_se=float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0,
                              won=int((gain > 0).sum()), lost=int((gain < 0).sum()))
            print(f"{name}: {v:20s} F1 {summary[v]['f1']:.3f} AUROC {summary[v]['auroc']:.3f} paired "
                  f"{summary[v]['f1_gain']:+.3f} ± {summary[v]['f1_gain_se']:.3f} won {summary[v]['won']} "
                  f"lost {summary[v]['lost']}", flush=True)
        out[name] = dict(summary=summary, runs=runs)
    return out


def markdown(result: dict) -> list[str]:
    """The rows of RESULTS.md's table of a full run: each variant's means on every data set (the
    rank is the mean AUROC rank among adbench.py's peers; images: F1 and its paired difference)."""
    heads = ["variant", *(f"ADBench {s}: AUROC / AP / rank" for s in SETTINGS),
             *(f"synthetic {s}: AUROC / AP" for s in SETTINGS), *(f"{IMAGE_NAMES[n]} F1 (paired)" for n in result["images"])]
    rows = ["| " + " | ".join(heads) + " |", "| --- |" + " ---: |" * (len(heads) - 1)]
    for v in result["variants"]:
        on_tables = [result["adbench"][s]["summary"][v] for s in SETTINGS]
        synthetic = [result["synthetic"][s]["summary"][v] for s in SETTINGS]
        images = [result["images"][n]["summary"][v] for n in result["images"]]
        columns = [f"{x['auroc']:.3f} / {x['ap']:.3f} / {x['rank_auroc']:.2f}" for x in on_tables]
        columns += [f"{x['auroc']:.3f} / {x['ap']:.3f}" for x in synthetic]
        columns += [f"{x['f1']:.3f}" + ("" if v == "default" else f" ({x['f1_gain']:+.3f} ± {x['f1_gain_se']:.3f})")
                   for x in images]
        rows.append(f"| {v} | " + " | ".join(columns) + " |")
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data-dir", type=Path, default=ADBENCH)
    p.add_argument("--max-rows", type=int, default=20000, help="rows of a table in the transductive setting")
    p.add_argument("--peers", type=Path, default=None, help="adbench.py's JSON of the same tables, seeds and rows")
    p.add_argument("--synthetic", type=int, default=50000, metavar="ROWS", help="rows of the synthetic table (0: none)")
    p.add_argument("--images", nargs="*", choices=IMAGES, default=None,
                   help="the sweep's image sets (default mnist and fashion500; quick: mnist)")
    args = p.parse_args()
    seeds = range(1 if args.quick else 3)
    images = args.images if args.images is not None else (["mnist"] if args.quick else ["mnist", "fashion500"])
    data = tables(args.data_dir, args.quick)
    peers = read_peers(args.peers, data, seeds, args.max_rows, "score_variants.py")
    result = dict(mode="quick" if args.quick else "full", data_dir=str(args.data_dir), seeds=list(seeds),
                  peers=None if peers is None else str(args.peers), max_rows=args.max_rows, variants=list(VARIANTS),
                  adbench=tables_run(data, seeds, args.max_rows, peers, args.device))
    if args.synthetic:
        from bench_scale import synthetic

        X, y = synthetic(args.synthetic, seed=0)
        result["synthetic_rows"] = args.synthetic
        result["synthetic"] = tables_run({"synthetic": (X.astype(np.float64), y)}, seeds, args.max_rows, None,
                                         args.device)
    result["images"] = images_run(images, args.quick, args.device)
    path = report_path("score-variants", args)
    save_json(path, result, args.device)
    if peers is not None and args.synthetic:
        print("\n".join(markdown(result)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
