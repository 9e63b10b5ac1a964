"""``RDADetector``: a ``RobustAutoencoder`` as a PyOD detector, so that PyOD's thresholds,
``predict_proba``, ``predict_confidence`` and utilities work on RDA's outlier scores.

Optional: it needs PyOD (``pip install pyod``, or the extra ``pip install 'rda_ext[pyod]'``)."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

try:
    from pyod.models.base import BaseDetector
except ImportError as e:
    raise ImportError(
        "rda_ext.estimator.pyod_detector needs PyOD, which is not installed: pip install pyod "
        "(or pip install 'rda_ext[pyod]')"
    ) from e

# scikit-learn is a dependency of PyOD, so it is present once PyOD imported.
from sklearn.utils.validation import check_is_fitted

from rda_ext.estimator import RobustAutoencoder

__all__ = ["RDADetector"]


class RDADetector(BaseDetector):
    """PyOD detector scoring rows by a Robust Deep Autoencoder (``RobustAutoencoder``).

    Parameters
    ----------
    estimator : an unfitted ``RobustAutoencoder`` whose parameters ``fit`` trains with (None:
        ``RobustAutoencoder()``). It is used as a template and never fitted itself.
    contamination : PyOD's expected fraction of outliers. ``fit`` passes it to the estimator,
        which accepts (0, 0.5). A PyOD thresholder object (PyThresh) is accepted too: it sets
        the labels, and the estimator keeps its own ``contamination`` for choosing lam.

    Fitted attributes
    -----------------
    estimator_ : the fitted ``RobustAutoencoder``.
    decision_scores_ : ``estimator_.decision_scores_``, the estimator's ``outlier_score`` of each training row.
    threshold_, labels_ : the estimator's (``estimator_.threshold_``, ``estimator_.labels_``), so
        that the adapter and the estimator flag the same rows and ``predict`` agrees with
        ``estimator_.predict``. With a thresholder object, the thresholder's (PyOD's own way).
    """

    def __init__(self, estimator: RobustAutoencoder | None = None, contamination: float = 0.1) -> None:
        super().__init__(contamination=contamination)
        self.estimator = estimator

    def fit(self, X: ArrayLike | torch.Tensor, y: ArrayLike | None = None) -> RDADetector:
        """Fits a copy of ``estimator`` on X (rows = instances); ``y`` is ignored, as in PyOD."""
        self._set_n_classes(y)
        template = RobustAutoencoder() if self.estimator is None else self.estimator
        params = template.get_params()
        # The same test BaseDetector applies to tell a fraction from a thresholder object.
        if isinstance(self.contamination, (float, int)):
            params["contamination"] = self.contamination
        # A fresh estimator per fit: fitting the template would change the caller's object and
        # make a warm_start template continue from an earlier fit.
        self.estimator_ = type(template)(**params).fit(X)
        self.decision_scores_ = self.estimator_.decision_scores_
        self._process_decision_scores()  # PyOD's statistics of the scores, which predict_proba uses
        if isinstance(self.contamination, (float, int)):
            # One threshold: the estimator's own, rather than PyOD's percentile of the same scores.
            self.threshold_ = self.estimator_.threshold_
            self.labels_ = np.asarray(self.estimator_.labels_, dtype=np.int64)
        return self

    def decision_function(self, X: ArrayLike | torch.Tensor) -> np.ndarray:
        """Outlier score of each row of X (float64 numpy): the estimator's ``decision_function``."""
        check_is_fitted(self, "estimator_")
        # PyOD scales and compares scores with numpy, also for a tensor X (which may be on a GPU):
        # scored as numpy, a tensor's rows get the float64 scores its numpy copy gets.
        if isinstance(X, torch.Tensor):
            X = X.detach().to("cpu", torch.float64).numpy()
        return self.estimator_.decision_function(X)
