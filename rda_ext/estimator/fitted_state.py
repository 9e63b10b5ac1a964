"""What a fit leaves on a ``RobustAutoencoder``, declared once: the fitted attributes (ending in
``_``, as scikit-learn's) and the private facts of the fit that a warm start and a model file need.
``fit``, ``fit_together``, the model file, the command line's outputs, ``lambda_path`` and the PyOD
adapter all read and write it through ``FittedState``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from rda_ext.estimator.sklearn_protocol import check_fitted
from rda_ext.solver.autoencoder import DeepAutoencoder


def _per_row():
    """A field with one entry per training row: a rank of a row-sharded fit holds its rows' part."""
    return field(metadata={"per_row": True})


@dataclass
class FittedState:
    model_: DeepAutoencoder
    n_features_in_: int
    n_iter_: int
    history_: list[dict]
    lam_: float
    L_: object = _per_row()  # numpy array or tensor, as X; None in a model file saved without data
    S_: object = _per_row()
    decision_scores_: np.ndarray = _per_row()
    labels_: np.ndarray = _per_row()
    threshold_: float = 0.0
    center_: np.ndarray | None = None  # the scaling of ``preprocessing``, float64 per column
    scale_: np.ndarray | None = None
    residual_scale_: np.ndarray | None = None  # the statistics of the "residual+code" score
    code_center_: np.ndarray | None = None
    code_precision_: np.ndarray | None = None
    neighbours_: np.ndarray | None = None  # the local term of "residual+code+knn" and "knn"
    term_spread_: np.ndarray | None = None  # None for "knn"
    # hidden="auto" with several candidate shapes: the contrast of each (network_shape), else None.
    shape_contrast_: dict[tuple[int, ...], float] | None = None
    # The optimizer a warm start continues (None after fit_together or a model file: a fresh one).
    _optim: torch.optim.Optimizer | None = None
    # The seed of the next fit's batch orders: a warm start draws new ones.
    _batch_seed: int = 0
    # What the fit ran with, which set_params cannot change until the next one: the precision new
    # rows go through the network in, the preprocessing a warm start must keep, and the fingerprint
    # of the data its S belongs to (None where unknown).
    _fit_precision: str = "float32"
    _fit_preprocessing: str = "none"
    _fit_fingerprint: str | None = None

    @classmethod
    def of(cls, est) -> FittedState:
        """The state of a fitted estimator (NotFittedError before a fit). One unpickled from before
        the fit's facts were kept ran with its parameters and has no fingerprint (None)."""
        check_fitted(est)
        defaults = dict(_fit_precision=est.precision, _fit_preprocessing=est.preprocessing)
        return cls(**{f.name: getattr(est, f.name, defaults.get(f.name)) for f in fields(cls)})

    def apply(self, est):
        """Sets every field on ``est``; returns it. Rows that are None (L_ and S_ of a model file
        saved without data, which ``load`` applies to a new estimator) are not set: the estimator
        then has no such attribute, as scikit-learn's."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not (value is None and f.metadata.get("per_row")):
                setattr(est, f.name, value)
        return est
