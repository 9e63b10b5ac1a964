"""Plain helpers shared by the test modules (imported as `from helpers import ...`)."""

import numpy as np


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
