"""Typed wrappers over the ``torch.ops.rda_ext`` operators, each with its fake (meta) kernel so
that ``torch.compile(fullgraph=True)`` traces through them.

Shapes and penalties are those of the RDA problem X = L + S, rows = instances, columns = features.
The threshold ``lam`` is a Python number (finite, >= 0); the compiled operators check it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rda_ext import _build  # noqa: F401  (registers the operators)

PENALTIES = ("l1", "l21_rows", "l21_cols")
_ops = torch.ops.rda_ext


def soft_threshold(x: Tensor, lam: float, *, out: Tensor | None = None) -> Tensor:
    """The prox of ``lam * ||.||_1``: ``sign(x) * max(|x| - lam, 0)`` element-wise, any shape.
    ``out`` may be ``x`` itself (in place)."""
    if out is None:
        return _ops.soft_threshold(x, float(lam))
    _ops.soft_threshold_out(x, float(lam), out)
    return out


def group_shrink(x: Tensor, lam: float, dim: int, *, out: Tensor | None = None) -> Tensor:
    """The prox of ``lam * ||.||_{2,1}`` for a 2-D ``x``. The groups are the slices that
    ``x.norm(dim=dim)`` reduces: ``dim=1`` makes each row a group (instances), ``dim=0`` each
    column (features). A group with norm <= lam becomes exactly 0, any other is scaled by
    ``1 - lam / norm``."""
    if out is None:
        return _ops.group_shrink(x, float(lam), int(dim))
    _ops.group_shrink_out(x, float(lam), int(dim), out)
    return out


def shrink_residual(X: Tensor, L: Tensor, lam: float, penalty: str, *, out: Tensor | None = None) -> Tensor:
    """``S = prox(X - L)`` for ``penalty`` in ``"l1"``, ``"l21_rows"``, ``"l21_cols"``, without
    materialising ``X - L``. ``out`` (e.g. the previous S) saves the allocation."""
    if out is None:
        return _ops.shrink_residual(X, L, float(lam), penalty)
    _ops.shrink_residual_out(X, L, float(lam), penalty, out)
    return out


def group_norms(x: Tensor, dim: int) -> Tensor:
    """The l2 norm of each group of a 2-D ``x``, as ``x.norm(dim=dim)``."""
    return _ops.group_norms(x, int(dim))


def convergence(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor) -> Tensor:
    """The RDA stopping numbers as a float64 tensor ``[c1, c2]`` on X's device:
    ``c1 = ||X - L - S||_F / ||X||_F`` and ``c2 = ||LS_prev - L - S||_F / ||X||_F``
    (the plain norms where ``||X||_F = 0``)."""
    return _ops.convergence(X, L, S, LS_prev)


def _check_matrix(x: Tensor, name: str) -> None:
    torch._check(x.dim() == 2, lambda: f"rda_ext: {name} must be a 2-D matrix, got {x.dim()} dimensions")


def _check_like(t: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    torch._check(t.shape == ref.shape, lambda: f"rda_ext: {name} must have the shape of {ref_name}")
    torch._check(t.dtype == ref.dtype, lambda: f"rda_ext: {name} must have the dtype of {ref_name}")
    torch._check(t.device == ref.device, lambda: f"rda_ext: {name} must be on the device of {ref_name}")


@torch.library.register_fake("rda_ext::soft_threshold")
def _(x, lam):
    return torch.empty_like(x)


@torch.library.register_fake("rda_ext::soft_threshold_out")
def _(x, lam, out):
    _check_like(out, "out", x, "x")


@torch.library.register_fake("rda_ext::group_shrink")
def _(x, lam, dim):
    _check_matrix(x, "x")
    return torch.empty_like(x)


@torch.library.register_fake("rda_ext::group_shrink_out")
def _(x, lam, dim, out):
    _check_matrix(x, "x")
    _check_like(out, "out", x, "x")


@torch.library.register_fake("rda_ext::shrink_residual")
def _(X, L, lam, penalty):
    _check_like(L, "L", X, "X")
    return torch.empty_like(X)


@torch.library.register_fake("rda_ext::shrink_residual_out")
def _(X, L, lam, penalty, out):
    _check_like(L, "L", X, "X")
    _check_like(out, "out", X, "X")


@torch.library.register_fake("rda_ext::group_norms")
def _(x, dim):
    _check_matrix(x, "x")
    return x.new_empty(x.shape[1 - dim % 2])


@torch.library.register_fake("rda_ext::convergence")
def _(X, L, S, LS_prev):
    for t, name in ((L, "L"), (S, "S"), (LS_prev, "LS_prev")):
        _check_like(t, name, X, "X")
    return X.new_empty(2, dtype=torch.float64)
