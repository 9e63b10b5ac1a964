"""Robust Deep Autoencoders with fused C++/CUDA proximal kernels."""

from rda_ext._build import build_info
from rda_ext.estimator import RobustAutoencoder, lambda_path
from rda_ext.ops import (
    convergence,
    group_norms,
    group_shrink,
    shrink_residual,
    soft_threshold,
)

__version__ = build_info()["version"]

__all__ = [
    "RobustAutoencoder",
    "build_info",
    "convergence",
    "group_norms",
    "group_shrink",
    "lambda_path",
    "shrink_residual",
    "soft_threshold",
]
