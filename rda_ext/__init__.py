"""Robust Deep Autoencoders with fused C++/CUDA proximal kernels."""

from rda_ext._build import _C, build_info
from rda_ext.estimator import RobustAutoencoder
from rda_ext.estimator.regularization_path import lambda_path
from rda_ext.estimator.sklearn_protocol import NotFittedError
from rda_ext.estimator.stacked_fit import fit_together
from rda_ext.solver import TrainingDiverged
from rda_ext.ops import (
    convergence,
    convergence_step,
    group_norms,
    group_shrink,
    shrink_residual,
    soft_threshold,
)

# From the compiled module itself: build_info() would ask torch about the GPU, and creating a CUDA
# context at import breaks a later fork.
__version__ = _C.build_info()["version"]

__all__ = [
    "RobustAutoencoder",
    "build_info",
    "NotFittedError",
    "TrainingDiverged",
    "fit_together",
    "convergence",
    "convergence_step",
    "group_norms",
    "group_shrink",
    "lambda_path",
    "shrink_residual",
    "soft_threshold",
]
