"""``hidden="auto"``: the network shapes a fit tries, and the label-free choice between them.

A narrow code trained briefly keeps the network from learning the outliers (Fashion-MNIST, the
tables); on handwritten digits a network that keeps half of the input's dimensions, trained twice as
long, reconstructs the many ways of writing the nominal digit and still not the other digits (the
paper's 784-400-200). Neither wins on both (benchmarks/RESULTS.md), so a fit on wide inputs trains
both and keeps the one whose residuals separate its worst-reconstructed rows more from the typical
row: the mean residual norm of the rows at or above the (1 - contamination) quantile over the
median residual norm. A network that learns the outliers too lowers that contrast; the narrow one is
kept unless the wide one's contrast is larger by more than ``MARGIN``. The contrast is of the rows'
residuals whatever the penalty: the choice was measured with "l21_rows" only."""

from __future__ import annotations

from torch import Tensor

from rda_ext.solver.collectives import RowGroup

NARROW = (128, 32)
# The wide shape halves the input at each layer and trains for WIDE_OUTER_FACTOR times the outer
# iterations; it is tried where it is wider than the narrow one (from 258 features on).
WIDE_OUTER_FACTOR = 2
MARGIN = 1.1


def candidates(hidden, outer_iter: int, n_features: int) -> list[tuple[tuple[int, ...], int]]:
    """(encoder sizes, outer iterations) of each network a fit with ``hidden`` trains, the first
    one kept unless ``choose`` picks another."""
    if not (isinstance(hidden, str) and hidden == "auto"):
        return [(tuple(hidden), outer_iter)]
    wide = (n_features // 2, n_features // 4)
    if wide[0] <= NARROW[0]:
        return [(NARROW, outer_iter)]
    return [(NARROW, outer_iter), (wide, WIDE_OUTER_FACTOR * outer_iter)]


def contrast(residual_norms: Tensor, contamination: float, ranks: RowGroup) -> float:
    """The mean of the row residual norms at or above their (1 - contamination) quantile over
    their median, over all ranks; 1 where the median is 0 and so is every norm."""
    residual_norms = residual_norms.double()
    top = residual_norms >= ranks.quantile(residual_norms, 1.0 - contamination)
    mean_top = float(ranks.sum(residual_norms[top].sum())) / ranks.count(int(top.sum()))
    median = ranks.quantile(residual_norms, 0.5)
    if median > 0:
        return mean_top / median
    return float("inf") if mean_top > 0 else 1.0


def outer_iter_of(hidden, outer_iter: int, n_features: int, kept: tuple[int, ...]) -> int:
    """The outer iterations of the shape ``kept`` among the candidates of ``hidden``."""
    return dict(candidates(hidden, outer_iter, n_features))[kept]


def sizes_text(sizes) -> str:
    """Layer sizes as the command line and the demo print them, e.g. 784-128-32."""
    return "-".join(map(str, sizes))


def choose(contrasts: list[float]) -> int:
    """The index of the shape kept: the first, unless a later one's contrast exceeds the kept
    one's by more than MARGIN."""
    best = 0
    for i, c in enumerate(contrasts[1:], 1):
        if c > MARGIN * contrasts[best]:
            best = i
    return best


class Kept:
    """The fitted state of the shape kept so far among ``shapes`` (offered in their order), and the
    contrast of each; ``result`` gives the state with ``shape_contrast_`` set where there were
    several."""

    def __init__(self, shapes: list[tuple[tuple[int, ...], int]]):
        self.shapes, self.contrasts, self.state = shapes, [], None

    def offer(self, state, solver, contamination: float, ranks: RowGroup) -> None:
        """The state of the next shape, fitted by ``solver``."""
        if len(self.shapes) > 1:
            self.contrasts.append(contrast(solver.row_scores(), contamination, ranks))
            if choose(self.contrasts) != len(self.contrasts) - 1:
                return
        self.state = state

    def result(self):
        if self.contrasts:
            self.state.shape_contrast_ = {hidden: c for (hidden, _), c in zip(self.shapes, self.contrasts)}
        return self.state
