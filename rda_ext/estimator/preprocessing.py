"""What the network sees: X as given (images in [0, 1]), or each column mapped to [0, 1] by its
training range ("minmax") or standardised robustly ("standardize"): tables whose columns have
different units. Both are (X - center) / scale per column. And the output activation that suits it."""

from __future__ import annotations

import torch
from torch import Tensor

from rda_ext.solver.collectives import RowGroup

# The normal distribution's interquartile range in standard deviations: IQR / 1.349 estimates the
# standard deviation of the bulk of a column without letting its outliers set the scale.
IQR_PER_SD = 1.3489795003921634


def in_unit_interval(X: Tensor, ranks: RowGroup | None = None) -> bool:
    """Whether X (all ranks' rows of it) lies in [0, 1]."""
    lo, hi = torch.aminmax(X)
    if ranks is not None:
        lo, hi = ranks.min(lo), ranks.max(hi)
    return bool(lo >= 0) and bool(hi <= 1)


def scaling_for(name: str, X: Tensor, inside: bool | None = None,
                ranks: RowGroup | None = None) -> tuple[Tensor, Tensor] | None:
    """The (center, scale) per column (float64) of preprocessing ``name`` on X; None for "none".
    "auto" is "minmax" when X has values outside [0, 1], else "none": on the tables of
    benchmarks/quality/tabular.py the range kept the detection of the defaults (a sigmoid output
    on [0, 1]) where a standardisation lost much of it. ``inside``: whether X lies in [0, 1],
    where the caller knows it already (None: measured here). ``ranks``: X is this rank's rows of a
    row-sharded fit ("minmax" then spans all ranks; "standardize" is refused before)."""
    if name == "auto":
        name = "none" if (in_unit_interval(X, ranks) if inside is None else inside) else "minmax"
    if name == "none":
        return None
    if name == "minmax":
        lo, hi = (t.double() for t in torch.aminmax(X, dim=0))
        if ranks is not None:
            lo, hi = ranks.min(lo), ranks.max(hi)
        return lo, torch.where(hi > lo, hi - lo, torch.ones_like(lo))
    return robust_scaling(X)


def robust_scaling(X: Tensor) -> tuple[Tensor, Tensor]:
    """Per column: the median, and IQR / 1.349 (the standard deviation where the IQR is 0, 1 where
    the column is constant), in float64."""
    q1, median, q3 = (column_quantile(X, q) for q in (0.25, 0.5, 0.75))
    scale = (q3 - q1) / IQR_PER_SD
    sd = X.std(dim=0, correction=0).double()
    scale = torch.where(scale > 0, scale, torch.where(sd > 0, sd, torch.ones_like(sd)))
    return median, scale


def column_quantile(X: Tensor, q: float) -> Tensor:
    """The q-quantile of each column (linear interpolation, as numpy's default), in float64; by
    order statistics, since torch.quantile refuses inputs of more than 2**24 entries."""
    pos = q * (X.shape[0] - 1)
    k = int(pos)
    lo = X.kthvalue(k + 1, dim=0).values.double()
    if pos == k:
        return lo
    hi = X.kthvalue(k + 2, dim=0).values.double()
    return lo + (hi - lo) * (pos - k)


def scale_rows(X: Tensor, scaling: tuple[Tensor, Tensor] | None, center: bool = True) -> Tensor:
    """(X - center) / scale per column, in X's dtype (without ``center``: X / scale, for S)."""
    if scaling is None:
        return X
    c, s = (t.to(X.dtype) for t in scaling)
    return ((X - c) if center else X) / s


def unscale_rows(X: Tensor, scaling: tuple[Tensor, Tensor] | None, center: bool = True) -> Tensor:
    """The inverse of ``scale_rows``: X * scale + center."""
    if scaling is None:
        return X
    c, s = (t.to(X.dtype) for t in scaling)
    return X * s + c if center else X * s


def resolve_output_activation(name: str, X: Tensor, inside: bool | None = None,
                              ranks: RowGroup | None = None) -> str:
    """"auto": "sigmoid" when the network's input X lies in [0, 1] (``inside``, where the caller
    knows it already), else "linear"."""
    if name == "auto":
        return "sigmoid" if (in_unit_interval(X, ranks) if inside is None else inside) else "linear"
    return name
