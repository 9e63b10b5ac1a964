"""What each part of RDA's default score is worth on ADBench-format tables, and what an ensemble of
networks from other seeds would add. The same tables, settings, subsamples, splits and min-max
scaling as adbench.py; RDA at its defaults, contamination = the true rate.

Variants, each a score of the rows scored (higher = more anomalous):
- default: as adbench.py scores RDA (``decision_scores_`` for the fitted rows, else
  ``decision_function``), "residual+code+knn":
  the residual and code terms and the local term, the distance to the 10th nearest of a sample of
  the reference rows (scoring.py, neighbours.py);
- local term alone: outlier_score="knn", the distance to the K-th nearest of the sample of the
  reference rows (neighbours.py) without the residual and code terms (a fit of its own: the same
  decomposition and neighbours as the default's, which the score does not change);
- residual + code: the default without its local term ("residual+code", the default before it),
  from the fitted ``residual_scale_``, ``code_center_`` and ``code_precision_``;
- residual term, code term: each of those alone;
- 3 seeds: the mean of the robust z-scores (median and MAD on the fitted rows) of the default
  score of three fits (random_state seed, seed + 100, seed + 200).

With ``--synthetic ROWS``, the table measured is bench_scale.py's synthetic one instead (rows near a
3-dimensional curved manifold in 10 columns, 1% of them off it: a table the network compresses),
into score-terms-synthetic-*.json.

With ``--peers`` (a JSON file of adbench.py from the same tables, seeds and rows), each variant's
mean rank among that file's other detectors, in RDA's place, table by table.

    python benchmarks/quality/peers/score_terms.py --quick   # 1 seed, the tables under 5,000 rows
    python benchmarks/quality/peers/score_terms.py --peers benchmarks/results/adbench-amd-epyc-2t.json
    python benchmarks/quality/peers/score_terms.py --synthetic 50000
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # quality/: common.py
from adbench import ADBENCH, SETTINGS, cells, ranks_of, tables  # noqa: E402
from common import mean_sd, parser, report_path, save_json  # noqa: E402

from rda_ext import RobustAutoencoder  # noqa: E402
from rda_ext.experiments.metrics import average_precision, roc_auc  # noqa: E402

VARIANTS = ("default", "local term alone", "residual + code", "residual term", "code term", "3 seeds")
ENSEMBLE_SEEDS = (0, 100, 200)  # added to the cell's seed


def residual_rows(est: RobustAutoencoder, X: np.ndarray, fitted: bool = False) -> np.ndarray:
    """The residual of each row of X: X - L_ for the fitted rows where ``fitted``, else X - AE(X)."""
    return X - (est.L_ if fitted else est.reconstruct(X))


def terms(est: RobustAutoencoder, X: np.ndarray, fitted: bool = False,
          residuals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The residual term and the code term of the default score of the rows X (their sum is the
    "residual+code" score), from the fitted statistics and the rows' ``residual_rows`` (computed
    here, with ``fitted``, unless given)."""
    R = residual_rows(est, X, fitted) if residuals is None else residuals
    residual = ((R / est.residual_scale_) ** 2).mean(1)
    return residual, code_term(est.transform(X).astype(np.float64), est.code_center_, est.code_precision_)


def code_term(Z: np.ndarray, center: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The code term of codes Z under a code center and precision matrix (scoring.score_terms')."""
    dz = Z - center
    return np.einsum("ij,jk,ik->i", dz, precision, dz) / dz.shape[1]


def robust_z(on_fit: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` as a z-score by the median and the MAD (scaled to a normal sd) of ``on_fit``."""
    median = np.median(on_fit)
    mad = 1.4826 * np.median(np.abs(on_fit - median))
    return (values - median) / max(mad, np.finfo(np.float64).tiny)


def variants(X_fit, X_score, rate: float, seed: int, device: str) -> dict[str, np.ndarray]:
    fits = [RobustAutoencoder(contamination=rate, random_state=seed + s, device=device).fit(X_fit)
            for s in ENSEMBLE_SEEDS]
    same = X_score is X_fit
    default_fit = [est.decision_scores_ for est in fits]
    default = [d if same else est.decision_function(X_score) for d, est in zip(default_fit, fits)]
    ensemble = np.mean([robust_z(f, d) for f, d in zip(default_fit, default)], axis=0)
    alone = RobustAutoencoder(contamination=rate, random_state=seed, device=device, outlier_score="knn").fit(X_fit)
    local = alone.decision_scores_ if same else alone.decision_function(X_score)
    residual, code = terms(fits[0], X_score, fitted=same)
    return {"default": default[0], "local term alone": local, "residual + code": residual + code,
            "residual term": residual, "code term": code, "3 seeds": ensemble}


def ranks_among_peers(per_table: dict, peers: dict, names=VARIANTS) -> dict[str, dict[str, float]]:
    """Each variant of ``names``' mean rank (AUROC, AP) among the detectors of ``peers`` (adbench.py's
    tables of one setting) other than RDA, the variant in RDA's place."""
    out = {}
    for v in names:
        for m in ("auroc", "ap"):
            ranks = [ranks_of({**{d: r[m]["mean"] for d, r in peers[t].items() if d != "RDA"},
                               "RDA": per_table[t][v][m]["mean"]})["RDA"] for t in per_table]
            out.setdefault(v, {})[f"rank_{m}"] = float(np.mean(ranks))
    return out


def read_peers(path: Path | None, data: dict, seeds, max_rows: int, script: str) -> dict | None:
    """adbench.py's JSON at ``path`` (None: none), refused unless it is of these tables, seeds and rows."""
    if path is None:
        return None
    peers = json.loads(path.read_text())
    if (peers["seeds"] != list(seeds) or peers["max_rows"] != max_rows or
            any(sorted(s["tables"]) != sorted(data) for s in peers["settings"].values())):
        raise SystemExit(f"{script}: {path} is not of these tables, seeds and rows")
    return peers


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data-dir", type=Path, default=ADBENCH)
    p.add_argument("--max-rows", type=int, default=20000, help="rows of a table in the transductive setting")
    p.add_argument("--peers", type=Path, default=None, help="adbench.py's JSON of the same tables, seeds and rows")
    p.add_argument("--synthetic", type=int, default=0, metavar="ROWS",
                   help="measure bench_scale.py's synthetic table of ROWS rows instead of --data-dir's tables")
    args = p.parse_args()
    if args.synthetic and args.peers:
        raise SystemExit("score_terms.py: --peers are of ADBench's tables, not of --synthetic")
    seeds = range(1 if args.quick else 3)
    if args.synthetic:
        from bench_scale import synthetic

        X, y = synthetic(args.synthetic, seed=0)
        data = {"synthetic": (X.astype(np.float64), y)}
    else:
        data = tables(args.data_dir, args.quick)
    peers = read_peers(args.peers, data, seeds, args.max_rows, "score_terms.py")
    source = f"bench_scale.py's synthetic table, {args.synthetic} rows" if args.synthetic else str(args.data_dir)
    result = dict(mode="quick" if args.quick else "full", data_dir=source, seeds=list(seeds),
                  peers=None if peers is None else str(args.peers),
                  ensemble_seeds=list(ENSEMBLE_SEEDS), max_rows=args.max_rows, variants=list(VARIANTS), settings={})
    for setting in SETTINGS:
        runs = []
        for table, seed, rate, X_fit, X_score, y_score in cells(data, setting, seeds, args.max_rows):
            t = time.perf_counter()
            scores = variants(X_fit, X_score, rate, seed, args.device)
            seconds = time.perf_counter() - t
            for name, s in scores.items():
                runs.append(dict(table=table, seed=seed, variant=name, auroc=roc_auc(y_score, s),
                                 ap=average_precision(y_score, s)))
            print(f"{setting:12s} {table:22s} seed {seed} " + " ".join(
                f"{r['variant']} {r['auroc']:.3f}/{r['ap']:.3f}" for r in runs[-len(scores):]) + f" {seconds:.1f} s",
                flush=True)
        per_table = {t: {v: {m: mean_sd([r[m] for r in runs if r["table"] == t and r["variant"] == v])
                             for m in ("auroc", "ap")} for v in VARIANTS} for t in data}
        summary = {v: {m: float(np.mean([per_table[t][v][m]["mean"] for t in data])) for m in ("auroc", "ap")}
                   for v in VARIANTS}
        for v in VARIANTS:  # on how many tables a variant's mean beats the default's
            for m in ("auroc", "ap"):
                summary[v][f"above_default_{m}"] = int(sum(per_table[t][v][m]["mean"] > per_table[t]["default"][m]["mean"]
                                                           for t in data))
        if peers is not None:
            for v, ranks in ranks_among_peers(per_table, peers["settings"][setting]["tables"]).items():
                summary[v].update(ranks)
        result["settings"][setting] = dict(tables=per_table, summary=summary, runs=runs)
        for v, s in summary.items():
            print(f"{setting}: {v:15s} mean AUROC {s['auroc']:.3f} AP {s['ap']:.3f}" +
                  (f" rank {s['rank_auroc']:.2f} / {s['rank_ap']:.2f}" if peers is not None else ""))
    path = report_path("score-terms-synthetic" if args.synthetic else "score-terms", args)
    save_json(path, result, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
