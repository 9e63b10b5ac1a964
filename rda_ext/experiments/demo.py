"""The main job: the outlier experiment of Zhou & Paffenroth (KDD'17, section 5.3) on the embedded
MNIST subset. The digit 4 is nominal, 5.2% of the rows are other digits; RDA with the estimator's
defaults (l21_rows) is compared with scikit-learn's IsolationForest, with a plain autoencoder of the
shape and schedule RDA kept (scored by its reconstruction error, and by RDA's default score), and with
RDA in the paper's setting (784-400-200, 20 x 10 epochs, the residual norm as the score). Every
detector gets the true outlier rate and no labels (RDA through ``contamination``), and nothing else
is set."""

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
# The network and schedule of the paper's experiment, shown beside the defaults (whose hidden="auto"
# keeps a wide network here, and the narrow one on most of Fashion-MNIST: RESULTS.md).
PAPER_SETTING = dict(hidden=(400, 200), outer_iter=20, inner_epochs=10, batch_size=64, outlier_score="residual")


def run_demo(seed: int = 0, device: str = "auto", print_fn=print) -> dict:
    """Runs the five detectors and prints (through ``print_fn``) and returns their metrics."""
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
    results = {}

    t = time.perf_counter()
    rda = RobustAutoencoder(contamination=FRACTION, device=device, random_state=seed).fit(X)
    results["RDA (l21_rows)"] = _timed(detection_report(is_out, rda.decision_scores_, rda.labels_), t)

    t = time.perf_counter()
    paper = RobustAutoencoder(contamination=FRACTION, device=device, random_state=seed, **PAPER_SETTING).fit(X)
    results["RDA (paper setting)"] = _timed(detection_report(is_out, paper.decision_scores_, paper.labels_), t)

    t = time.perf_counter()
    forest = IsolationForest(n_estimators=100, contamination=FRACTION, random_state=seed).fit(X)
    scores = -forest.score_samples(X)
    results["IsolationForest"] = _timed(detection_report(is_out, scores, forest.predict(X) == -1), t)

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
    total = time.perf_counter() - start
    print_fn(f"total {total:.1f} s on {rda.model_.enc_weight[0].device}, torch threads {torch.get_num_threads()}")
    return {"methods": results, "seconds": total, "n_rows": len(X), "n_outliers": int(is_out.sum()),
            "rda_network": shape, "shape_contrast": contrasts}


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
