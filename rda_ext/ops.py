"""Typed wrappers over the ``torch.ops.rda_ext`` operators, each with its fake (meta) kernel so
that ``torch.compile(fullgraph=True)`` traces through them.

Shapes and penalties are those of the RDA problem X = L + S, rows = instances, columns = features.
The threshold ``lam`` is a Python number (finite, >= 0); the compiled operators check it.

The functional operators are differentiable (closed-form backwards registered with
``torch.library.register_autograd`` at the end of this module, written with torch ops so that they
are themselves differentiable and traceable). The mutating ones (``out=``, ``convergence_step``)
are not: they refuse tensors that require grad while grad mode is on, as torch's own out= functions.
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
    _refuse_grad("soft_threshold", x, out)
    _ops.soft_threshold_out(x, float(lam), out)
    return out


def group_shrink(x: Tensor, lam: float, dim: int, *, out: Tensor | None = None) -> Tensor:
    """The prox of ``lam * ||.||_{2,1}`` for a 2-D ``x``. The groups are the slices that
    ``x.norm(dim=dim)`` reduces: ``dim=1`` makes each row a group (instances), ``dim=0`` each
    column (features). A group with norm <= lam becomes exactly 0, any other is scaled by
    ``1 - lam / norm``."""
    if out is None:
        return _ops.group_shrink(x, float(lam), _dim(dim))
    _refuse_grad("group_shrink", x, out)
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
    _refuse_grad("shrink_residual", X, L, out, norms)
    _ops.shrink_residual_out(X, L, float(lam), penalty, out, norms)
    return out


def group_norms(x: Tensor, dim: int, *, minus: Tensor | None = None) -> Tensor:
    """The l2 norm of each group of a 2-D ``x``, as ``x.norm(dim=dim)``; with ``minus``, of
    ``x - minus`` without materialising it."""
    return _ops.group_norms(x, _dim(dim), minus)


def convergence(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor, *, norms: bool = False) -> Tensor:
    """The RDA stopping numbers as a float64 tensor ``[c1, c2]`` on X's device:
    ``c1 = ||X - L - S||_F / ||X||_F`` and ``c2 = ||LS_prev - L - S||_F / ||X||_F``
    (the plain norms where ``||X||_F = 0``). With ``norms=True``, the three norms themselves,
    ``[||X||_F, ||X - L - S||_F, ||LS_prev - L - S||_F]``, which a fit whose rows are split over
    processes combines over the ranks before dividing."""
    return _ops.convergence(X, L, S, LS_prev, bool(norms))


def convergence_step(X: Tensor, L: Tensor, S: Tensor, LS_prev: Tensor, *, norms: bool = False) -> Tensor:
    """``convergence(X, L, S, LS_prev, norms=norms)``, then ``LS_prev`` holds ``L + S`` (for the
    next iteration's c2), written in the same pass over the operands. ``LS_prev`` must share no
    memory with ``X``, ``L`` or ``S``. Not differentiable: refuses tensors that require grad while
    grad mode is on (use ``convergence`` and ``L + S``)."""
    _refuse_grad("convergence_step", X, L, S, LS_prev)
    return _ops.convergence_step(X, L, S, LS_prev, bool(norms))


def autoencoder_grads(x: Tensor, params: list[Tensor], grads: list[Tensor], depth: int, activation: str,
                      output_activation: str, compute_dtype: torch.dtype | None = None) -> Tensor:
    """One training step's numbers for RDA's autoencoder (``solver.autoencoder.DeepAutoencoder``,
    or K of them stacked): the mean squared error of its reconstruction of the batch ``x`` (rows,
    d) (or (K, rows, d)), returned (0-dim, or (K,)), and the gradient of every parameter, written
    into ``grads``. ``params`` in the order of ``model.parameters()``: the ``depth`` encoder
    weights and biases, then the decoder's weights (none with tied weights) and biases.
    ``compute_dtype`` (bfloat16): the products and activations in it, as under autocast. Not
    differentiable (it computes the gradients): refuses grads that require grad in grad mode."""
    _refuse_grad("autoencoder_grads", *grads)
    return _ops.autoencoder_grads(x, params, grads, int(depth), activation, output_activation, compute_dtype)


def _refuse_grad(name: str, *tensors: Tensor | None) -> None:
    """The mutating operators have no gradient: with grad mode on, refuse any argument that requires
    grad (the compiled front ends check it too, for direct torch.ops calls), before anything is
    written."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"rda_ext: {name}: out=... arguments don't support automatic differentiation, but one of the "
            "arguments requires grad (the operator writes its result in place and has no gradient; use "
            "the functional form, or call it under torch.no_grad())"
        )


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
def _(X, L, S, LS_prev, norms=False):
    for t, name in ((L, "L"), (S, "S"), (LS_prev, "LS_prev")):
        _check_like(t, name, X, "X")
    return X.new_empty(3 if norms else 2, dtype=torch.float64)


@torch.library.register_fake("rda_ext::convergence_step")
def _(X, L, S, LS_prev, norms=False):
    for t, name in ((L, "L"), (S, "S"), (LS_prev, "LS_prev")):
        _check_like(t, name, X, "X")
    return X.new_empty(3 if norms else 2, dtype=torch.float64)


@torch.library.register_fake("rda_ext::autoencoder_grads")
def _(x, params, grads, depth, activation, output_activation, compute_dtype=None):
    for p, g in zip(params, grads):
        _check_like(g, "each of grads", p, "its parameter")
    return x.new_empty(x.shape[:-2])


# ---------------------------------------------------------------------------------------------
# Autograd: closed-form backwards of the functional operators, in torch ops (differentiable again,
# so gradgradcheck and torch.compile work). float16/bfloat16 are computed in float32, as the
# forward. The proximal maps are piecewise smooth; at a kink (|x| == lam, a group norm == lam) the
# subgradient of the zero piece is taken.

_NARROW = (torch.float16, torch.bfloat16)


def _wide(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _NARROW else t


def _soft_threshold_grad(x: Tensor, lam: float, g: Tensor) -> Tensor:
    """g where |x| > lam (a lam beyond the dtype's range acts as its largest value, as the forward)."""
    lam = min(lam, torch.finfo(_wide(x).dtype).max)
    return torch.where(_wide(x).abs() > lam, g, torch.zeros_like(g))


def _group_shrink_grad(w: Tensor, lam: float, dim: int, g: Tensor) -> Tensor:
    """The gradient of y = w (1 - lam/n) per group (n > lam, else y = 0) at w (wide dtype):
    (1 - lam/n) g + (lam/n) u <u, g> with u = w/n, written so that huge or tiny norms do not
    overflow; a group of infinite norm (kept as is) passes g through; a NaN group gives NaN."""
    n = _ops.group_norms(w, dim).unsqueeze(dim)
    zero = n <= lam
    n_safe = torch.where(zero | n.isinf(), torch.ones_like(n), n)
    s = torch.full_like(n, lam) / n_safe  # lam as a tensor: see reference._shrink_factor
    u = w / n_safe
    curv = torch.where(n.isinf(), torch.zeros_like(n), s) * u * (u * g).sum(dim, keepdim=True)
    d = torch.where(n.isinf(), torch.ones_like(n), 1 - s) * g + curv
    return torch.where(zero, torch.zeros_like(d), d)


def _setup_x_lam(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _soft_threshold_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    (lam,) = ctx.args
    return _soft_threshold_grad(x, lam, grad), None


def _group_shrink_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    lam, dim = ctx.args
    dim = dim % 2
    return _group_shrink_grad(_wide(x), lam, dim, _wide(grad)).to(x.dtype), None, None


def _shrink_residual_setup(ctx, inputs, output):
    X, L, lam, penalty, norms = inputs
    ctx.save_for_backward(X, L, norms)
    ctx.lam, ctx.penalty = lam, penalty


def _shrink_residual_backward(ctx, grad):
    X, L, norms = ctx.saved_tensors
    lam, dim = ctx.lam, GROUP_DIM[ctx.penalty]
    R, g = _wide(X) - _wide(L), _wide(grad)
    dnorms = None
    if dim is None:
        dR = _soft_threshold_grad(R, lam, g)
    elif norms is None:
        dR = _group_shrink_grad(R, lam, dim, g)
    else:
        # y = R (1 - lam/norms) where norms > lam, else 0, norms an independent input.
        n = _wide(norms).unsqueeze(dim)
        zero = n <= lam
        s = torch.full_like(n, lam) / torch.where(zero, torch.ones_like(n), n)
        dR = torch.where(zero, torch.zeros_like(R), (1 - s) * g)
        if ctx.needs_input_grad[4]:
            inner = (R * g).sum(dim, keepdim=True)
            dn = torch.where(zero, torch.zeros_like(n), s / torch.where(zero, torch.ones_like(n), n) * inner)
            dnorms = dn.squeeze(dim).to(norms.dtype)
    dX = dR.to(X.dtype) if ctx.needs_input_grad[0] else None
    dL = (-dR).to(L.dtype) if ctx.needs_input_grad[1] else None
    return dX, dL, None, None, dnorms


def _group_norms_setup(ctx, inputs, output):
    x, dim, minus = inputs
    ctx.save_for_backward(x, minus)
    ctx.dim = dim % 2


def _unit(r: Tensor, n: Tensor) -> Tensor:
    """r / n, 0 where n == 0."""
    nz = n == 0
    return torch.where(nz, torch.zeros_like(r), r / torch.where(nz, torch.ones_like(n), n))


def _group_norms_backward(ctx, grad):
    x, minus = ctx.saved_tensors
    dim = ctx.dim
    r = _wide(x) if minus is None else _wide(x) - _wide(minus)
    n = _ops.group_norms(r, dim).unsqueeze(dim)
    dx = _wide(grad).unsqueeze(dim) * _unit(r, n)
    dminus = (-dx).to(minus.dtype) if minus is not None and ctx.needs_input_grad[2] else None
    return dx.to(x.dtype), None, dminus


def _convergence_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.norms = inputs[4]


def _convergence_backward(ctx, grad):
    X, L, S, P = ctx.saved_tensors
    if X.numel() == 0:
        return *(torch.zeros_like(t) for t in (X, L, S, P)), None
    Xd, Ld, Sd, Pd = (t.double() for t in (X, L, S, P))
    g = grad.double()
    D1, D2 = Xd - Ld - Sd, Pd - Ld - Sd

    def norm(t):  # overflow- and underflow-safe, and differentiable
        return _ops.group_norms(t.reshape(1, -1), 1).reshape(())

    s, n1, n2 = norm(Xd), norm(D1), norm(D2)
    if ctx.norms:  # d||t|| = t / ||t|| (0 where t is 0)
        g0, g1, g2 = g[0], g[1], g[2]
        e1, e2 = _unit(D1, n1), _unit(D2, n2)
        dX = g0 * _unit(Xd, s) + g1 * e1
    else:
        g1, g2 = g[0], g[1]
        ss = torch.where(s > 0, s, torch.ones_like(s))  # the plain norms where X is 0
        e1, e2 = _unit(D1, n1) / ss, _unit(D2, n2) / ss
        c1, c2 = n1 / ss, n2 / ss
        dX = g1 * e1 - (g1 * c1 + g2 * c2) * (_unit(Xd, s) / ss)
    dLS = -(g1 * e1 + g2 * e2)
    return dX.to(X.dtype), dLS.to(L.dtype), dLS.to(S.dtype), (g2 * e2).to(P.dtype), None


torch.library.register_autograd("rda_ext::soft_threshold", _soft_threshold_backward, setup_context=_setup_x_lam)
torch.library.register_autograd("rda_ext::group_shrink", _group_shrink_backward, setup_context=_setup_x_lam)
torch.library.register_autograd(
    "rda_ext::shrink_residual", _shrink_residual_backward, setup_context=_shrink_residual_setup
)
torch.library.register_autograd("rda_ext::group_norms", _group_norms_backward, setup_context=_group_norms_setup)
torch.library.register_autograd("rda_ext::convergence", _convergence_backward, setup_context=_convergence_setup)
