"""The operators in plain PyTorch, written for clarity: the ground truth of the tests and the
baseline of the benchmarks. Nothing here calls the compiled kernels (the penalty table is read
from the library, where it is defined once).

The rules are the kernels' own, edge cases included (python_tests/test_ops_edge_cases.py holds
both to them): float16 and bfloat16 inputs are computed in float32 and rounded back; group norms
and shrink factors are computed in float64 whatever the dtype, as the kernels sum squares in
float64, and the factor is rounded to the computing dtype before it scales the group; lam must be
a finite number >= 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rda_ext.ops import GROUP_DIM
from rda_ext.solver.autoencoder import ACTIVATIONS

_NARROW = (torch.float16, torch.bfloat16)


def _wide(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _NARROW else x


def _check_lam(lam: float) -> float:
    # The kernels refuse these too; an infinite or NaN lam would otherwise give some result here
    # and none there.
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"rda_ext: lam must be a finite number >= 0, got {lam}")
    return float(lam)


def soft_threshold(x: Tensor, lam: float) -> Tensor:
    """sign(x) * max(|x| - lam, 0), which is torch's softshrink. A lam beyond the largest finite value
    of the computing dtype acts as that value (it zeroes every finite entry and keeps +-inf)."""
    lam = _check_lam(lam)
    w = _wide(x)
    # Rounded into the dtype such a lam would be inf, and the kernels' r - clamp(r, -lam, lam) would
    # turn an infinite entry into NaN where its prox is the entry itself.
    return torch.nn.functional.softshrink(w, min(lam, torch.finfo(w.dtype).max)).to(x.dtype)


def _norms(w: Tensor, dim: int) -> Tensor:
    """l2 norms over dim (kept), in float64 whatever w's dtype, as the kernels compute them: a
    float32 group whose norm overflows float32 still has a finite norm to compare with lam."""
    if w.dtype != torch.float64:
        # Squares of float32 values can neither overflow nor underflow float64: a plain norm is exact
        # to rounding.
        return torch.linalg.vector_norm(w, dim=dim, keepdim=True, dtype=torch.float64)
    if w.shape[dim] == 0:
        # Empty groups (of a (0, d) or (n, 0) matrix) have norm 0; amax below has no value for them.
        shape = list(w.shape)
        shape[dim] = 1
        return w.new_zeros(shape)
    # Squares of float64 values beyond about 1e+-150 under- or overflow, and a plain w.norm() returns
    # 0 or inf: scale the values by their largest magnitude first.
    m = w.abs().amax(dim=dim, keepdim=True)
    unit = torch.where((m > 0) & m.isfinite(), m, torch.ones_like(m))
    return torch.where(m.isinf(), m, (w / unit).norm(dim=dim, keepdim=True) * unit)


def _shrink_factor(norms: Tensor, lam: float) -> Tensor:
    """0 where the norm is <= lam, else 1 - lam / norm (norms and factor in float64): 1 for an
    infinite norm (a group holding +-inf, or one whose norm overflows float64, keeps its values, as
    soft-thresholding keeps an infinite entry), NaN for a NaN norm, so bad data is not hidden."""
    # lam as a tensor: torch divides a number by a tensor through its reciprocal, which overflows
    # for subnormal norms.
    return torch.where(norms <= lam, torch.zeros_like(norms), 1 - torch.full_like(norms, lam) / norms)


def _scaled(w: Tensor, norms: Tensor, lam: float) -> Tensor:
    """w scaled by the shrink factor of its groups' norms, the factor rounded to w's dtype first, as
    the kernels multiply in the computing dtype."""
    return w * _shrink_factor(norms.double(), lam).to(w.dtype)


def group_shrink(x: Tensor, lam: float, dim: int) -> Tensor:
    """Each group (the slices x.norm(dim=dim) reduces) is scaled by its shrink factor."""
    lam = _check_lam(lam)
    w = _wide(x)
    return _scaled(w, _norms(w, dim), lam).to(x.dtype)


def shrink_residual(X: Tensor, L: Tensor, lam: float, penalty: str, norms: Tensor | None = None) -> Tensor:
    """S = prox(X - L) for the penalty "l1", "l21_rows" (row groups) or "l21_cols" (column groups);
    with ``norms`` given, the l2,1 groups are scaled as if those were their norms."""
    if penalty not in GROUP_DIM:
        raise ValueError(f"penalty must be one of {tuple(GROUP_DIM)}, got {penalty!r}")
    lam = _check_lam(lam)
    R = _wide(X) - _wide(L)
    dim = GROUP_DIM[penalty]
    if dim is None:
        return soft_threshold(R, lam).to(X.dtype)
    if norms is None:
        return group_shrink(R, lam, dim).to(X.dtype)
    return _scaled(R, norms.unsqueeze(dim), lam).to(X.dtype)


def group_norms(x: Tensor, dim: int, minus: Tensor | None = None) -> Tensor:
    """The l2 norm of each group of x (of x - minus, if given), rounded to x's dtype (a norm beyond
    its range becomes inf)."""
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


def autoencoder_grads(x: Tensor, params: list[Tensor], depth: int, activation: str, output_activation: str,
                      compute_dtype: torch.dtype | None = None) -> tuple[Tensor, list[Tensor]]:
    """The loss of the autoencoder with these parameters on the batch x (the mean squared error of
    each network's reconstruction, of each of K stacked ones for x of (K, rows, d)) and the
    gradient of every parameter (of the sum of the K losses), by autograd, under autocast to
    ``compute_dtype`` where given."""
    leaves = [p.detach().clone().requires_grad_() for p in params]
    tied = len(params) == 3 * depth
    enc_w, enc_b = leaves[:depth], leaves[depth : 2 * depth]
    dec_w = [w.transpose(-2, -1) for w in reversed(enc_w)] if tied else leaves[2 * depth : 3 * depth]
    acts = [ACTIVATIONS[activation]] * (2 * depth - 1) + [ACTIVATIONS[output_activation]]
    with torch.enable_grad(), torch.autocast(x.device.type, dtype=compute_dtype, enabled=compute_dtype is not None):
        h = x
        for w, b, act in zip(enc_w + dec_w, enc_b + leaves[-depth:], acts):
            h = act(torch.matmul(h, w.transpose(-2, -1)) + b.unsqueeze(-2))
        loss = (h - x).square().mean(dim=(-2, -1))
    loss.sum().backward()
    return loss.detach(), [p.grad for p in leaves]
