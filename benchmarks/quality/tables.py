"""Markdown tables for benchmarks/RESULTS.md from the quality scripts' JSON files.

    python benchmarks/quality/tables.py benchmarks/results/outliers-amd-epyc-2t-quick.json ...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from convergence import staircase

COLUMNS = (("best_f1", "F1, best over grid"), ("f1", "F1, label-free"), ("auroc", "AUROC"), ("ap", "AP"),
           ("p_at_10", "P@10"))


def outliers(result: dict) -> str:
    out = []
    for name, data in result["datasets"].items():
        out.append(f"**{name}**\n")
        out.append("| method | " + " | ".join(title for _, title in COLUMNS) + " |")
        out.append("| --- |" + " ---: |" * len(COLUMNS))
        for method, stats in data["summary"].items():
            cells = [f"{stats[k]['mean']:.3f} ± {stats[k]['std']:.3f}" for k, _ in COLUMNS]
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
        if "per_class" in data:
            out.append(per_class(data["per_class"]))
    return "\n".join(out)


def per_class(table: dict) -> str:
    """One row per nominal class: each method's label-free F1 and AUROC, means over the seeds."""
    methods = list(next(iter(table.values())))
    out = ["**per nominal class: F1 label-free / AUROC, mean over seeds**\n",
           "| class | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
    for c, summary in table.items():
        cells = [f"{summary[m]['f1']['mean']:.2f} / {summary[m]['auroc']['mean']:.3f}" for m in methods]
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def stuck_pixels(result: dict) -> str:
    out = ["| seed | planted columns | detected (label-free) | P / R label-free | P / R best lam | "
           "MAE broken entries: X | L | MAE other entries: L |", "| --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for r in result["runs"]:
        free, best = r["label_free"], r["best"]
        out.append(f"| {r['seed']} | {r['planted']} | {r['detected']} | {free['precision']:.2f} / {free['recall']:.2f} | "
                   f"{best['precision']:.2f} / {best['recall']:.2f} | {r['mae_broken_X']:.3f} | {r['mae_broken_L']:.3f} | "
                   f"{r['mae_clean_L']:.3f} |")
    return "\n".join(out)


def denoising(result: dict) -> str:
    """Per k: the autoencoder's forest error, RDA's at its best lam (best on the mean over seeds),
    the margin relative to the autoencoder (positive: RDA better) as mean ± standard deviation over
    the seeds, and the error of the outputs against the clean images."""
    out = ["| k | forest error AE | forest error RDA (best lam) | margin | "
           "MAE to clean: corrupted | AE output | RDA L (same lam) |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in result["ks"]:
        by_lam = {}
        for c in (c for c in result["cells"] if c["k"] == k):
            by_lam.setdefault(c["lam"], []).append(c)
        mean = {lam: {key: sum(c[key] for c in cs) / len(cs) for key in cs[0] if key not in ("seed", "k", "lam")}
                for lam, cs in by_lam.items()}
        lam, best = min(mean.items(), key=lambda t: t[1]["rda_error"])
        per_seed = [(c["ae_error"] - c["rda_error"]) / c["ae_error"] for c in by_lam[lam]]
        out.append(f"| {k} | {best['ae_error']:.3f} | {best['rda_error']:.3f} ({lam:g}) | "
                   f"{statistics.fmean(per_seed):+.0%} ± {statistics.pstdev(per_seed):.0%} | {best['noisy_mae']:.3f} | {best['ae_mae']:.3f} | {best['rda_mae']:.3f} |")
    return "\n".join(out)


def convergence(result: dict) -> str:
    """Per lam: how often the proximal step lowers lam ||S|| (both sides share the reconstruction
    term measured before the step) and the inner epochs lower the objective (the
    staircase of the figure), its first and last value, the rows left in S, and c1, c2 at the end."""
    out = ["| lam | proximal step lowers lam ‖S‖ | inner epochs lower the objective | objective at 1 -> last | "
           "rows in S at the end | c1, c2 at the end |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lam, history in result["histories"].items():
        _, ys = staircase(history)
        before, after = ys[0::2], ys[1::2]
        lowered = sum(a < b for b, a in zip(before, after))
        # S = 0 before and after the step leaves the objective as it was.
        unchanged = sum(abs(a - b) <= 1e-9 * b for b, a in zip(before, after))
        inner = sum(b < a for a, b in zip(after, before[1:]))
        first, last = history[0], history[-1]
        out.append(f"| {float(lam):g} | {lowered} of {len(history)}" + (f" ({unchanged} unchanged)" if unchanged else "")
                   + f" | {inner} of {len(history) - 1} | {first['objective']:.4g} -> {last['objective']:.4g} | "
                   f"{last['n_nonzero']} | {last['c1']:.3f}, {last['c2']:.3f} |")
    return "\n".join(out)


def sweep(result: dict) -> str:
    """Per data set, one row per configuration: RDA's and the plain autoencoder's mean label-free F1
    and AUROC over every instance (classes x seeds), IsolationForest's first, the ensembles last."""
    out = []
    for name, data in result["summary"].items():
        cells = data["cells"]
        iso = cells["IsolationForest"]
        out += [f"**{name}: {data['instances']} instances (classes x seeds), mean ± sd**\n",
                "| configuration | RDA F1 | RDA AUROC | autoencoder F1 | autoencoder AUROC |",
                "| --- | ---: | ---: | ---: | ---: |",
                f"| IsolationForest | {iso['f1']['mean']:.3f} ± {iso['f1']['sd']:.3f} | "
                f"{iso['auroc']['mean']:.3f} ± {iso['auroc']['sd']:.3f} | | |"]
        for cell, r in cells.items():
            if cell != "IsolationForest":
                out.append(f"| {cell} | " + " | ".join(f"{r[m][k]['mean']:.3f} ± {r[m][k]['sd']:.3f}"
                                                       for m in ("RDA", "autoencoder") for k in ("f1", "auroc")) + " |")
        for ens, r in data["ensembles"].items():
            out.append(f"| ensemble: {ens} | {r['f1']['mean']:.3f} ± {r['f1']['sd']:.3f} | "
                       f"{r['auroc']['mean']:.3f} ± {r['auroc']['sd']:.3f} | | |")
        out.append("")
        default = default_cell(result["cells"])
        if default is not None:
            out.append(sweep_per_class(name, default, result["runs"]))
            if len(cells[default]) > 3:  # the parts of the defaults' score, beside the config
                out.append(score_parts(name, default, cells))
    return "\n".join(out)


def score_parts(name: str, cell: str, cells: dict) -> str:
    """The defaults' score, its terms alone (and without the local term where it has one), RDA's
    residual norm from the same fits and the plain autoencoder scored both ways: mean F1 / AUROC
    over the instances."""
    iso = cells["IsolationForest"]
    out = [f"**{name}, the defaults' score and its parts ({cell}; F1 from the top contamination fraction of each "
           "score)**\n", "| score | F1 | AUROC |", "| --- | ---: | ---: |",
           f"| IsolationForest | {iso['f1']['mean']:.3f} ± {iso['f1']['sd']:.3f} | "
           f"{iso['auroc']['mean']:.3f} ± {iso['auroc']['sd']:.3f} |"]
    # How the two methods every cell has read in the defaults' cell.
    names = {"RDA": f"RDA, {cells[cell]['config']['outlier_score']} (the defaults)",
             "autoencoder": "autoencoder, residual norm"}
    for method, r in cells[cell].items():
        if method != "config":
            out.append(f"| {names.get(method, method)} | {r['f1']['mean']:.3f} ± {r['f1']['sd']:.3f} | "
                       f"{r['auroc']['mean']:.3f} ± {r['auroc']['sd']:.3f} |")
    out.append("")
    return "\n".join(out)


def default_cell(cells: dict) -> str | None:
    """The cell whose configuration is the estimator's default (read from the estimator itself), or
    in a run from before the default score or shape, the last cell that is the default but for those
    (the defaults' cell of that run, which the sweep lists last)."""
    from rda_ext import RobustAutoencoder

    params = RobustAutoencoder().get_params()

    def matches(config: dict, but=()) -> bool:
        return all(tuple(v) == tuple(params[k]) if isinstance(v, (list, tuple)) else v == params[k]
                   for k, v in config.items() if k not in but)

    exact = [cell for cell, config in cells.items() if matches(config)]
    if exact:
        return exact[0]
    scored = [cell for cell, config in cells.items()
              if matches(config, but=("outlier_score", "hidden")) and config.get("outlier_score") != "residual"]
    return scored[-1] if scored else None


def sweep_per_class(name: str, cell: str, runs: dict) -> str:
    """Per nominal class, the defaults' (``cell``) RDA against IsolationForest, means over the seeds."""
    by_class = {}
    for key, r in runs.items():
        dataset, c, _, _ = key.split()
        if dataset == name:
            by_class.setdefault(int(c), []).append(r)
    out = [f"**{name}, per nominal class, the defaults ({cell}): F1 / AUROC, mean over seeds**\n",
           "| class | RDA | autoencoder | IsolationForest |", "| --- | ---: | ---: | ---: |"]
    for c, rs in sorted(by_class.items()):
        cells = [(statistics.fmean(r[cell][m]["f1"] for r in rs), statistics.fmean(r[cell][m]["auroc"] for r in rs))
                 for m in ("RDA", "autoencoder")]
        cells.append((statistics.fmean(r["IsolationForest"]["f1"] for r in rs),
                      statistics.fmean(r["IsolationForest"]["auroc"] for r in rs)))
        out.append(f"| {c} | " + " | ".join(f"{f:.2f} / {a:.3f}" for f, a in cells) + " |")
    out.append("")
    return "\n".join(out)


def main() -> None:
    for path in sys.argv[1:]:
        result = json.loads(Path(path).read_text())
        print(f"<!-- {path} -->")
        if "ensembles" in result:
            print(sweep(result))
        elif "datasets" in result:
            print(outliers(result))
        elif "runs" in result:
            print(stuck_pixels(result))
        elif "cells" in result:
            print(denoising(result))
        elif "histories" in result:
            print(convergence(result))


if __name__ == "__main__":
    main()
