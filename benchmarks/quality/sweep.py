"""Label-free outlier detection over network shapes and training schedules: which configuration of
l21_rows RDA should be the default. Each cell of the sweep is one configuration (encoder widths,
outer iterations x inner epochs, batch size, learning rate); every cell is fitted on every data set
instance, with the plain autoencoder of the same shape and schedule beside it, and IsolationForest
once per instance. Label-free: every method is told the true outlier rate, nothing is tuned on
labels; F1 of the flagged rows and AUROC of the scores.

Data set instances (training splits only): Fashion-MNIST, each class nominal in turn plus 5% rows
of the other classes (6,316 rows), and the MNIST subset shipped with the package, each digit nominal
plus 5% others (526 rows); 3 seeds each (a seed draws the mixture and initialises the networks).
``fashion500`` is Fashion-MNIST cut to the MNIST subset's size (500 training images per class, drawn
once with a fixed seed): the same construction gives 526 rows, so that the size of a data set and its
kind can be told apart.
The grid scores rows by the paper's residual norm. The defaults' cell (hidden="auto": the narrow
network, or a wide one where the residual contrast picks it, rda_ext.estimator.network_shape) and
the narrow network alone use the "residual+code+knn" score (rda_ext.estimator.scoring), the cell
before them "residual+code"; all record what the score is made of: the residual and code terms
alone, their sum (the score without the local term), the residual norm of the same fit, and the
plain autoencoder (of the shape and schedule RDA kept) scored the same way.
The scores of each fit are kept in the work folder, so that ensembles of cells (the mean of each
cell's robustly standardised scores, median / IQR) are evaluated afterwards without refitting, and
so that an interrupted sweep resumes where it stopped.

    python benchmarks/quality/sweep.py --quick    # MNIST subset, digits 0 and 1, 1 seed, 2 cells (one: the defaults)
    python benchmarks/quality/sweep.py            # both data sets, every class, 3 seeds, every cell
    python benchmarks/quality/sweep.py --extra    # longer schedules on the MNIST subset
    python benchmarks/quality/sweep.py --extra --datasets mnist fashion500   # and on Fashion-MNIST's 5,000
    python benchmarks/quality/sweep.py --cells "auto 10 x auto, residual+code+knn"   # named cells only

Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` (or --fashion-root FOLDER of IDX files).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import mean_sd, parser, plt, report_path, save_figure, save_json
from sklearn.ensemble import IsolationForest

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import load_fashion_mnist, load_mnist_5k, make_outlier_set
from rda_ext.estimator import network_shape
from rda_ext.estimator.scoring import score_terms
from rda_ext.experiments.baselines import autoencoder_scores
from rda_ext.experiments.metrics import precision_recall_f1, roc_auc
from rda_ext.solver.schedule import resolve_inner_epochs

WIDTHS = {"784-64-16": (64, 16), "784-128-32": (128, 32), "784-256-64": (256, 64), "784-400-200": (400, 200)}
SCHEDULES = {"5x1": (5, 1), "10x1": (10, 1), "20x1": (20, 1)}
# The grid studies shapes and schedules with the paper's score, the norm of the residual.
CENTER = dict(hidden=(128, 32), outer_iter=10, inner_epochs=1, batch_size=128, lr=1e-3, outlier_score="residual")
# The defaults: hidden="auto" (the grid's shape, or a wide one where the residual contrast picks it),
# the schedule the grid chose, the score that beat both baselines (the local term added on ADBench's
# tables: benchmarks/RESULTS.md); the narrow shape alone with that score, and with the score before
# the local term.
DEFAULTS_CELL = "auto 10 x auto, residual+code+knn"
DEFAULTS = dict(CENTER, hidden="auto", inner_epochs="auto", outlier_score="residual+code+knn")
NARROW_CELL = "784-128-32 10 x auto, residual+code+knn"
NARROW = dict(DEFAULTS, hidden=(128, 32))
WITHOUT_LOCAL_CELL = "784-128-32 10 x auto, residual+code"
WITHOUT_LOCAL = dict(NARROW, outlier_score="residual+code")
# The defaults with the local term alone (outlier_score="knn", which wins on ADBench's tables).
LOCAL_ALONE_CELL = "auto 10 x auto, knn"
LOCAL_ALONE = dict(DEFAULTS, outlier_score="knn")


def cells() -> dict[str, dict]:
    """The grid (widths x schedules, for the heatmaps), then one factor at a time around the centre."""
    out = {f"{w} {s}": dict(CENTER, hidden=h, outer_iter=o, inner_epochs=i)
           for (w, h), (s, (o, i)) in itertools.product(WIDTHS.items(), SCHEDULES.items())}
    out.update({
        "784-128-32 10 x auto": dict(CENTER, inner_epochs="auto"),
        "784-128-32 10x3": dict(CENTER, inner_epochs=3),
        "784-64 10x1": dict(CENTER, hidden=(64,)),
        "784-256-64-16 10x1": dict(CENTER, hidden=(256, 64, 16)),
        "784-128-32 10x1 batch 64": dict(CENTER, batch_size=64),
        "784-128-32 10x1 batch 256": dict(CENTER, batch_size=256),
        "784-128-32 10x1 lr 3e-4": dict(CENTER, lr=3e-4),
        "784-128-32 10x1 lr 3e-3": dict(CENTER, lr=3e-3),
        WITHOUT_LOCAL_CELL: WITHOUT_LOCAL,
        NARROW_CELL: NARROW,
        LOCAL_ALONE_CELL: LOCAL_ALONE,
        DEFAULTS_CELL: DEFAULTS,
    })
    return out


# Longer schedules for the MNIST subset, where an epoch is 5 steps and the grid's schedules are
# 25-100 steps in all (--extra; too slow for every Fashion-MNIST instance: 784-400-200 at 20 x 10
# epochs is 20,000 steps there).
EXTRA = {
    "784-64-16 10x5": dict(CENTER, hidden=(64, 16), inner_epochs=5),
    "784-64-16 10x10": dict(CENTER, hidden=(64, 16), inner_epochs=10),
    "784-64-16 20x10": dict(CENTER, hidden=(64, 16), outer_iter=20, inner_epochs=10),
    "784-128-32 10x10": dict(CENTER, inner_epochs=10),
    "784-400-200 20x10 batch 64": dict(CENTER, hidden=(400, 200), outer_iter=20, inner_epochs=10, batch_size=64),
    "784-128-32 10 x auto": dict(CENTER, inner_epochs="auto"),
    WITHOUT_LOCAL_CELL: WITHOUT_LOCAL,
    NARROW_CELL: NARROW,
    DEFAULTS_CELL: DEFAULTS,
}
FASHION500_SEED = 500

# Ensembles evaluated from the stored scores: the mean of the robustly standardised scores.
ENSEMBLES = {
    "widths 64-16 + 128-32 + 256-64 at 10x1": ["784-64-16 10x1", "784-128-32 10x1", "784-256-64 10x1"],
    "schedules 5x1 + 10x1 + 20x1 at 128-32": ["784-128-32 5x1", "784-128-32 10x1", "784-128-32 20x1"],
    "the 6 small cells (64-16, 128-32 x 3 schedules)": [f"{w} {s}" for w in ("784-64-16", "784-128-32")
                                                        for s in SCHEDULES],
}


def robust_z(scores: np.ndarray) -> np.ndarray:
    q1, med, q3 = np.quantile(scores, [0.25, 0.5, 0.75])
    return (scores - med) / max(q3 - q1, np.finfo(np.float64).tiny)


def metrics(is_out, scores, flagged) -> dict:
    return dict(f1=precision_recall_f1(is_out, flagged)[2], auroc=roc_auc(is_out, scores))


def top_rate(scores, rate) -> np.ndarray:
    return scores > np.quantile(scores, 1 - rate)


def instances(name: str, args) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """(key, X, is_outlier, seed) of every data set instance of ``name``."""
    if name == "mnist":
        X, y = load_mnist_5k()
    else:
        X, y = load_fashion_mnist(*([args.fashion_root] if args.fashion_root else []), split="train")
    if name == "fashion500":  # 500 images per class, as the MNIST subset
        pick = np.random.default_rng(FASHION500_SEED)
        keep = np.concatenate([pick.choice(np.flatnonzero(y == c), 500, replace=False) for c in range(10)])
        X, y = X[keep], y[keep]
    classes = (0, 1) if args.quick else range(10)
    return [(f"{name} {c} seed {seed}", *make_outlier_set(X, y, c, 0.05, seed)[:2], seed)
            for c in classes for seed in range(args.seeds)]


def fit_cell(config: dict, X, is_out, seed, device) -> tuple[dict, dict[str, np.ndarray]]:
    rate = float(is_out.mean())
    t = time.perf_counter()
    est = RobustAutoencoder(penalty="l21_rows", contamination=rate, random_state=seed, device=device,
                            **config).fit(X)
    rda = dict(**metrics(is_out, est.decision_scores_, est.labels_), seconds=time.perf_counter() - t,
               lam=float(est.lam_), n_iter=est.n_iter_, hidden=est.hidden_)
    t = time.perf_counter()
    # The plain autoencoder of the shape and schedule RDA kept (hidden="auto" may widen both).
    outer_iter = network_shape.outer_iter_of(config["hidden"], config["outer_iter"], X.shape[1], est.hidden_)
    epochs = outer_iter * resolve_inner_epochs(config["inner_epochs"], len(X), config["batch_size"])
    ae = autoencoder_scores(X, hidden=est.hidden_, epochs=epochs,
                            batch_size=config["batch_size"], lr=config["lr"], device=device, seed=seed)
    plain = dict(**metrics(is_out, ae, top_rate(ae, rate)), seconds=time.perf_counter() - t)
    results, scores = dict(RDA=rda, autoencoder=plain), {"RDA": est.decision_scores_, "autoencoder": ae}
    if config["outlier_score"] != "residual":
        scores.update(score_parts(est, X, config, epochs, seed, device))
        results.update({k: metrics(is_out, v, top_rate(v, rate)) for k, v in scores.items() if k not in results})
    return results, scores


def score_parts(est, X, config, epochs, seed, device) -> dict[str, np.ndarray]:
    """What the fit's score is made of: the residual and code terms alone and (where the score has a
    local term) their sum (none of them for "knn", the local term alone), RDA's residual norm (the
    paper's score) from the same fit, and the plain autoencoder's errors scored the same way."""
    parts = {}
    if est.residual_scale_ is not None:
        statistics = tuple(torch.from_numpy(t) for t in (est.residual_scale_, est.code_center_, est.code_precision_))
        residual, code = score_terms(*(torch.as_tensor(a) for a in (X, est.L_, est.transform(X))), statistics)
        parts = {"RDA, residual term only": residual.numpy(), "RDA, code term only": code.numpy()}
        if est.neighbours_ is not None:
            parts["RDA, residual and code terms (no local term)"] = (residual + code).numpy()
    ae = autoencoder_scores(X, hidden=est.hidden_, epochs=epochs, batch_size=config["batch_size"],
                            lr=config["lr"], device=device, seed=seed, outlier_score=config["outlier_score"],
                            contamination=float(est.contamination))
    return {**parts, "RDA, residual norm (the paper's score)": np.linalg.norm(X - est.L_, axis=1),
            f"autoencoder, {config['outlier_score']}": ae}


def forest(X, is_out, seed) -> dict:
    rate = float(is_out.mean())
    f = IsolationForest(n_estimators=100, contamination=rate, random_state=seed).fit(X)
    return metrics(is_out, -f.score_samples(X), f.predict(X) == -1)


def run(names, grid, args) -> dict[str, dict]:
    """Fits what the work folder does not hold yet; returns {instance key: {cell: results}} of this
    run's instances and cells."""
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.jsonl"
    done, current = {}, {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done.setdefault(row["instance"], {})[row["cell"]] = row["result"]
    for name in names:
        for key, X, is_out, seed in instances(name, args):
            have = done.setdefault(key, {})
            todo = [c for c in ["IsolationForest", *grid] if c not in have]
            for cell in todo:
                if cell == "IsolationForest":
                    result = forest(X, is_out, seed)
                else:
                    result, scores = fit_cell(grid[cell], X, is_out, seed, args.device)
                    np.savez(work / f"{key} {cell}.npz".replace(" ", "_"), is_out=is_out, **scores)
                have[cell] = result
                with log.open("a") as f:  # one line per fit, written whole: a resumed sweep trusts it
                    f.write(json.dumps(dict(instance=key, cell=cell, result=result)) + "\n")
            if todo:
                print(f"{key}: IF F1 {have['IsolationForest']['f1']:.2f} | " + ", ".join(
                    f"{c} {have[c]['RDA']['f1']:.2f}/{have[c]['autoencoder']['f1']:.2f}" for c in grid), flush=True)
            current[key] = {c: have[c] for c in ["IsolationForest", *grid]}
    return current


def ensemble(keys, members, work: Path) -> list[dict]:
    out = []
    for key in keys:
        runs = [np.load(work / f"{key} {cell}.npz".replace(" ", "_")) for cell in members]
        is_out = runs[0]["is_out"]
        s = np.mean([robust_z(r["RDA"]) for r in runs], axis=0)
        out.append(metrics(is_out, s, top_rate(s, float(is_out.mean()))))
    return out


def summarise(done, names, grid, args) -> dict:
    out = {}
    for name in names:
        keys = [k for k in done if k.startswith(name + " ")]
        table = {"IsolationForest": {m: mean_sd([done[k]["IsolationForest"][m] for k in keys]) for m in ("f1", "auroc")}}
        for cell, config in grid.items():
            table[cell] = dict(config=config, **{
                method: {m: mean_sd([done[k][cell][method][m] for k in keys]) for m in ("f1", "auroc", "seconds")
                         if m in done[keys[0]][cell][method]}
                for method in done[keys[0]][cell]})
        ens = {e: {m: mean_sd([r[m] for r in rs]) for m in ("f1", "auroc")}
               for e, members in ENSEMBLES.items() if all(c in grid for c in members)
               for rs in [ensemble(keys, members, args.work)]}
        out[name] = dict(instances=len(keys), cells=table, ensembles=ens)
    return out


def heatmaps(summary, names, args) -> str:
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 3.2 * len(names)), squeeze=False)
    widths, schedules = list(WIDTHS), list(SCHEDULES)
    for row, name in zip(axes, names):
        cells_ = summary[name]["cells"]
        for ax, metric in zip(row, ("f1", "auroc")):
            grid = np.array([[cells_.get(f"{w} {s}", {}).get("RDA", {}).get(metric, {}).get("mean", np.nan)
                              for s in schedules] for w in widths])
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w" if v < np.nanmean(grid) else "k")
            iso = cells_["IsolationForest"][metric]["mean"]
            ax.set(xticks=range(len(schedules)), xticklabels=schedules, yticks=range(len(widths)), yticklabels=widths,
                   xlabel="outer iterations x inner epochs",
                   title=f"{name}: RDA mean {metric.upper()} (IsolationForest {iso:.3f})")
            fig.colorbar(im, ax=ax)
    return save_figure(fig, args, "sweep-heatmaps")


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--seeds", type=int, default=None, help="seeds per class (default 3, quick 1)")
    cli.add_argument("--datasets", nargs="+", choices=("fashion", "mnist", "fashion500"), default=None)
    cli.add_argument("--fashion-root", default=None, help="Fashion-MNIST IDX folder (default: the Debian package's)")
    cli.add_argument("--work", type=Path, default=Path("build/sweep"), help="scores of every fit, and the resume log")
    cli.add_argument("--extra", action="store_true", help="the longer schedules of EXTRA instead of the grid "
                     "(default data set: the MNIST subset; file sweep-extra-*.json)")
    cli.add_argument("--cells", nargs="+", default=None, help="only these cells of the grid, e.g. the defaults' "
                     "(file sweep-cells-*.json; a new --work folder, or the fits there are reused)")
    args = cli.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    names = args.datasets or (["mnist"] if args.quick or args.extra else ["mnist", "fashion"])
    grid = EXTRA if args.extra else cells()
    if args.quick:  # the grid's first cell and the defaults
        grid = {cell: grid[cell] for cell in (next(iter(grid)), DEFAULTS_CELL)}
    if args.cells:
        grid = {cell: grid[cell] for cell in args.cells}
    done = run(names, grid, args)
    summary = summarise(done, names, grid, args)
    for name in names:
        s = summary[name]
        iso = s["cells"]["IsolationForest"]
        print(f"{name} ({s['instances']} instances): IsolationForest F1 {iso['f1']['mean']:.3f} AUROC "
              f"{iso['auroc']['mean']:.3f}")
        for cell in grid:
            r, a = s["cells"][cell]["RDA"], s["cells"][cell]["autoencoder"]
            print(f"  {cell}: RDA F1 {r['f1']['mean']:.3f} AUROC {r['auroc']['mean']:.3f} | AE F1 "
                  f"{a['f1']['mean']:.3f} AUROC {a['auroc']['mean']:.3f}")
        for e, r in s["ensembles"].items():
            print(f"  ensemble {e}: F1 {r['f1']['mean']:.3f} AUROC {r['auroc']['mean']:.3f}")
    result = dict(mode="quick" if args.quick else "full", seeds=list(range(args.seeds)), fraction=0.05,
                  cells=grid, ensembles={e: m for e, m in ENSEMBLES.items() if all(c in grid for c in m)},
                  summary=summary, runs=done)
    if all(c in grid for c in (f"{w} {s}" for w in WIDTHS for s in SCHEDULES)):
        result["figure"] = heatmaps(summary, names, args)
    path = report_path("sweep-extra" if args.extra else "sweep-cells" if args.cells else "sweep", args)
    save_json(path, result, args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
