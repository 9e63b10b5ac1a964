"""The operators in plain PyTorch, written for clarity: the ground truth of the tests and the
baseline of the benchmarks. Nothing here touches the compiled kernels.

float16 and bfloat16 inputs are computed in float32 and rounded back, as the kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def shrink_residual(X: Tensor, L: Tensor, lam: float, penalty: str) -> Tensor:
    """S = prox(X - L) for the penalty "l1", "l21_rows" (row groups) or "l21_cols" (column groups)."""
    R = _wide(X) - _wide(L)
    if penalty == "l1":
        S = soft_threshold(R, lam)
    elif penalty == "l21_rows":
        S = group_shrink(R, lam, dim=1)
    elif penalty == "l21_cols":
        S = group_shrink(R, lam, dim=0)
    else:
        raise ValueError(f"penalty must be one of 'l1', 'l21_rows', 'l21_cols', got {penalty!r}")
    return S.to(X.dtype)


def group_norms(x: Tensor, dim: int) -> Tensor:
    """The l2 norm of each group."""
    return _norms(_wide(x), dim).squeeze(dim).to(x.dtype)


def convergence(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor) -> Tensor:
    """[c1, c2] in float64: ||X - L - S|| / ||X|| and ||LS_prev - L - S|| / ||X|| (plain norms when
    ||X|| = 0)."""
    X, L, S, P = (t.double() for t in (X, L, S, LS_prev))
    scale = X.norm()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.stack([(X - L - S).norm() / scale, (P - L - S).norm() / scale])
