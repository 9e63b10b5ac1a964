"""The main job: the outlier experiment of Zhou & Paffenroth (KDD'17, section 5.3) on the embedded
MNIST subset. The digit 4 is nominal, 5.2% of the rows are other digits; RDA with the estimator's
defaults (l21_rows) is compared with scikit-learn's IsolationForest, with a plain autoencoder of the
shape and schedule RDA kept (scored by its reconstruction error, and by RDA's default score), and with
RDA in the paper's setting (784-400-200, 20 x 10 epochs, the residual norm as the score). Then the
paper's construction with each digit nominal in turn, where one instance's luck averages out: RDA's
defaults, the paper's setting and IsolationForest on every digit, and their mean. Every detector
gets the true outlier rate and no labels (RDA through ``contamination``), and nothing else is set."""

from __future__ import annotations

import time

import numpy as np
import torch

from rda_ext.data.datasets import load_mnist_5k, make_outlier_set
from rda_ext.estimator import RobustAutoencoder, network_shape
from rda_ext.experiments.baselines import autoencoder_scores
from rda_ext.experiments.metrics import detection_report
from rda_ext.solver.schedule import resolve_inner_epochs

NOMINAL, FRACTION = 4, 0.052
DIGITS = tuple(range(10))
# The network and schedule of the paper's experiment, shown beside the defaults (whose hidden="auto"
# keeps a wide network here, and the narrow one on most of Fashion-MNIST: RESULTS.md).
PAPER_SETTING = dict(hidden=(400, 200), outer_iter=20, inner_epochs=10, batch_size=64, outlier_score="residual")
# The detectors of the construction's table: the five of the paper's instance less the two
# autoencoders, which only tell what RDA's score and decomposition add on it.
CONSTRUCTION = ("RDA (l21_rows)", "RDA (paper setting)", "IsolationForest")


def run_demo(seed: int = 0, device: str = "auto", digits=DIGITS, print_fn=print) -> dict:
    """Runs the five detectors on the paper's instance, then the construction's three on each of
    ``digits`` nominal (each once, in their order), and prints (through ``print_fn``) and returns
    their metrics."""
    try:
        from sklearn.ensemble import IsolationForest
    except ImportError:
        raise ValueError(
            "the demo compares against scikit-learn's IsolationForest: pip install scikit-learn "
            "(or rda_ext[experiments])"
        ) from None
    start = time.perf_counter()
    X_all, y_all = load_mnist_5k()
    X, is_out, _ = make_outlier_set(X_all, y_all, NOMINAL, FRACTION, seed)
    print_fn(
        f"MNIST subset: digit {NOMINAL} nominal, {int(is_out.sum())} of {len(X)} rows "
        f"({is_out.mean():.1%}) are other digits; {X.shape[1]} features"
    )
    rda, results = _construction_detectors(IsolationForest, X, is_out, seed, device)

    epochs = resolve_inner_epochs(rda.inner_epochs, len(X), rda.batch_size)
    outer_iter = network_shape.outer_iter_of(rda.hidden, rda.outer_iter, X.shape[1], rda.hidden_)
    # The shape RDA kept and its schedule, scored by the reconstruction error, and by RDA's default
    # score: what the score alone brings.
    for name, score in (("plain autoencoder", "residual"), ("autoencoder, RDA's score", rda.outlier_score)):
        t = time.perf_counter()
        scores = autoencoder_scores(X, rda.hidden_, outer_iter * epochs, rda.batch_size, rda.lr, device=device,
                                    seed=seed, outlier_score=score, contamination=FRACTION)
        flagged = scores > np.quantile(scores, 1 - FRACTION)
        results[name] = _timed(detection_report(is_out, scores, flagged), t)

    shape = network_shape.sizes_text((X.shape[1], *rda.hidden_))
    contrasts = {network_shape.sizes_text((X.shape[1], *h)): c for h, c in (rda.shape_contrast_ or {}).items()}
    if contrasts:
        contrast = ", ".join(f"{name} {c:.2f}" for name, c in contrasts.items())
        print_fn(f'RDA, hidden="auto": residual contrast {contrast}; kept {shape}')
    print_fn(f"RDA and the plain autoencoder: {shape}, {outer_iter} outer iterations x {epochs} epochs, "
             f"batch {rda.batch_size}")
    print_fn(f"RDA (paper setting): {network_shape.sizes_text((X.shape[1], *PAPER_SETTING['hidden']))}, "
             f"{PAPER_SETTING['outer_iter']} x {PAPER_SETTING['inner_epochs']} epochs, "
             f"batch {PAPER_SETTING['batch_size']}")
    print_fn(_table(results))
    construction = _construction(IsolationForest, X_all, y_all, seed, device, tuple(dict.fromkeys(digits)),
                                 results, print_fn)
    total = time.perf_counter() - start
    print_fn(f"total {total:.1f} s on {rda.model_.enc_weight[0].device}, torch threads {torch.get_num_threads()}")
    return {"methods": results, "seconds": total, "n_rows": len(X), "n_outliers": int(is_out.sum()),
            "rda_network": shape, "shape_contrast": contrasts, "construction": construction}


def _construction_detectors(IsolationForest, X, is_out, seed, device) -> tuple[RobustAutoencoder, dict]:
    """RDA's defaults, RDA in the paper's setting and IsolationForest on one instance: the fitted
    default estimator and the three reports, timed."""
    results = {}
    t = time.perf_counter()
    rda = RobustAutoencoder(contamination=FRACTION, device=device, random_state=seed).fit(X)
    results[CONSTRUCTION[0]] = _timed(detection_report(is_out, rda.decision_scores_, rda.labels_), t)

    t = time.perf_counter()
    paper = RobustAutoencoder(contamination=FRACTION, device=device, random_state=seed, **PAPER_SETTING).fit(X)
    results[CONSTRUCTION[1]] = _timed(detection_report(is_out, paper.decision_scores_, paper.labels_), t)

    t = time.perf_counter()
    forest = IsolationForest(n_estimators=100, contamination=FRACTION, random_state=seed).fit(X)
    scores = -forest.score_samples(X)
    results[CONSTRUCTION[2]] = _timed(detection_report(is_out, scores, forest.predict(X) == -1), t)
    return rda, results


def _construction(IsolationForest, X_all, y_all, seed, device, digits, paper_instance: dict, print_fn) -> dict:
    """The construction's detectors with each of ``digits`` nominal (the paper's own instance, digit
    NOMINAL, from ``paper_instance``): F1 and AUROC per digit and their means, printed and returned."""
    per_digit = {}
    for digit in digits:
        if digit == NOMINAL:
            reports = paper_instance
        else:
            X, is_out, _ = make_outlier_set(X_all, y_all, digit, FRACTION, seed)
            reports = _construction_detectors(IsolationForest, X, is_out, seed, device)[1]
        per_digit[str(digit)] = {name: {"f1": reports[name]["f1"], "auroc": reports[name]["auroc"]}
                                 for name in CONSTRUCTION}
    mean = {name: {m: float(np.mean([r[name][m] for r in per_digit.values()])) for m in ("f1", "auroc")}
            for name in CONSTRUCTION}
    print_fn(f"\nThe paper's construction: each digit nominal in turn, {FRACTION:.1%} other digits, seed {seed}; "
             "F1 / AUROC")
    head = f"{'nominal':<9}" + "".join(f"{name:>22}" for name in CONSTRUCTION)
    rows = [head, "-" * len(head)]
    for label, r in [*per_digit.items(), ("mean", mean)]:
        rows.append(f"{label:<9}" + "".join(f"{r[name]['f1']:>14.3f} / {r[name]['auroc']:.3f}" for name in CONSTRUCTION))
    print_fn("\n".join(rows))
    return {"seed": seed, "fraction": FRACTION, "digits": per_digit, "mean": mean}


def _timed(report: dict, t0: float) -> dict:
    report["seconds"] = time.perf_counter() - t0
    return report


def _table(results: dict) -> str:
    head = f"{'method':<25}{'flagged':>8}{'precision':>10}{'recall':>8}{'F1':>7}{'AUROC':>7}{'AP':>7}{'P@10':>6}{'time':>8}"
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        rows.append(
            f"{name:<25}{r['n_flagged']:>8}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>7.3f}"
            f"{r['auroc']:>7.3f}{r['ap']:>7.3f}{r['p_at_k']:>6.2f}{r['seconds']:>7.1f}s"
        )
    return "\n".join(rows)
