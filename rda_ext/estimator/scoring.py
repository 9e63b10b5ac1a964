"""The outlier score of a row, from a fitted decomposition.

"residual" is the norm of the row's residual r = x - L, the paper's detector (for "l21_rows" its
threshold is lam, and the rows above it are those where S is non-zero). "residual+code" (the
default) reads the residual and the hidden code z = encode(x) as a Gaussian model of the rows the
fit keeps:

    score = mean_j (r_j / sigma_j)^2  +  (z - mu)' Sigma^+ (z - mu) / k

The reference rows are those whose residual norm is at most the (1 - contamination) quantile
(with "l21_rows" and lam from contamination, about the rows S leaves at zero). sigma_j is the root
mean square of residual column j over them, floored at ``RESIDUAL_FLOOR`` times the mean sigma so
that a feature that never varies (an image's border) cannot dominate; mu and Sigma are the mean
and covariance of their codes, Sigma^+ its pseudo-inverse, k the code width. On the reference
rows the code term averages 1 (rank(Sigma) / k) and the residual term a little less (the floor).
The first term finds rows the network cannot reconstruct, each feature measured at the scale it
is reconstructed at; the second finds rows reconstructed from a code unlike the reference rows'
codes. The label-free sweep (benchmarks/RESULTS.md) measures each term alone and the plain
autoencoder scored the same way.

The statistics are sums over rows, so that a row-sharded fit all-reduces them. They and the
scores are computed in float64 over chunks of rows, never a second n x d matrix; the caller
computes the codes (n x k) once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from rda_ext.solver.collectives import SINGLE_PROCESS, RowGroup
from rda_ext.solver.training import CHUNK_ROWS, in_precision, map_chunks

RESIDUAL_FLOOR = 0.1

Statistics = tuple[Tensor, Tensor, Tensor]  # sigma, mu, Sigma^+


def _chunks(X: Tensor, L: Tensor, Z: Tensor) -> Iterator[tuple[slice, Tensor, Tensor, Tensor]]:
    """(rows, x, residual x - L, code) over row chunks, the residual and code in float64."""
    for start in range(0, X.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        x = X[rows]
        yield rows, x, (x - L[rows]).to(torch.float64), Z[rows].to(torch.float64)


@torch.no_grad()
def fit_statistics(X: Tensor, L: Tensor, Z: Tensor, reference: Tensor, ranks: RowGroup = SINGLE_PROCESS) -> Statistics:
    """(sigma (d,), mu (k,), Sigma^+ (k, k)), float64 on X's device, from the rows of X (with their
    reconstruction L and code Z) where ``reference`` is True, over all ranks' rows when ``ranks``
    is given. The covariance is summed about the mean, which a code unit of small variance needs."""
    d, k = X.shape[1], Z.shape[1]
    sums = torch.zeros(d + k + 2, dtype=torch.float64, device=X.device)
    for rows, x, r, z in _chunks(X, L, Z):
        keep = reference[rows]
        sums[:d] += r[keep].square().sum(0)
        sums[d : d + k] += z[keep].sum(0)
        sums[-2] += x[keep].to(torch.float64).square().sum()
        sums[-1] += keep.sum()
    sums = ranks.sum(sums)  # squared residuals, codes, squared entries and the count of the reference rows
    count = sums[-1].clamp(min=1)
    rms = (sums[:d] / count).sqrt()
    # Residuals below X's rounding are no scale: a network that reconstructs the reference rows
    # exactly must not divide by zero.
    rounding = torch.finfo(X.dtype).eps * (sums[-2] / (count * d)).sqrt()
    sigma = (rms + RESIDUAL_FLOOR * rms.mean()).clamp(min=max(float(rounding), torch.finfo(torch.float64).tiny))
    mu = sums[d : d + k] / count
    scatter = torch.zeros(k, k, dtype=torch.float64, device=X.device)
    for start in range(0, Z.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        dz = Z[rows][reference[rows]].to(torch.float64) - mu
        scatter += dz.T @ dz
    scatter = ranks.sum(scatter)  # the reference rows' code products about mu
    return sigma, mu, torch.linalg.pinv(scatter / count, hermitian=True)


@torch.no_grad()
def score_terms(X: Tensor, L: Tensor, Z: Tensor, statistics: Statistics) -> tuple[Tensor, Tensor]:
    """The residual term and the code term of the "residual+code" score (float64) of each row of X,
    with its reconstruction L and code Z, under ``fit_statistics``' numbers."""
    sigma, mu, precision = statistics
    residual = torch.empty(X.shape[0], dtype=torch.float64, device=X.device)
    code = torch.empty_like(residual)
    for rows, _, r, z in _chunks(X, L, Z):
        dz = z - mu
        residual[rows] = (r / sigma).square().mean(1)
        code[rows] = ((dz @ precision) * dz).sum(1) / mu.shape[0]
    return residual, code.clamp_(min=0)  # a code on a degenerate axis of Sigma may round below 0


def row_scores(X: Tensor, L: Tensor, Z: Tensor, statistics: Statistics) -> Tensor:
    """The "residual+code" score of each row of X (float64), with its reconstruction L and code Z."""
    residual, code = score_terms(X, L, Z, statistics)
    return residual + code


def fitted_scores(outlier_score: str, penalty: str, contamination: float, solver, model, amp, lam: float,
                  ranks: RowGroup) -> tuple[Tensor, float, np.ndarray, Statistics | None]:
    """The scores of a finished fit's training rows (float64), its threshold, labels (int64 numpy)
    and the statistics of the "residual+code" score (None for "residual"). The codes of the
    training rows are computed once, in the fit's precision ``amp``."""
    residuals = solver.row_scores().to(torch.float64)
    statistics = None
    scores = residuals
    if outlier_score == "residual+code":
        codes = map_chunks(in_precision(model.encode, amp), solver.X)
        reference = residuals <= ranks.quantile(residuals, 1.0 - contamination)
        statistics = fit_statistics(solver.X, solver.L, codes, reference, ranks)
        scores = row_scores(solver.X, solver.L, codes, statistics)
    if outlier_score == "residual" and penalty == "l21_rows":
        # The rows above lam are those where S is non-zero.
        return scores, lam, solver.nonzero_groups(lam).cpu().numpy().astype(np.int64), statistics
    threshold = ranks.quantile(scores, 1.0 - contamination)
    return scores, threshold, (scores > threshold).cpu().numpy().astype(np.int64), statistics
