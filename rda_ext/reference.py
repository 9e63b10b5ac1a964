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
    """sign(x) * max(|x| - lam, 0), which is torch's softshrink. A lam beyond the largest finite value
    of the computing dtype acts as that value (it zeroes every finite entry and keeps +-inf)."""
    w = _wide(x)
    return torch.nn.functional.softshrink(w, min(lam, torch.finfo(w.dtype).max)).to(x.dtype)


def _norms(w: Tensor, dim: int) -> Tensor:
    """l2 norms over dim (kept), computed on values scaled by their largest magnitude so that tiny
    or huge float64 values neither underflow nor overflow (a plain w.norm() does)."""
    m = w.abs().amax(dim=dim, keepdim=True)
    unit = torch.where((m > 0) & m.isfinite(), m, torch.ones_like(m))
    return torch.where(m.isinf(), m, (w / unit).norm(dim=dim, keepdim=True) * unit)


def _shrink_factor(norms: Tensor, lam: float) -> Tensor:
    """0 where the norm is <= lam, else 1 - lam / norm: 1 for an infinite norm (a group holding +-inf,
    or one whose norm overflows, keeps its values, as soft-thresholding keeps an infinite entry), NaN
    for a NaN norm, so bad data is not hidden."""
    # lam as a tensor: torch divides a number by a tensor through its reciprocal, which overflows
    # for subnormal norms.
    return torch.where(norms <= lam, torch.zeros_like(norms), 1 - torch.full_like(norms, lam) / norms)


def group_shrink(x: Tensor, lam: float, dim: int) -> Tensor:
    """Each group (the slices x.norm(dim=dim) reduces) is scaled by its shrink factor."""
    w = _wide(x)
    return (w * _shrink_factor(_norms(w, dim), lam)).to(x.dtype)


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
    return (R * _shrink_factor(_wide(norms).unsqueeze(dim), lam)).to(X.dtype)


def group_norms(x: Tensor, dim: int, minus: Tensor | None = None) -> Tensor:
    """The l2 norm of each group of x (of x - minus, if given)."""
    w = _wide(x) if minus is None else _wide(x) - _wide(minus)
    return _norms(w, dim).squeeze(dim).to(x.dtype)


def convergence(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor, norms: bool = False) -> Tensor:
    """[c1, c2] in float64: ||X - L - S|| / ||X|| and ||LS_prev - L - S|| / ||X|| (plain norms when
    ||X|| = 0), each norm computed scaled so that float64 data beyond 1e+-150 neither under- nor
    overflows. With ``norms``, [||X||, ||X - L - S||, ||LS_prev - L - S||]."""
    X, L, S, P = (t.double() for t in (X, L, S, LS_prev))
    if X.numel() == 0:
        return X.new_zeros(3 if norms else 2)

    def norm(t):
        return _norms(t.reshape(1, -1), 1).reshape(())

    if norms:
        return torch.stack([norm(X), norm(X - L - S), norm(P - L - S)])
    scale = norm(X)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.stack([norm(X - L - S) / scale, norm(P - L - S) / scale])


def convergence_step(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor, norms: bool = False) -> tuple[Tensor, Tensor]:
    """convergence(X, L, S, LS_prev, norms) and the next LS_prev, L + S (in X's dtype, added in
    float32 for float16/bfloat16)."""
    return convergence(X, L, S, LS_prev, norms), (_wide(L) + _wide(S)).to(X.dtype)
