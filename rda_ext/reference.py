"""The operators in plain PyTorch, written for clarity: the ground truth of the tests and the
baseline of the benchmarks. Nothing here calls the compiled kernels (the penalty table is read
from the library, where it is defined once).

float16 and bfloat16 inputs are computed in float32 and rounded back, as the kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rda_ext.ops import GROUP_DIM

_NARROW = (torch.float16, torch.bfloat16)


def _wide(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _NARROW else x


def soft_threshold(x: Tensor, lam: float) -> Tensor:
    """sign(x) * max(|x| - lam, 0), which is torch's softshrink."""
    return torch.nn.functional.softshrink(_wide(x), lam).to(x.dtype)


def _norms(w: Tensor, dim: int) -> Tensor:
    """l2 norms over dim (kept), computed on values scaled by their largest magnitude so that tiny
    or huge float64 values neither underflow nor overflow (a plain w.norm() does)."""
    m = w.abs().amax(dim=dim, keepdim=True)
    unit = torch.where((m > 0) & m.isfinite(), m, torch.ones_like(m))
    return torch.where(m.isinf(), m, (w / unit).norm(dim=dim, keepdim=True) * unit)


def group_shrink(x: Tensor, lam: float, dim: int) -> Tensor:
    """Each group (the slices x.norm(dim=dim) reduces) is 0 if its norm is <= lam, else scaled
    by 1 - lam / norm. A NaN norm gives NaN, so bad data is not hidden."""
    w = _wide(x)
    norms = _norms(w, dim)
    factor = torch.where(norms <= lam, torch.zeros_like(norms), (norms - lam) / norms)
    return (w * factor).to(x.dtype)


def shrink_residual(X: Tensor, L: Tensor, lam: float, penalty: str, norms: Tensor | None = None) -> Tensor:
    """S = prox(X - L) for the penalty "l1", "l21_rows" (row groups) or "l21_cols" (column groups);
    with ``norms`` given, the l2,1 groups are scaled as if those were their norms."""
    if penalty not in GROUP_DIM:
        raise ValueError(f"penalty must be one of {tuple(GROUP_DIM)}, got {penalty!r}")
    R = _wide(X) - _wide(L)
    dim = GROUP_DIM[penalty]
    if dim is None:
        return soft_threshold(R, lam).to(X.dtype)
    if norms is None:
        return group_shrink(R, lam, dim).to(X.dtype)
    norms = _wide(norms).unsqueeze(dim)
    factor = torch.where(norms <= lam, torch.zeros_like(norms), (norms - lam) / norms)
    return (R * factor).to(X.dtype)


def group_norms(x: Tensor, dim: int, minus: Tensor | None = None) -> Tensor:
    """The l2 norm of each group of x (of x - minus, if given)."""
    w = _wide(x) if minus is None else _wide(x) - _wide(minus)
    return _norms(w, dim).squeeze(dim).to(x.dtype)


def convergence(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor) -> Tensor:
    """[c1, c2] in float64: ||X - L - S|| / ||X|| and ||LS_prev - L - S|| / ||X|| (plain norms when
    ||X|| = 0)."""
    X, L, S, P = (t.double() for t in (X, L, S, LS_prev))
    scale = X.norm()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.stack([(X - L - S).norm() / scale, (P - L - S).norm() / scale])


def convergence_step(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor) -> tuple[Tensor, Tensor]:
    """convergence(X, L, S, LS_prev) and the next LS_prev, L + S (in X's dtype, added in float32
    for float16/bfloat16)."""
    return convergence(X, L, S, LS_prev), (_wide(L) + _wide(S)).to(X.dtype)
