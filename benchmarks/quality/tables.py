"""Markdown tables for benchmarks/RESULTS.md from the quality scripts' JSON files.

    python benchmarks/quality/tables.py benchmarks/results/outliers-amd-epyc-2t-quick.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
        centre = sum(per_seed) / len(per_seed)
        sd = (sum((m - centre) ** 2 for m in per_seed) / len(per_seed)) ** 0.5
        out.append(f"| {k} | {best['ae_error']:.3f} | {best['rda_error']:.3f} ({lam:g}) | "
                   f"{centre:+.0%} ± {sd:.0%} | {best['noisy_mae']:.3f} | {best['ae_mae']:.3f} | {best['rda_mae']:.3f} |")
    return "\n".join(out)


def main() -> None:
    for path in sys.argv[1:]:
        result = json.loads(Path(path).read_text())
        print(f"<!-- {path} -->")
        if "datasets" in result:
            print(outliers(result))
        elif "runs" in result:
            print(stuck_pixels(result))
        elif "cells" in result:
            print(denoising(result))


if __name__ == "__main__":
    main()
