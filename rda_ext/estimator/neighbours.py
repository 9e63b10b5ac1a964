"""The local term of the "residual+code+knn" and "knn" scores: a row's distance to its ``K``-th
nearest neighbour among a sample of the reference rows (those the fit keeps, as for the other
terms), in the network's input space.

The residual and code terms find rows the network reconstructs badly or from an unusual code; a
row inside a sparse region between dense ones is reconstructed well from a typical code, and only
its distance to its neighbours tells it (the "local" tables of ADBench, where kNN detectors win:
benchmarks/RESULTS.md). The neighbours are at most ``SAMPLE_ROWS`` reference rows drawn at random,
so that the term costs O(rows x SAMPLE_ROWS x features) whatever the size of the data, and so that a
dense cluster of anomalies far from the rest, which a full neighbour set would hide behind its
own members, keeps few of them in the sample (as IsolationForest subsamples for the same reason).
A training row that is in the sample does not count itself."""

from __future__ import annotations

import torch
from torch import Tensor

from rda_ext.solver.collectives import RowGroup

K = 10
SAMPLE_ROWS = 1000
# Row chunks of about this many distances: a chunk's distances stay in the cache for the selection.
CHUNK_DISTANCES = 1 << 20


def sample(X: Tensor, reference: Tensor, seed: int, ranks: RowGroup, size: int | None = None) -> tuple[Tensor, Tensor]:
    """(the neighbour rows (m, d), the same on every rank, and for each row of X its index among
    them, or -1). All reference rows where there are at most ``size`` (default ``SAMPLE_ROWS``) over
    all ranks, else that many drawn at random (from ``seed`` and the rank), each rank giving its
    share of its own."""
    mine = torch.nonzero(reference).squeeze(1)
    counts = ranks.rows_per_rank(mine.numel())
    shares = _shares(counts, min(sum(counts), SAMPLE_ROWS if size is None else size))
    if shares[ranks.rank] < mine.numel():
        draw = torch.Generator().manual_seed(seed + ranks.rank)
        picked = torch.randperm(mine.numel(), generator=draw)[: shares[ranks.rank]].to(mine.device)
        mine = mine[picked.sort().values]
    neighbours = ranks.all_rows(X[mine], shares)
    position = torch.full((X.shape[0],), -1, dtype=torch.int64, device=X.device)
    position[mine] = sum(shares[: ranks.rank]) + torch.arange(mine.numel(), device=X.device)
    return neighbours, position


def _shares(counts: list[int], total: int) -> list[int]:
    """``total`` rows split over the ranks in proportion to their ``counts`` (none above its count):
    the floors of the proportional shares, the rest one each to the ranks in order."""
    available = sum(counts)
    shares = [c * total // available if available else 0 for c in counts]
    for rank, count in enumerate(counts):
        if sum(shares) == total:
            break
        if shares[rank] < count:
            shares[rank] += 1
    return shares


def neighbours_used(neighbours: Tensor) -> int:
    """The K of a neighbour set: ``K``, or fewer where the set is small (a row of the set has one
    neighbour fewer: the same K for every row). 0 where no row has a neighbour."""
    return max(min(K, neighbours.shape[0] - 1), 0)


@torch.no_grad()
def kth_distance(X: Tensor, neighbours: Tensor, position: Tensor | None = None) -> Tensor:
    """The distance of each row of X to its K-th nearest row of ``neighbours``, not counting the
    neighbour at ``position`` (a training row's own index in the set, or -1); 0 for every row where
    the set is too small to have a K. Computed in X's dtype (of rows centred on the neighbours'
    mean, from their products), returned as float64."""
    k = neighbours_used(neighbours)
    out = torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    if k == 0 or X.shape[0] == 0:
        return out
    neighbours = neighbours.to(X.dtype)
    center = neighbours.mean(0)  # distances of centred rows lose less to cancellation
    centred = neighbours - center
    norms = centred.square().sum(1)
    rows = max(1, CHUNK_DISTANCES // neighbours.shape[0])
    for start in range(0, X.shape[0], rows):
        chunk = slice(start, start + rows)
        q = X[chunk] - center
        # |q - n|^2 = |q|^2 + |n|^2 - 2 q.n: a row's |q|^2 does not change which neighbour is its
        # K-th, so it is added to that one alone, and only its root is taken (the selection over
        # the m distances is most of the cost).
        partial = torch.addmm(norms, q, centred.T, alpha=-2)
        if position is not None:
            own = torch.nonzero(position[chunk] >= 0).squeeze(1)
            partial[own, position[chunk][own]] = torch.inf
        kth = partial.topk(k, dim=1, largest=False).values[:, -1]
        out[chunk] = (kth + q.square().sum(1)).clamp_(min=0).sqrt_().to(torch.float64)
    return out
