"""The estimator: RobustAutoencoder with its scikit-learn protocol and model file, lambda_path, and
(with PyOD installed) the PyOD adapter in rda_ext.estimator.pyod_detector."""

from rda_ext.estimator.regularization_path import lambda_path
from rda_ext.estimator.robust_autoencoder import RobustAutoencoder

__all__ = ["RobustAutoencoder", "lambda_path"]
