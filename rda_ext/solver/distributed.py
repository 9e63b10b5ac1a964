"""RDA on row shards: each rank of a ``torch.distributed`` group holds its rows of X, L, S and
LS_prev; the autoencoder is replicated: every rank holds the same network and averages each
step's gradients with the others (one all-reduce of all of them, ``RowGroup.shared_gradients``).

What is local and what is global, per penalty (``RowGroup`` does the exchanges):
- "l21_rows" and "l1": the proximal step is row-local; lam from ``contamination`` is an order
  statistic over all rows' norms or all entries, found by a distributed selection (no rank
  gathers another's values).
- "l21_cols": each column's norm spans all ranks: the ranks' partial column norms (d numbers) are
  combined before any rank shrinks; every rank then holds all d norms and chooses lam alone.
- c1, c2: each rank's three convergence norms (``convergence_step(norms=True)``) are combined,
  then divided.
- Training: the network is replicated (rank 0's weights, the gradients averaged at every step)
  and every rank runs the same number of steps per epoch (``Schedule.of_fit`` with lockstep: the
  most any rank's rows need at ``batch_size``), so that a shard a row shorter never leaves a
  gradient all-reduce waiting.

What the ranks must agree on: each rank passes its own estimator and rows, and ranks that take
different steps would wait in different collectives (a hang, or gloo's "collective mismatch").
Before its first collective a fit therefore all-gathers a short description of every rank's
parameters (``collectives.agree_on_parameters``), then the number of columns of its rows
(``agree_on_width``), and raises the same ValueError on every rank where they differ, naming the
parameter and which ranks have which value. All parameters must be equal except ``device`` (each
rank its own, e.g. the GPU of its LOCAL_RANK) and ``verbose`` (only rank 0 shows progress);
``checkpoint`` may be another path to the same folder on each rank (set on all ranks or on none),
and ``random_state`` may be None, a RandomState or a Generator on each rank (rank 0's draw is
broadcast; an integer seed must be the same integer on every rank). The rows' dtype may differ
(each rank converts them to the fit's dtype); a rank with no rows stops every rank with the error
of an empty X. A rank whose ``distributed`` is False never joins and cannot be detected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rda_ext import ops
from rda_ext.solver.collectives import RowGroup
from rda_ext.solver.loop import RDASolver


class DistributedRDASolver(RDASolver):
    """``RDASolver`` over this rank's rows; the history's numbers are global and the same on every
    rank. Its network trains replicated (``RowGroup.shared_gradients``) on the schedule's lockstep batches."""

    def __init__(self, X: Tensor, S: Tensor, LS_prev: Tensor, *, ranks: RowGroup, **kwargs):
        super().__init__(X, S, LS_prev, **kwargs)
        self.ranks = ranks

    def training_stats(self, train_loss: Tensor, recon_sq: Tensor) -> tuple[Tensor, Tensor]:
        total = self.ranks.sum(torch.stack([train_loss, recon_sq]))
        return total[0] / self.ranks.size, total[1]

    def residual_norms(self) -> Tensor | None:
        norms = super().residual_norms()
        if self.group_dim == 0:  # "all-reduce of the partial column norms"
            return self.ranks.norms(norms).to(norms.dtype)
        return norms

    def survival_threshold(self, norms: Tensor) -> float:
        if self.group_dim == 0:  # every rank holds all column norms
            return super().survival_threshold(norms)
        return self.ranks.survival_threshold(norms, self.contamination)

    def penalty_stats(self, lam: float) -> list[Tensor]:
        stats = super().penalty_stats(lam)
        if self.group_dim == 0:  # from the global column norms: the same on every rank
            return stats
        return list(self.ranks.sum(torch.stack(stats)))

    def convergence(self) -> Tensor:
        norms = self.ranks.norms(ops.convergence_step(self.X, self.L, self.S, self.LS_prev, norms=True))
        scale = torch.where(norms[0] > 0, norms[0], torch.ones_like(norms[0]))  # plain norms where X is 0
        return norms[1:] / scale
