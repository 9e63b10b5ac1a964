"""One RDA fit over tensors: X = L + S with L from a deep autoencoder and S sparse.

``RDASolver`` holds a fit's X, L, S and the previous L + S, and takes the proximal half of an outer
iteration once the network has set L = AE(X - S) (``solver.engine`` runs the iterations): it
chooses lam (given, or from a contamination fraction), sets S = prox(X - L) and measures the
convergence numbers. Nothing here converts, validates or stores: the estimator does.

The steps that combine numbers over all groups, and so would need a collective in a run whose
rows are split over processes, are methods of their own: ``residual_norms`` (the column norms of
"l21_cols" span all rows), ``contamination_lam`` (a quantile over all groups) and
``convergence`` (sums over all entries). The rest is row-local.

The proximal step reads the residual X - L for its group norms, shrinks it with those norms
(``shrink_residual``), and measures c1 and c2 while moving LS_prev on to L + S in one pass
(``convergence_step``): the norms of S follow from the residual's, max(0, ||R_g|| - lam), without
reading S, and "l1" writes |X - L| into S to select its lam from before the shrinkage overwrites it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rda_ext import ops

HISTORY_KEYS = ("iteration", "lam", "train_loss", "recon_error", "objective", "c1", "c2", "n_nonzero", "seconds")


class TrainingDiverged(ValueError):
    """A number of an outer iteration is not finite: the autoencoder's training diverged."""


def survival_threshold(norms: Tensor, fraction: float) -> float:
    """The threshold that lets about ``fraction`` of the groups with these norms survive a
    shrinkage: halfway between the smallest surviving norm and the largest shrunk one, so that a
    kernel's own rounding of the norms cannot move a group across it."""
    norms = norms.reshape(-1)
    survivors = survivors_of(norms.numel(), fraction)
    top = norms.topk(survivors + 1).values
    return threshold_between(top[-1], top[-2] if survivors else None)


def survivors_of(groups: int, fraction: float) -> int:
    """How many of ``groups`` groups a contamination ``fraction`` lets survive (one is always shrunk)."""
    return min(int(round(fraction * groups)), groups - 1)


def threshold_between(largest_shrunk: Tensor, smallest_survivor: Tensor | None) -> float:
    """The mean of the two norms (0-dim, of one dtype) in their dtype; the largest norm where none survives."""
    if smallest_survivor is None:
        return float(largest_shrunk)
    return float(torch.stack([smallest_survivor, largest_shrunk]).mean())


class RDASolver:
    """The state of one RDA fit on one device: X, L, S and LS_prev (the previous L + S, for c2).
    ``S`` and ``LS_prev`` are updated in place; ``L`` is set by the engine that trains the fit's
    network (``solver.engine.Engine``), a view of the matrices it trains on.

    ``lam`` fixes the threshold; with ``lam=None`` it is chosen at every iteration so that about
    ``contamination`` of the groups survive the shrinkage. Everything here stays in X's dtype."""

    def __init__(self, X: Tensor, S: Tensor, LS_prev: Tensor, *, penalty: str, lam: float | None,
                 contamination: float):
        self.X, self.S, self.LS_prev = X, S, LS_prev
        self.L: Tensor | None = None
        self.penalty, self.group_dim = penalty, ops.GROUP_DIM[penalty]
        self.lam, self.contamination = lam, contamination
        # The residual's group norms of the last proximal step (l2,1 penalties).
        self.norms: Tensor | None = None
        self.iterations = 0  # outer iterations run

    # What a row-sharded solver (distributed.DistributedRDASolver) replaces: the steps that
    # combine numbers over all rows.
    def training_stats(self, train_loss: Tensor, recon_sq: Tensor) -> tuple[Tensor, Tensor]:
        """The mean training loss and ||L_in - AE(L_in)||^2 over all rows."""
        return train_loss, recon_sq

    def finish(self, train_loss: Tensor, recon_sq: Tensor) -> dict:
        """The rest of an outer iteration once L = AE(X - S) is in ``L``: the proximal step and the
        history row but its seconds (``train_loss`` and ``recon_sq`` as 0-dim tensors)."""
        lam, stats = self.proximal_step()
        train_loss, recon_sq = self.training_stats(train_loss, recon_sq)
        loss, recon, pen, nnz, c1, c2 = torch.stack([train_loss, recon_sq.sqrt(), *stats]).tolist()
        # Checked on the numbers this synchronisation reads anyway: a non-finite L or S makes one of them so.
        for value, what in ((loss, "the training loss"), (recon, "the reconstruction AE(X - S)"),
                            (c1, "L + S"), (c2, "L + S"), (pen, "S")):
            if not math.isfinite(value):
                self._diverged(what, loss, recon)
        return dict(
            lam=lam, train_loss=loss, recon_error=recon, objective=recon + lam * pen, c1=c1, c2=c2,
            n_nonzero=int(nnz),
        )

    def proximal_step(self) -> tuple[float, list[Tensor]]:
        """S = prox(X - L) for the current L, and LS_prev moved on to L + S. Returns lam and, as
        0-dim float64 tensors on the device, the penalty of S, its non-zero groups, c1 and c2."""
        self.norms = self.residual_norms()
        lam = self.lam if self.lam is not None else self.contamination_lam()
        ops.shrink_residual(self.X, self.L, lam, self.penalty, norms=self.norms, out=self.S)
        c = self.convergence()
        return lam, [*self.penalty_stats(lam), c[0], c[1]]

    def residual_norms(self) -> Tensor | None:
        """The group norms of R = X - L for the l2,1 penalties (a global sum over the rows for
        "l21_cols"); None for "l1", whose groups are the entries."""
        if self.group_dim is None:
            return None
        return ops.group_norms(self.X, self.group_dim, minus=self.L)

    def contamination_lam(self) -> float:
        """lam that lets ``contamination`` of all groups survive (a global quantile). For "l1" S
        receives |X - L|, which the shrinkage overwrites next."""
        norms = self.norms
        if norms is None:
            norms = torch.sub(self.X, self.L, out=self.S).abs_()
        lam = self.survival_threshold(norms)
        if not math.isfinite(lam):
            self._diverged("the residual X - AE(X - S), whose quantile gives lam,", math.nan, math.nan)
        return lam

    def survival_threshold(self, norms: Tensor) -> float:
        """``survival_threshold`` over all groups (a row-sharded solver selects over every rank's)."""
        return survival_threshold(norms, self.contamination)

    def _diverged(self, what: str, loss: float, recon: float):
        raise TrainingDiverged(
            f"training diverged at outer iteration {self.iterations}: {what} is not finite (last training loss "
            f"{loss:.3g}, reconstruction error {recon:.3g}); lower lr, use optimizer='adam', or scale X (e.g. to "
            "[0, 1] with output_activation='sigmoid', or to unit variance with 'linear')"
        )

    def penalty_stats(self, lam: float) -> list[Tensor]:
        """The penalty of S (the sum of its group norms) and its number of non-zero groups. For the
        l2,1 penalties ||S_g|| = max(0, ||R_g|| - lam): no pass over S."""
        if self.norms is None:
            # Row sums first: a single float32 sum over n x d entries drifts (0.4% at 60000 x 784).
            l1 = torch.linalg.vector_norm(self.S, 1, dim=1).double().sum()
            return [l1, torch.count_nonzero(self.S).double()]
        shrunk = (self.norms.double() - lam).clamp_min_(0)
        return [shrunk.sum(), self.nonzero_groups(lam).sum().double()]

    def nonzero_groups(self, lam: float) -> Tensor | None:
        """Which groups of S the last proximal step left non-zero (l2,1 penalties): those whose
        residual norm exceeds lam, compared in float64 as the kernels do (a float32 lam would round)."""
        return None if self.norms is None else self.norms.double() > lam

    def convergence(self) -> Tensor:
        """[c1, c2] (global sums of squares), and LS_prev = L + S for the next iteration."""
        return ops.convergence_step(self.X, self.L, self.S, self.LS_prev)

    def row_scores(self) -> Tensor:
        """The norm of each row of X - L, the "residual" outlier score (for "l21_rows" the residual
        norms of the last proximal step, already at hand)."""
        if self.group_dim == 1 and self.norms is not None:
            return self.norms
        return ops.group_norms(self.X, 1, minus=self.L)

