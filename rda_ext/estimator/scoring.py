"""The outlier score of a row, from a fitted decomposition.

"residual" is the norm of the row's residual r = x - L, the paper's detector (for "l21_rows" its
threshold is lam, and the rows above it are those where S is non-zero). "residual+code" reads
the residual and the hidden code z = encode(x) as a Gaussian model of the rows the
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

"residual+code+knn" (the default) adds a local term, the distance of the row to its K-th nearest
neighbour among a sample of the reference rows (neighbours.py), each of the two divided by its
spread over the training rows:

    score = residual+code / spread(residual+code)  +  distance / spread(distance)

The first two terms find what the network models badly; the third finds rows in sparse regions
that it models well. "knn" is the local term alone: the network then only chooses the reference
rows the neighbours are drawn from (about those S leaves at zero). benchmarks/RESULTS.md measures
what each is worth on ADBench's tables, a table the network can compress and the images.

The statistics are sums over rows, so that a row-sharded fit all-reduces them. They and the
scores are computed in float64 over chunks of rows, never a second n x d matrix; the caller
computes the codes (n x k) once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rda_ext.estimator import neighbours
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


@dataclass
class LocalTerm:
    """The local term of "residual+code+knn" and "knn": the neighbour rows (neighbours.py) and, for
    "residual+code+knn", the spread over the training rows of the "residual+code" score and of the
    distance to the K-th neighbour, by which each is divided before they are added (so that neither
    outweighs the other by its units); None for "knn", the distance alone."""

    neighbours: Tensor  # (m, d), in the network's input space
    spread: Tensor | None  # (2,) float64

    def combine(self, scores: Tensor | None, distances: Tensor) -> Tensor:
        if self.spread is None:
            return distances
        return scores / self.spread[0] + distances / self.spread[1]

    def scores(self, X: Tensor, scores: Tensor | None = None) -> Tensor:
        """The score of rows X of new data, with their "residual+code" ``scores`` (None for "knn")."""
        return self.combine(scores, neighbours.kth_distance(X, self.neighbours))


def spread(values: Tensor, ranks: RowGroup) -> float:
    """How widely ``values`` (>= 0, over all ranks) lie about their median: the median absolute
    deviation, or where that is 0 (half of them or more equal, as duplicate rows at distance 0) the
    mean absolute deviation, or 1 where all are equal."""
    deviation = (values - ranks.quantile(values, 0.5)).abs()
    mad = ranks.quantile(deviation, 0.5)
    if mad > 0:
        return mad
    mean = float(ranks.sum(deviation.sum())) / max(ranks.count(values.numel()), 1)
    return mean if mean > 0 else 1.0


def reference_scores(outlier_score: str, X: Tensor, L: Tensor, Z: Tensor, reference: Tensor, seed: int,
                     ranks: RowGroup = SINGLE_PROCESS) -> tuple[Tensor, Statistics | None, LocalTerm | None]:
    """The "residual+code", "residual+code+knn" or "knn" ``outlier_score`` of the rows of X (float64),
    with their reconstruction L and code Z (neither read for "knn"), measured on the rows where
    ``reference`` is True (over all ranks), with its statistics (None for "knn") and local term
    (None for "residual+code"), its neighbours drawn from ``seed``."""
    if outlier_score == "knn":
        rows, position = neighbours.sample(X, reference, seed, ranks)
        return neighbours.kth_distance(X, rows, position), None, LocalTerm(rows, None)
    statistics = fit_statistics(X, L, Z, reference, ranks)
    scores = row_scores(X, L, Z, statistics)
    if outlier_score != "residual+code+knn":
        return scores, statistics, None
    rows, position = neighbours.sample(X, reference, seed, ranks)
    distances = neighbours.kth_distance(X, rows, position)
    local = LocalTerm(rows, torch.tensor([spread(scores, ranks), spread(distances, ranks)], dtype=torch.float64,
                                         device=scores.device))
    return local.combine(scores, distances), statistics, local


def fitted_scores(outlier_score: str, penalty: str, contamination: float, solver, model, amp, lam: float,
                  seed: int, ranks: RowGroup) -> tuple[Tensor, float, np.ndarray, Statistics | None, LocalTerm | None]:
    """The scores of a finished fit's training rows (float64), its threshold, labels (int64 numpy),
    the statistics of the "residual+code" score (None for "residual" and "knn") and the local term
    of "residual+code+knn" and "knn" (else None; its neighbours drawn from ``seed``). The codes of the
    training rows are computed once (not for "knn"), in the fit's precision ``amp``."""
    residuals = solver.row_scores().to(torch.float64)
    statistics = local = None
    scores = residuals
    if outlier_score != "residual":
        codes = None if outlier_score == "knn" else map_chunks(in_precision(model.encode, amp), solver.X)
        reference = residuals <= ranks.quantile(residuals, 1.0 - contamination)
        scores, statistics, local = reference_scores(outlier_score, solver.X, solver.L, codes, reference, seed, ranks)
    if outlier_score == "residual" and penalty == "l21_rows":
        # The rows above lam are those where S is non-zero.
        return scores, lam, solver.nonzero_groups(lam).cpu().numpy().astype(np.int64), statistics, local
    threshold = ranks.quantile(scores, 1.0 - contamination)
    return scores, threshold, (scores > threshold).cpu().numpy().astype(np.int64), statistics, local
