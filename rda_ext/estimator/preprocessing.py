"""What the network sees: X as given (images in [0, 1]), or each column mapped to [0, 1] by its
training range ("minmax") or standardised robustly ("standardize"): tables whose columns have
different units. Both are (X - center) / scale per column, computed in float64 (a few rows at a time)
and rounded to X's dtype: a column near the ends of float32 has a range or a spread that only float64
holds. And the output activation that suits it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rda_ext.io.fingerprint import Fingerprint
from rda_ext.solver.collectives import SINGLE_PROCESS, RowGroup
from rda_ext.validation import column_min_max, like_input, output_dtype

# The normal distribution's interquartile range in standard deviations: IQR / 1.349 estimates the
# standard deviation of the bulk of a column without letting its outliers set the scale.
IQR_PER_SD = 1.3489795003921634
# Entries per row chunk of the float64 arithmetic (32 MiB): a large X never has a float64 copy whole.
CHUNK_ENTRIES = 1 << 22


def in_unit_interval(column_range: tuple[Tensor, Tensor], ranks: RowGroup = SINGLE_PROCESS) -> bool:
    """Whether a matrix of columns' (min, max) ``column_range`` (all ranks' rows of it) lies in [0, 1]."""
    lo, hi = column_range
    lo, hi = ranks.min(lo.min()), ranks.max(hi.max())
    return bool(lo >= 0) and bool(hi <= 1)


def scaling_for(name: str, X: Tensor, column_range: tuple[Tensor, Tensor] | None = None,
                ranks: RowGroup = SINGLE_PROCESS) -> tuple[Tensor, Tensor] | None:
    """The (center, scale) per column (float64) of preprocessing ``name`` on X; None for "none".
    "auto" is "minmax" when X has values outside [0, 1], else "none": on the tables of
    benchmarks/quality/tabular.py the range kept the detection of the defaults (a sigmoid output
    on [0, 1]) where a standardisation lost much of it. ``column_range``: the (min, max) of X's
    columns, where the caller has them already (None: measured here). ``ranks``: X is this rank's rows of a
    row-sharded fit ("minmax" then spans all ranks; "standardize" is refused before). A scale that
    float64 cannot hold (a column spanning more than it) is a ValueError naming the column."""
    label = f'preprocessing="{name}"'
    if column_range is None and name in ("auto", "minmax"):
        column_range = column_min_max(X)
    if name == "auto":
        name = "none" if in_unit_interval(column_range, ranks) else "minmax"
        label += f' (here "{name}")'
    if name == "none":
        return None
    if name == "minmax":
        lo, hi = (t.double() for t in column_range)
        lo, hi = ranks.min(lo), ranks.max(hi)
        center, scale, spread = lo, torch.where(hi > lo, hi - lo, torch.ones_like(lo)), "range"
    else:
        (center, scale), spread = robust_scaling(X), "spread (interquartile range / 1.349, or standard deviation)"
    finite = torch.isfinite(scale)
    if not bool(finite.all()):  # the same on every rank: lo and hi are global
        j = int((~finite).nonzero()[0])
        if name == "minmax":
            lo_j, hi_j = float(lo[j]), float(hi[j])
        else:
            lo_j, hi_j = (float(v) for v in torch.aminmax(X[:, j]))
        raise ValueError(f"{label} cannot scale column {j} of X: its {spread} is beyond float64 (the column spans "
                         f"[{lo_j:.6g}, {hi_j:.6g}]); divide X by a constant first")
    return center, scale


def robust_scaling(X: Tensor) -> tuple[Tensor, Tensor]:
    """Per column: the median, and IQR / 1.349 (the standard deviation where the IQR is 0, 1 where
    the column is constant), in float64."""
    q1, median, q3 = (column_quantile(X, q) for q in (0.25, 0.5, 0.75))
    iqr = q3 - q1
    # Quartiles at both ends of float64 have an IQR beyond it, but perhaps not IQR / 1.349.
    scale = torch.where(torch.isfinite(iqr), iqr / IQR_PER_SD, q3 / IQR_PER_SD - q1 / IQR_PER_SD)
    if bool((scale > 0).all()):
        return median, scale
    sd = column_sd(X)
    return median, torch.where(scale > 0, scale, torch.where(sd > 0, sd, torch.ones_like(sd)))


def column_sd(X: Tensor) -> Tensor:
    """The standard deviation of each column (population), in float64: of the column divided by its
    largest magnitude, times that magnitude, so that neither the squares nor the sum overflow."""
    lo, hi = (t.double() for t in column_min_max(X))
    m = torch.maximum(lo.abs(), hi.abs())
    m = torch.where(m > 0, m, torch.ones_like(m))
    total = torch.zeros_like(m)
    for rows in row_chunks(X):
        total += (X[rows].double() / m).sum(0)
    mean = total / X.shape[0]
    squares = torch.zeros_like(m)
    for rows in row_chunks(X):
        squares += ((X[rows].double() / m - mean) ** 2).sum(0)
    return (squares / X.shape[0]).sqrt() * m


def row_chunks(X: Tensor) -> list[slice]:
    """Consecutive row slices of X of about CHUNK_ENTRIES entries each."""
    rows = max(1, CHUNK_ENTRIES // max(1, X.shape[1]))
    return [slice(start, start + rows) for start in range(0, X.shape[0], rows)]


def column_quantile(X: Tensor, q: float) -> Tensor:
    """The q-quantile of each column (linear interpolation, as numpy's default), in float64; by
    order statistics, since torch.quantile refuses inputs of more than 2**24 entries."""
    pos = q * (X.shape[0] - 1)
    k = int(pos)
    lo = X.kthvalue(k + 1, dim=0).values.double()
    if pos == k:
        return lo
    hi = X.kthvalue(k + 2, dim=0).values.double()
    t = pos - k
    # Order statistics at both ends of float64 are further apart than it holds.
    return torch.where(torch.isfinite(hi - lo), lo + (hi - lo) * t, lo * (1 - t) + hi * t)


def scale_rows(X: Tensor, scaling: tuple[Tensor, Tensor] | None, center: bool = True, *, name: str = "X",
               how: str = "the preprocessing", digest: Fingerprint | None = None) -> Tensor:
    """(X - center) / scale per column (without ``center``: X / scale, for S), computed in float64
    and rounded to X's dtype. The network is never given a value that the scaling made
    non-finite: a column taken beyond X's dtype is a ValueError naming it, ``name`` and ``how``
    X was scaled (e.g. 'preprocessing="standardize"'). ``digest`` is fed the result, each block
    in the pass that writes it."""
    if scaling is None:
        if digest is not None:
            digest.update(X)
        return X
    c, s = (t.to(device=X.device, dtype=torch.float64) for t in scaling)
    out = torch.empty(X.shape, dtype=X.dtype, device=X.device)
    finite = torch.ones(X.shape[1], dtype=torch.bool, device=X.device)
    for rows in row_chunks(X):
        block = X[rows].double()
        if center:  # X - c overflows where X and c are far apart near the ends of float64; X/s - c/s does not
            diff = block - c
            out[rows] = torch.where(torch.isfinite(diff), diff / s, block / s - c / s)
        else:
            out[rows] = block / s
        finite &= torch.isfinite(out[rows]).all(0)
        if digest is not None:
            digest.update(out[rows])
    if not bool(finite.all()):
        j = int((~finite).nonzero()[0])
        lo, hi = (float(v) for v in torch.aminmax(X[:, j]))
        dtype = str(X.dtype).removeprefix("torch.")
        advice = "divide the column by a constant" + (', or fit in float64 (dtype="float64")'
                                                       if X.dtype != torch.float64 else "")
        raise ValueError(f"column {j} of {name} is not finite in {dtype} once scaled by {how} (center "
                         f"{float(c[j]) if center else 0.0:.6g}, scale {float(s[j]):.6g}; the column spans "
                         f"[{lo:.6g}, {hi:.6g}]): {advice}")
    return out


def unscale_rows(X: Tensor, scaling: tuple[Tensor, Tensor] | None, center: bool = True,
                 dtype: torch.dtype | None = None) -> Tensor:
    """The inverse of ``scale_rows``: X * scale + center, computed in float64 and rounded once to
    ``dtype`` (X's by default)."""
    if scaling is None:
        return X if dtype is None else X.to(dtype)
    c, s = (t.to(device=X.device, dtype=torch.float64) for t in scaling)
    out = torch.empty(X.shape, dtype=X.dtype if dtype is None else dtype, device=X.device)
    for rows in row_chunks(X):
        block = X[rows].double()
        scaled = block * s
        if center:  # X * s may overflow where X * s + c does not: (X + c/s) * s
            scaled = torch.where(torch.isfinite(scaled), scaled + c, (block + c / s) * s)
        out[rows] = scaled
    return out


def resolve_output_activation(name: str, X: Tensor, column_range: tuple[Tensor, Tensor] | None = None,
                              ranks: RowGroup = SINGLE_PROCESS) -> str:
    """"auto": "sigmoid" when the network's input X lies in [0, 1] (by the (min, max) of its
    columns ``column_range``, where the caller has them already), else "linear"."""
    if name == "auto":
        return "sigmoid" if in_unit_interval(column_min_max(X) if column_range is None else column_range,
                                             ranks) else "linear"
    return name


def scaled_range(column_range: tuple[Tensor, Tensor], scaling: tuple[Tensor, Tensor] | None,
                 how: str) -> tuple[Tensor, Tensor]:
    """The (min, max) of the columns of a matrix scaled by ``scaling`` from those of the matrix: the
    scaling maps each column monotonically, entry by entry, so the scaled ends are the ends' images."""
    if scaling is None:
        return column_range
    ends = scale_rows(torch.stack(column_range), scaling, how=how)
    return ends.amin(0), ends.amax(0)


def in_xs_units(t: Tensor, X, name: str, scaling: tuple[Tensor, Tensor] | None, center: bool = True):
    """``t`` (L or S in the network's input space) in X's units and in the form of the caller's X
    (rounded once, to its dtype), refused where that dtype cannot hold it: the residual of a column
    near the ends of float32 may span twice as much."""
    dtype = output_dtype(X, t.dtype)
    if dtype == torch.float16 and not isinstance(X, Tensor):
        dtype = torch.float64  # like_input rounds it once; torch rounds float64 to float16 through float32
    out = like_input(unscale_rows(t, scaling, center, dtype=dtype), X)
    finite = np.isfinite(out).all(0) if isinstance(out, np.ndarray) else torch.isfinite(out).all(0).cpu().numpy()
    if not finite.all():
        j = int(np.flatnonzero(~finite)[0])
        dtype = str(out.dtype).removeprefix("torch.")
        advice = "pass X as float64, or divide that column by a constant" if dtype != "float64" else \
            "divide that column by a constant"
        raise ValueError(f"{name} (in X's units) has values beyond the range of {dtype} in column {j}: {advice}")
    return out
