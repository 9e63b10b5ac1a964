"""The RDA iteration over tensors: X = L + S with L from a deep autoencoder and S sparse.

Each outer iteration sets L = X - S, trains the autoencoder on L for some epochs, sets
L = AE(L), chooses lam (given, or from a contamination fraction), sets S = prox(X - L) and
measures the convergence numbers. Nothing here converts, validates or stores: the estimator does.

The steps that combine numbers over all groups, and so would need a collective in a run whose
rows are split over processes, are methods of their own: ``residual_norms`` (the column norms of
"l21_cols" span all rows), ``contamination_lam`` (a quantile over all groups) and
``convergence`` (sums over all entries). The rest is row-local.

Passes over n x d matrices per outer iteration after L = AE(L), counting each matrix read (R) or
written (W) once (benchmarks/bench_prox_step.py times both sequences):
  l2,1 penalties, before (0.1): with contamination X - L into S 2R 1W and the norms of S 1R; then
      shrink_residual 2R 1W (l21_cols 4R 1W), convergence 4R, LS_prev = L + S 2R 1W, the norms of
      S again 1R: 15 (l21_cols 17), 11 (13) with lam given.
  l2,1 penalties, now: the residual's group norms 2R, shrink_residual with those norms 2R 1W,
      convergence_step (LS_prev = L + S in the same pass) 4R 1W: 10 with or without contamination.
      The norms of S follow from the residual's, max(0, ||R_g|| - lam), without reading S.
  l1 (every entry a group), before: 14 with lam given (|S| allocated, then summed and compared),
      20 with contamination; now 10 (two reads of S for its statistics, no temporary) and 16 (|X - L|
      written into S and selected from before the shrinkage overwrites it).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor, nn

from rda_ext import ops
from rda_ext.solver.training import GraphedStep, reconstruct_into, train_epochs

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
    """The state of one RDA fit on one device: X, L, S and LS_prev (the previous L + S, for c2),
    the autoencoder and its optimizer. ``S`` and ``LS_prev`` are updated in place.

    ``lam`` fixes the threshold; with ``lam=None`` it is chosen at every iteration so that about
    ``contamination`` of the groups survive the shrinkage. With ``amp`` (torch.bfloat16) the
    autoencoder's forward and backward run under autocast; everything else stays in X's dtype.
    With ``graphs`` the training step of full batches is captured in a CUDA graph (X on a CUDA
    device, a capturable optimizer: ``GraphedStep``). Without a model (None), the solver is one fit
    of a ``StackedRDASolver``, which trains it."""

    def __init__(
        self,
        model: nn.Module | None,
        optimizer: torch.optim.Optimizer | None,
        X: Tensor,
        S: Tensor,
        LS_prev: Tensor,
        *,
        penalty: str,
        lam: float | None,
        contamination: float,
        inner_epochs: int,
        batch_size: int,
        generator: torch.Generator | None,
        amp: torch.dtype | None = None,
        graphs: bool = False,
    ):
        self.model, self.optimizer = model, optimizer
        self.X, self.S, self.LS_prev = X, S, LS_prev
        self.L = torch.empty_like(X) if model is not None else None  # a StackedRDASolver gives it
        self.penalty, self.group_dim = penalty, ops.GROUP_DIM[penalty]
        self.lam, self.contamination = lam, contamination
        self.inner_epochs, self.batch_size, self.generator = inner_epochs, batch_size, generator
        self.amp = amp  # the autoencoder's autocast dtype (None: it computes in X's dtype)
        self.graphed = GraphedStep(model, optimizer, X.new_empty(batch_size, X.shape[1]), amp) if graphs else None
        # The residual's group norms of the last proximal step (l2,1 penalties).
        self.norms: Tensor | None = None
        self.iterations = 0  # run by this solver

    def run(self, outer_iter: int, tol: float, on_iteration: Callable[[dict], None] | None = None) -> list[dict]:
        """Up to ``outer_iter`` outer iterations, stopping once c1 and c2 are both below ``tol``.
        Returns one history row (``HISTORY_KEYS`` but "iteration") per iteration run."""
        rows = []
        for _ in range(outer_iter):
            row = self.iterate()
            rows.append(row)
            if on_iteration is not None:
                on_iteration(row)
            if row["c1"] < tol and row["c2"] < tol:
                break
        return rows

    def iterate(self) -> dict:
        """One outer iteration. Synchronises with the host once (twice with contamination: the
        chosen lam is read before the shrinkage)."""
        t0 = time.perf_counter()
        self.iterations += 1
        torch.sub(self.X, self.S, out=self.L)
        train_loss = train_epochs(
            self.training_model, self.optimizer, self.L, self.inner_epochs, self.batch_size, self.generator,
            amp=self.amp, graphed=self.graphed, steps=self.steps_per_epoch,
        )
        recon_sq = reconstruct_into(self.model, self.L, out=self.L, amp=self.amp)
        return self.finish(train_loss, recon_sq, t0)

    # What a row-sharded solver (distributed.DistributedRDASolver) replaces: the network that
    # trains (wrapped for gradient averaging), the batches per epoch, and the steps that combine
    # numbers over all rows.
    @property
    def training_model(self) -> nn.Module:
        return self.model

    steps_per_epoch: int | None = None  # None: ceil(rows / batch_size)

    def training_stats(self, train_loss: Tensor, recon_sq: Tensor) -> tuple[Tensor, Tensor]:
        """The mean training loss and ||L_in - AE(L_in)||^2 over all rows."""
        return train_loss, recon_sq

    def finish(self, train_loss: Tensor, recon_sq: Tensor, t0: float) -> dict:
        """The rest of an outer iteration once L = AE(X - S) is in ``L``: the proximal step and the
        history row (``train_loss`` and ``recon_sq`` as 0-dim tensors; ``t0``: when it began)."""
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
            n_nonzero=int(nnz), seconds=time.perf_counter() - t0,
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

