"""Outlier detection, KDD'17 section 5.3: one class nominal, a few percent of the other classes
mixed in; l21_rows RDA against a plain autoencoder, a VAE, RCAE and IsolationForest.

Two protocols: the paper's (the best F1 over a grid of lam, or of contamination for the methods
without lam, which needs the labels) and a label-free one (every method told the true outlier
rate, nothing tuned). Plus AUROC, average precision and precision@10 of the continuous scores.
Mean and spread over seeds (a seed draws the mixture and initialises the networks).

    python benchmarks/quality/outliers.py --quick      # MNIST subset, 3 seeds; Fashion-MNIST, 2 classes, 1,000 rows each
    python benchmarks/quality/outliers.py              # MNIST subset and full Fashion-MNIST, every class, 3 seeds
"""

from __future__ import annotations

import time

import numpy as np
from common import parser, plt, report_path, save_figure, save_json
from sklearn.ensemble import IsolationForest

from rda_ext import RobustAutoencoder, lambda_path
from rda_ext.data.datasets import load_fashion_mnist, load_mnist_5k, make_outlier_set
from rda_ext.experiments.baselines import autoencoder_scores, rcae, vae_scores
from rda_ext.experiments.metrics import (
    average_precision,
    precision_at_k,
    precision_recall_f1,
    roc_auc,
)

HIDDEN = (400, 200)
CONTAMINATION_GRID = np.round(np.arange(0.01, 0.70, 0.02), 2)  # the paper's IsolationForest grid
LAM_FACTORS = np.geomspace(0.6, 1.8, 11)  # times the label-free lam of the same data
# Outer iterations x inner epochs. What matters between two proximal steps is the number of Adam
# steps: ~9 batches x 10 epochs on the MNIST subset (527 rows), ~100 batches x 1 epoch on a full
# Fashion-MNIST class (6,300 rows), so both fits take about 2,000 steps in all.
EPOCHS_SMALL = (20, 10)
EPOCHS_FULL_FASHION = (20, 1)


def scores_report(is_out, scores, flagged) -> dict:
    p, r, f1 = precision_recall_f1(is_out, flagged)
    return dict(precision=p, recall=r, f1=f1, auroc=roc_auc(is_out, scores),
                ap=average_precision(is_out, scores), p_at_10=precision_at_k(is_out, scores, 10))


def best_over_rates(is_out, scores) -> dict:
    """The paper's protocol for a method without lam: flag the top fraction c of the scores, for c
    on the contamination grid, and keep the best F1."""
    best = max(((precision_recall_f1(is_out, scores > np.quantile(scores, 1 - c)), c) for c in CONTAMINATION_GRID),
               key=lambda t: t[0][2])
    (p, r, f1), c = best
    return dict(best_f1=f1, best_precision=p, best_recall=r, best_at=float(c))


def run_one(X, is_out, seed, device, epochs) -> dict:
    rate = float(is_out.mean())
    outer, inner = epochs
    # The paper's detector: S's non-zero rows, scored by their residual norm.
    train = dict(hidden=HIDDEN, outer_iter=outer, inner_epochs=inner, batch_size=64, outlier_score="residual",
                 device=device, random_state=seed)
    out = {}

    t = time.perf_counter()
    free = RobustAutoencoder(penalty="l21_rows", contamination=rate, **train).fit(X)
    lams = free.lam_ * LAM_FACTORS
    path = lambda_path(X, lams, penalty="l21_rows", **train)
    curve = [dict(lam=r["lam"], **dict(zip(("precision", "recall", "f1"), precision_recall_f1(is_out, r["labels"]))))
             for r in path]
    best = max(curve, key=lambda c: c["f1"])
    out["RDA"] = dict(
        **scores_report(is_out, free.decision_scores_, free.labels_),
        best_f1=best["f1"], best_precision=best["precision"], best_recall=best["recall"], best_at=best["lam"],
        lam_label_free=free.lam_, curve=curve, seconds=time.perf_counter() - t,
    )

    t = time.perf_counter()
    s, flagged = rcae(X, contamination=rate, device=device, seed=seed, hidden=HIDDEN, outer_iter=outer,
                      inner_epochs=inner)
    rc = [(lam, precision_recall_f1(is_out, rcae(X, lam=lam, device=device, seed=seed, hidden=HIDDEN,
                                                 outer_iter=outer, inner_epochs=inner)[1]))
          for lam in 2 * free.lam_ * LAM_FACTORS[::2]]
    lam, (p, r, f1) = max(rc, key=lambda t: t[1][2])
    out["RCAE"] = dict(**scores_report(is_out, s, flagged), best_f1=f1, best_precision=p, best_recall=r,
                       best_at=lam, seconds=time.perf_counter() - t)

    for name, fn in (("autoencoder", autoencoder_scores), ("VAE", vae_scores)):
        t = time.perf_counter()
        kw = dict(hidden=HIDDEN) if name == "autoencoder" else {}
        s = fn(X, epochs=outer * inner, batch_size=64, device=device, seed=seed, **kw)
        out[name] = dict(**scores_report(is_out, s, s > np.quantile(s, 1 - rate)), **best_over_rates(is_out, s),
                         seconds=time.perf_counter() - t)

    t = time.perf_counter()
    forest = IsolationForest(n_estimators=100, contamination=rate, random_state=seed).fit(X)
    s = -forest.score_samples(X)
    out["IsolationForest"] = dict(**scores_report(is_out, s, forest.predict(X) == -1), **best_over_rates(is_out, s),
                                  seconds=time.perf_counter() - t)
    out["_rda_model"] = free
    return out


def summarise(runs: list[dict]) -> dict:
    keys = ("best_f1", "f1", "precision", "recall", "auroc", "ap", "p_at_10", "seconds")
    table = {}
    for method in runs[0]:
        if method.startswith("_"):
            continue
        vals = {k: [r[method][k] for r in runs] for k in keys}
        table[method] = {k: dict(mean=float(np.mean(v)), std=float(np.std(v))) for k, v in vals.items()}
    return table


def figures(X, is_out, labels, run, tag: str, args) -> list[str]:
    names = []
    curve = run["RDA"]["curve"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key in ("f1", "precision", "recall"):
        ax.plot([c["lam"] for c in curve], [c[key] for c in curve], marker="o", label=key)
    ax.axvline(run["RDA"]["lam_label_free"], color="gray", ls="--", label="label-free lam")
    ax.set_xlabel("lam"), ax.set_ylabel("score"), ax.set_ylim(0, 1.02), ax.legend(), ax.set_title(f"l21_rows RDA, {tag}")
    names.append(save_figure(fig, args, f"outliers-{tag}-f1-vs-lam"))

    model = run["_rda_model"]
    flagged = np.flatnonzero(model.labels_)
    order = flagged[np.argsort(-model.decision_scores_[flagged])][:40]
    cols = 10
    fig, axes = plt.subplots((len(order) + cols - 1) // cols, cols, figsize=(cols, 1.15 * ((len(order) + cols - 1) // cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(X[i].reshape(28, 28), cmap="gray_r")
        ax.set_title(f"{labels[i]}" + ("" if is_out[i] else " (in)"), fontsize=8, color="black" if is_out[i] else "red")
    fig.suptitle(f"rows flagged by RDA (label-free), {tag}: class label, red = nominal", fontsize=9)
    names.append(save_figure(fig, args, f"outliers-{tag}-flagged"))

    rows = list(order[:4]) + list(np.flatnonzero(~model.labels_.astype(bool))[:2])
    fig, axes = plt.subplots(len(rows), 3, figsize=(3.6, 1.2 * len(rows)), squeeze=False)
    for (a, b, c), i in zip(axes, rows):
        for ax, img, title in ((a, X[i], "X"), (b, model.L_[i], "L"), (c, model.S_[i], "S")):
            ax.imshow(img.reshape(28, 28), cmap="gray_r" if title != "S" else "RdBu", **({} if title != "S" else dict(vmin=-1, vmax=1)))
            ax.set_xticks([]), ax.set_yticks([])
            if i == rows[0]:
                ax.set_title(title)
    fig.suptitle(f"X = L + S, {tag}", fontsize=9)
    names.append(save_figure(fig, args, f"outliers-{tag}-x-l-s"))
    return names


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--seeds", type=int, default=3)
    cli.add_argument("--fashion-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    args = cli.parse_args()
    seeds = range(args.seeds)
    result = {"mode": "quick" if args.quick else "full", "seeds": list(seeds), "hidden": HIDDEN, "datasets": {}}

    X, y = load_mnist_5k()
    runs = []
    for seed in seeds:
        Xm, is_out, ym = make_outlier_set(X, y, 4, 0.052, seed)
        run = run_one(Xm, is_out, seed, args.device, EPOCHS_SMALL)
        if seed == 0:
            result["figures"] = figures(Xm, is_out, ym, run, "mnist5k", args)
        runs.append(run)
        print(f"mnist5k seed {seed}: " + ", ".join(f"{m} F1 {r['f1']:.2f}/{r['best_f1']:.2f} AUROC {r['auroc']:.3f}"
                                              for m, r in run.items() if not m.startswith("_")), flush=True)
    result["datasets"]["mnist5k digit 4, 5.2%"] = dict(
        outer_iter=EPOCHS_SMALL[0], inner_epochs=EPOCHS_SMALL[1], summary=summarise(runs),
        runs=[{m: r for m, r in run.items() if not m.startswith("_")} for run in runs])

    fashion = load_fashion_mnist(*([args.fashion_root] if args.fashion_root else []), split="train")
    classes, per_class = ((0, 7), 1000) if args.quick else (range(10), None)
    epochs = EPOCHS_SMALL if args.quick else EPOCHS_FULL_FASHION
    per_class_runs = {}
    for c in classes:
        runs = []
        for seed in seeds if not args.quick else seeds[:1]:
            Xf, yf = fashion
            if per_class:
                rng = np.random.default_rng(seed)
                keep = np.concatenate([rng.choice(np.flatnonzero(yf == k), per_class, replace=False) for k in range(10)])
                Xf, yf = Xf[keep], yf[keep]
            Xm, is_out, _ = make_outlier_set(Xf, yf, c, 0.05, seed)
            run = run_one(Xm, is_out, seed, args.device, epochs)
            runs.append({m: r for m, r in run.items() if not m.startswith("_")})
            print(f"fashion class {c} seed {seed} ({len(Xm)} rows): " + ", ".join(
                f"{m} F1 {r['f1']:.2f}/{r['best_f1']:.2f} AUROC {r['auroc']:.3f}" for m, r in runs[-1].items()), flush=True)
        per_class_runs[c] = runs
    all_runs = [r for runs in per_class_runs.values() for r in runs]
    result["datasets"]["fashion-mnist each class, 5%"] = dict(
        classes=list(classes), rows_per_class=per_class or 6000, outer_iter=epochs[0], inner_epochs=epochs[1],
        summary=summarise(all_runs),
        per_class={str(c): summarise(r) for c, r in per_class_runs.items()})
    path = report_path("outliers", args)
    save_json(path, result, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
