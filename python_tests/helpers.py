"""Plain helpers shared by the test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import os

import numpy as np

# A small network for the estimator's tests on planted data.
SMALL = dict(hidden=(16, 4), outer_iter=6, inner_epochs=10, batch_size=16, lr=1e-2, activation="elu")

# A tiny fit (one hidden layer of 4 units, 2 outer iterations of one epoch) and the 48 rows it is fitted on.
TINY = dict(hidden=(4,), outer_iter=2, inner_epochs=1, batch_size=16, device="cpu", random_state=0)
TINY_X = np.random.default_rng(12345).random((48, 6)).astype(np.float32)

# The names of the temporary files that rda_ext.io.atomic writes before renaming them.
TEMP_PREFIXES = (".rda-ext-tmp", ".tmp-")


def planted(seed, n=300, d=30, n_out=15):
    """Rows on a 3-dimensional manifold in [0, 1]^d, plus uniform random outlier rows."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((3, d)) * 2
    X = 1 / (1 + np.exp(-(rng.standard_normal((n, 3)) @ W)))
    is_out = np.zeros(n, int)
    rows = rng.choice(n, n_out, replace=False)
    X[rows] = rng.random((n_out, d))
    is_out[rows] = 1
    return X.astype(np.float32), is_out


def timeless(history: list[dict]) -> list[dict]:
    """A history without the seconds taken, which differ between two runs of the same fit."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def assert_same_model(a, b) -> None:
    """Two fitted estimators give the same scores, labels and history, on TINY_X as well."""
    np.testing.assert_array_equal(a.decision_function(TINY_X), b.decision_function(TINY_X))
    np.testing.assert_array_equal(a.predict(TINY_X), b.predict(TINY_X))
    assert a.threshold_ == b.threshold_ and a.lam_ == b.lam_
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert timeless(a.history_) == timeless(b.history_)


def temps(folder):
    """The temporary files left in ``folder``, sorted by name."""
    return sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIXES))
