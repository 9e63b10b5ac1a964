"""Outlier-detection metrics in numpy (the core package does not depend on scikit-learn; the tests
check these against it). ``y_true`` holds 1 for outliers, 0 for inliers; higher scores mean more
outlying."""

from __future__ import annotations

import numpy as np


def _labels_and_scores(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} entries but scores has {len(s)}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def precision_recall_f1(y_true, y_pred) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted outliers (0 where undefined)."""
    y, p = np.asarray(y_true).astype(bool).ravel(), np.asarray(y_pred).astype(bool).ravel()
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} entries but y_pred has {len(p)}")
    tp = int(np.sum(y & p))
    precision = tp / max(int(p.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return precision, recall, f1


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: the probability that an outlier outscores an inlier, ties
    counting one half (Mann-Whitney U over average ranks)."""
    y, s = _labels_and_scores(y_true, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both outliers and inliers in y_true")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s))
    # Average rank (1-based) of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true, scores) -> float:
    """Average precision: the precision at each distinct score threshold, weighted by the recall
    it adds (scikit-learn's definition, no interpolation)."""
    y, s = _labels_and_scores(y_true, scores)
    if not y.any():
        raise ValueError("average_precision needs at least one outlier in y_true")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last_of_run = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(y)[last_of_run]
    precision = tp / (last_of_run + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_at_k(y_true, scores, k: int = 10) -> float:
    """Fraction of outliers among the ``k`` highest scores."""
    y, s = _labels_and_scores(y_true, scores)
    if not 0 < k <= len(s):
        raise ValueError(f"k must be between 1 and {len(s)}, got {k}")
    return float(y[np.argsort(-s, kind="mergesort")[:k]].mean())


def detection_report(y_true, scores, y_pred, k: int = 10) -> dict:
    """All of the above for one detector, as a dict."""
    precision, recall, f1 = precision_recall_f1(y_true, y_pred)
    return dict(
        precision=precision, recall=recall, f1=f1, auroc=roc_auc(y_true, scores),
        ap=average_precision(y_true, scores), p_at_k=precision_at_k(y_true, scores, k),
        n_flagged=int(np.asarray(y_pred).astype(bool).sum()),
    )
