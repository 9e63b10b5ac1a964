"""Typed wrappers over the ``torch.ops.rda_ext`` operators, each with its fake (meta) kernel so
that ``torch.compile(fullgraph=True)`` traces through them.

Shapes and penalties are those of the RDA problem X = L + S, rows = instances, columns = features.
The threshold ``lam`` is a Python number (finite, >= 0); the compiled operators check it.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from rda_ext._build import _C  # importing it registers the operators

# Each penalty and the dim its group norms reduce (1: each row a group, 0: each column, None: every
# entry), read from the kernels' own table.
GROUP_DIM: dict[str, int | None] = dict(_C.penalties())
PENALTIES = tuple(GROUP_DIM)
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
        return _ops.group_shrink(x, float(lam), _dim(dim))
    _ops.group_shrink_out(x, float(lam), _dim(dim), out)
    return out


def shrink_residual(
    X: Tensor, L: Tensor, lam: float, penalty: str, *, norms: Tensor | None = None, out: Tensor | None = None
) -> Tensor:
    """``S = prox(X - L)`` for ``penalty`` in ``"l1"``, ``"l21_rows"``, ``"l21_cols"``, without
    materialising ``X - L``. ``out`` (e.g. the previous S) saves the allocation. For the l2,1
    penalties, ``norms`` may give the residual's group norms, ``group_norms(X, GROUP_DIM[penalty],
    minus=L)``: the kernel then uses them instead of computing them (one pass fewer for
    ``"l21_cols"``)."""
    if out is None:
        return _ops.shrink_residual(X, L, float(lam), penalty, norms)
    _ops.shrink_residual_out(X, L, float(lam), penalty, out, norms)
    return out


def group_norms(x: Tensor, dim: int, *, minus: Tensor | None = None) -> Tensor:
    """The l2 norm of each group of a 2-D ``x``, as ``x.norm(dim=dim)``; with ``minus``, of
    ``x - minus`` without materialising it."""
    return _ops.group_norms(x, _dim(dim), minus)


def convergence(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor) -> Tensor:
    """The RDA stopping numbers as a float64 tensor ``[c1, c2]`` on X's device:
    ``c1 = ||X - L - S||_F / ||X||_F`` and ``c2 = ||LS_prev - L - S||_F / ||X||_F``
    (the plain norms where ``||X||_F = 0``)."""
    return _ops.convergence(X, L, S, LS_prev)


def convergence_step(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor) -> Tensor:
    """``convergence(X, L, S, LS_prev)``, then ``LS_prev`` holds ``L + S`` (for the next
    iteration's c2), written in the same pass over the operands. ``LS_prev`` must share no memory
    with ``X``, ``L`` or ``S``."""
    return _ops.convergence_step(X, L, S, LS_prev)


def _dim(dim) -> int:
    """dim as an int, refusing what int() would truncate or reinterpret (1.7, True, "1")."""
    if isinstance(dim, bool) or not hasattr(type(dim), "__index__"):
        raise TypeError(f"rda_ext: dim must be an integer (0 or 1 for a matrix), got {dim!r}")
    return operator.index(dim)


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


def _check_norms(norms: Tensor | None, X: Tensor, penalty: str) -> None:
    if norms is None:
        return
    dim = GROUP_DIM.get(penalty)
    torch._check(dim is not None, lambda: f"rda_ext: norms are the group norms of an l2,1 penalty, not {penalty!r}")
    torch._check(norms.dim() == 1 and norms.shape[0] == X.shape[1 - dim], lambda: "rda_ext: norms must hold one norm per group")
    torch._check(norms.dtype == X.dtype, lambda: "rda_ext: norms must have the dtype of X")
    torch._check(norms.device == X.device, lambda: "rda_ext: norms must be on the device of X")


@torch.library.register_fake("rda_ext::shrink_residual")
def _(X, L, lam, penalty, norms=None):
    _check_like(L, "L", X, "X")
    _check_norms(norms, X, penalty)
    return torch.empty_like(X)


@torch.library.register_fake("rda_ext::shrink_residual_out")
def _(X, L, lam, penalty, out, norms=None):
    _check_like(L, "L", X, "X")
    _check_like(out, "out", X, "X")
    _check_norms(norms, X, penalty)


@torch.library.register_fake("rda_ext::group_norms")
def _(x, dim, minus=None):
    _check_matrix(x, "x")
    if minus is not None:
        _check_like(minus, "minus", x, "x")
    return x.new_empty(x.shape[1 - dim % 2])


@torch.library.register_fake("rda_ext::convergence")
def _(X, L, S, LS_prev):
    for t, name in ((L, "L"), (S, "S"), (LS_prev, "LS_prev")):
        _check_like(t, name, X, "X")
    return X.new_empty(2, dtype=torch.float64)


@torch.library.register_fake("rda_ext::convergence_step")
def _(X, L, S, LS_prev):
    for t, name in ((L, "L"), (S, "S"), (LS_prev, "LS_prev")):
        _check_like(t, name, X, "X")
    return X.new_empty(2, dtype=torch.float64)
