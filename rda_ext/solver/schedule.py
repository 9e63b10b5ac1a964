"""When the networks train and when a fit stops: the minibatches of each epoch, the epochs of an
outer iteration, and the tolerance rule. Every training path (one network, K stacked networks, a
row-sharded fit) draws its batches here, so a change of schedule is made once."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Minibatch steps per outer iteration that inner_epochs="auto" trains at least: a fixed number of
# epochs would leave a table of a few hundred rows with a few dozen steps in all.
AUTO_STEPS = 50
# ... and at most: beyond it, each outer iteration trains on a fresh random sample of this many
# batches, so that the training cost does not grow with the rows (benchmarks/RESULTS.md, "A step
# budget"). The reconstruction, the proximal step and the scores still cover every row.
STEP_BUDGET = 200


def batches_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)


def resolve_inner_epochs(value, n_rows: int, batch_size: int) -> int:
    """The epochs per outer iteration: ``value`` itself, or for "auto" the fewest whole epochs of
    ``n_rows`` rows in batches of ``batch_size`` that make at least AUTO_STEPS steps (one epoch,
    cut to STEP_BUDGET steps, from AUTO_STEPS batches on)."""
    if value != "auto":
        return int(value)
    return math.ceil(AUTO_STEPS / max(1, batches_per_epoch(n_rows, batch_size)))


def converged(row: dict, tol: float) -> bool:
    """Whether an outer iteration's history row ends its fit: c1 and c2 both below ``tol``."""
    return row["c1"] < tol and row["c2"] < tol


@dataclass(frozen=True)
class Schedule:
    """``epochs`` passes over the rows per outer iteration, each a fresh permutation cut into
    minibatches of ``batch_size`` rows (the last one shorter). With ``steps`` each permutation is
    cut into that many batches of near-equal size instead (rows drawn again where there are fewer
    rows than steps): the ranks of a row-sharded fit must all step together, whatever their rows.
    With ``budget`` an epoch trains its first ``budget`` batches only: a random sample of the rows,
    another in every epoch."""

    epochs: int
    batch_size: int
    steps: int | None = None
    budget: int | None = None

    @classmethod
    def of_fit(cls, inner_epochs, batch_size: int, rows_per_rank: list[int], lockstep: bool) -> Schedule:
        """The schedule of a fit whose ranks hold ``rows_per_rank`` rows: "auto" epochs (and the
        step budget) from the largest shard, and with ``lockstep`` as many steps on every rank as
        the largest takes."""
        rows = max(rows_per_rank)
        steps = batches_per_epoch(rows, batch_size) if lockstep else None
        budget = STEP_BUDGET if inner_epochs == "auto" else None
        return cls(resolve_inner_epochs(inner_epochs, rows, batch_size), int(batch_size), steps, budget)

    def batches(self, n: int, generator: torch.Generator, device: torch.device) -> list[Tensor]:
        """The row indices of one epoch's minibatches, drawn from ``generator``."""
        perm = torch.randperm(n, device=device, generator=generator)
        if self.steps is None:
            starts = range(0, n, self.batch_size)[: self.budget]
            return [perm[start : start + self.batch_size] for start in starts]
        return list(torch.tensor_split(perm.repeat(-(-self.steps // n)) if n < self.steps else perm,
                                       self.steps))[: self.budget]

    def rows_trained(self, n: int) -> int:
        """The rows an outer iteration trains on (counted with repeats) where ``n`` rows are held."""
        if self.steps is None:
            return self.epochs * min(n, self.batch_size * (self.budget or n))
        # tensor_split gives the first (rows % steps) batches one row more than the others.
        per_batch, longer = divmod(n * -(-self.steps // n) if n < self.steps else n, self.steps)
        cut = min(self.steps, self.budget or self.steps)
        return self.epochs * (cut * per_batch + min(cut, longer))

    def train(self, step: Callable[[Tensor], Tensor], n: int, generator: torch.Generator, device: torch.device,
              shape: tuple[int, ...] = ()) -> Tensor:
        """Runs ``step(rows)`` (one training step on those rows, returning its loss of ``shape``)
        on every minibatch of every epoch; returns the mean loss of the last epoch, float64 on the
        device (reading it is the caller's one synchronisation)."""
        total = torch.zeros(shape, dtype=torch.float64, device=device)
        batches: list[Tensor] = []
        for epoch in range(self.epochs):
            batches = self.batches(n, generator, device)
            last = epoch == self.epochs - 1
            for rows in batches:
                loss = step(rows)
                if last:
                    total += loss
        return total / max(len(batches), 1)
