"""The estimator: RobustAutoencoder with its scikit-learn protocol and model file, lambda_path,
fit_together (several estimators in one batched training), and
(with PyOD installed) the PyOD adapter in rda_ext.estimator.pyod_detector."""

from rda_ext.estimator.regularization_path import lambda_path
from rda_ext.estimator.robust_autoencoder import RobustAutoencoder
from rda_ext.estimator.stacked_fit import fit_together

__all__ = ["RobustAutoencoder", "fit_together", "lambda_path"]
