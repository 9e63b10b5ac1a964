"""Autograd of the operators: the closed-form backwards of the functional operators against finite
differences (gradcheck, gradgradcheck) and against the reference's own autograd, through
torch.compile, and the refusal of the mutating operators to take tensors that require grad.

The proximal maps are piecewise smooth; the inputs keep every |x| and every group norm at least
0.05 away from lam, where finite differences of step 1e-6 never cross a kink."""

import pytest
import torch
from conftest import DEVICES, requires_cuda

import rda_ext
import rda_ext.ops
from rda_ext import reference

ops = torch.ops.rda_ext
F64 = torch.float64
LAM = 0.7
MARGIN = 0.05


def _away_from_lam(x, lam=LAM):
    """x with every |entry| moved at least MARGIN away from lam (and from 0)."""
    a = x.abs()
    a = torch.where((a - lam).abs() < MARGIN, a + 2 * MARGIN, a).clamp_min(MARGIN)
    return torch.where(x < 0, -a, a)


def _with_group_norms(x, dim, lam=LAM):
    """x with its groups rescaled to norms alternating below and above lam (0.4 lam, 1.9 lam, ...,
    never within MARGIN of it), so that some groups are zeroed and others shrunk."""
    n = x.norm(dim=dim, keepdim=True)
    k = torch.arange(n.numel(), dtype=x.dtype, device=x.device).reshape(n.shape)
    target = torch.where(k % 2 == 0, 0.4 * lam, (1.9 + 0.3 * k) * lam)
    return x / n * target


def _randn(gen, *shape, device="cpu"):
    return torch.randn(shape, generator=gen, dtype=F64).to(device)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def cases(device, gen):
    """(id, function of tensors, the tensor inputs, reference function) for every functional op,
    penalty, dim, with and without minus / norms, in several layouts."""
    x = _away_from_lam(_randn(gen, 6, 5, device=device))
    xt = _away_from_lam(_randn(gen, 5, 6, device=device)).t()  # column-major
    L = _randn(gen, 6, 5, device=device)
    out = [
        ("soft_threshold", lambda x: rda_ext.soft_threshold(x, LAM), [x], lambda x: reference.soft_threshold(x, LAM)),
        ("soft_threshold_T", lambda x: rda_ext.soft_threshold(x, LAM), [xt], lambda x: reference.soft_threshold(x, LAM)),
        ("soft_threshold_3d", lambda x: rda_ext.soft_threshold(x, LAM),
         [_away_from_lam(_randn(gen, 2, 3, 4, device=device))], lambda x: reference.soft_threshold(x, LAM)),
    ]
    for dim in (0, 1, -1):
        g = _with_group_norms(x, dim % 2)
        gt = _with_group_norms(xt, dim % 2)
        out += [
            (f"group_shrink_dim{dim}", lambda x, d=dim: rda_ext.group_shrink(x, LAM, d), [g],
             lambda x, d=dim: reference.group_shrink(x, LAM, d % 2)),
            (f"group_shrink_T_dim{dim}", lambda x, d=dim: rda_ext.group_shrink(x, LAM, d), [gt],
             lambda x, d=dim: reference.group_shrink(x, LAM, d % 2)),
            (f"group_norms_dim{dim}", lambda x, d=dim: rda_ext.group_norms(x, d), [x],
             lambda x, d=dim: reference.group_norms(x, d % 2)),
            (f"group_norms_minus_dim{dim}", lambda x, m, d=dim: rda_ext.group_norms(x, d, minus=m), [xt, L],
             lambda x, m, d=dim: reference.group_norms(x, d % 2, m)),
        ]
    R = _away_from_lam(_randn(gen, 6, 5, device=device))
    out.append(("shrink_residual_l1", lambda X, L: rda_ext.shrink_residual(X, L, LAM, "l1"), [L + R, L],
                lambda X, L: reference.shrink_residual(X, L, LAM, "l1")))
    for penalty, dim in (("l21_rows", 1), ("l21_cols", 0)):
        Rg = _with_group_norms(R, dim)
        X = (L + Rg).t().contiguous().t() if dim == 0 else L + Rg
        # norms as an independent input: the residual's norms perturbed, kept away from lam.
        norms = Rg.norm(dim=dim) * (1 + 0.1 * torch.rand(Rg.shape[1 - dim], generator=gen, dtype=F64).to(device))
        out += [
            (f"shrink_residual_{penalty}", lambda X, L, p=penalty: rda_ext.shrink_residual(X, L, LAM, p), [X, L],
             lambda X, L, p=penalty: reference.shrink_residual(X, L, LAM, p)),
            (f"shrink_residual_{penalty}_norms",
             lambda X, L, n, p=penalty: rda_ext.shrink_residual(X, L, LAM, p, norms=n), [X, L, norms],
             lambda X, L, n, p=penalty: reference.shrink_residual(X, L, LAM, p, n)),
        ]
    X, S, P = (_randn(gen, 6, 5, device=device) for _ in range(3))
    out += [
        ("convergence", rda_ext.convergence, [X, L, S, P], reference.convergence),
        ("convergence_T", rda_ext.convergence, [xt, L, S.t().contiguous().t(), P], reference.convergence),
        ("convergence_3d", rda_ext.convergence, [_randn(gen, 2, 3, 4, device=device) for _ in range(4)],
         reference.convergence),
        ("convergence_norms", lambda X, L, S, P: rda_ext.convergence(X, L, S, P, norms=True), [X, L, S, P],
         lambda X, L, S, P: reference.convergence(X, L, S, P, True)),
        # X = 0: c1, c2 are the plain norms; X itself is not differentiable there (kink), the others are.
        ("convergence_X0", lambda L, S, P, X=torch.zeros_like(X): rda_ext.convergence(X, L, S, P), [L, S, P],
         lambda L, S, P, X=torch.zeros_like(X): reference.convergence(X, L, S, P)),
    ]
    return out


CASE_IDS = [c[0] for c in cases("cpu", torch.Generator().manual_seed(0))]


def _case(device, name, seed=0):
    gen = torch.Generator().manual_seed(seed)
    (case,) = [c for c in cases(device, gen) if c[0] == name]
    return case


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_IDS)
def test_gradcheck_and_gradgradcheck(device, name):
    _, fn, inputs, _ = _case(device, name)
    inputs = [_leaf(t) for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASE_IDS)
def test_gradients_match_the_reference_autograd(device, name):
    _, fn, inputs, ref = _case(device, name, seed=1)
    a, b = [_leaf(t) for t in inputs], [_leaf(t) for t in inputs]
    y, y_ref = fn(*a), ref(*b)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=F64).to(device)
    got = torch.autograd.grad(y, a, g)
    want = torch.autograd.grad(y_ref, b, g)
    assert any(w.abs().max() > 1e-2 for w in want)  # the gradient is not trivially zero
    for u, w in zip(got, want):
        torch.testing.assert_close(u, w, rtol=1e-10, atol=1e-12)


def test_soft_threshold_gradient_is_not_the_identity():
    x = torch.tensor([-2.0, -0.5, 0.1, 0.31, 0.29, 1.0], dtype=F64, requires_grad=True)
    (x + rda_ext.soft_threshold(x, 0.3)).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([2.0, 2, 1, 2, 1, 2], dtype=F64))


@pytest.mark.parametrize("device", DEVICES)
def test_soft_threshold_gradient_under_torch_compile(device):
    @torch.compile(fullgraph=True)
    def f(x):
        return (x + rda_ext.soft_threshold(x, 0.3)).sum()

    x = _away_from_lam(torch.randn(7, 3, dtype=F64, device=device), 0.3).requires_grad_(True)
    f(x).backward()
    torch.testing.assert_close(x.grad, 1 + (x.detach().abs() > 0.3).to(F64))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_through_torch_compile_equals_eager(device):
    """An unrolled RDA-like step, differentiated end to end: every functional op, compiled."""

    def step(X, L, S, P, norms_scale):
        R = rda_ext.shrink_residual(X, L, 0.5, "l21_rows")
        n = rda_ext.group_norms(X, 0, minus=L) * norms_scale
        C = rda_ext.shrink_residual(X, L, 0.5, "l21_cols", norms=n)
        T = rda_ext.soft_threshold(rda_ext.group_shrink(X - C, 0.3, 1), 0.1)
        c = rda_ext.convergence(X, L, S + T, P)
        return (R * T).sum() + rda_ext.group_norms(R + C, 1).sum() + c.sum()

    gen = torch.Generator().manual_seed(3)
    base = [_randn(gen, 8, 5, device=device) for _ in range(4)] + [
        1 + 0.1 * torch.rand(5, generator=gen, dtype=F64).to(device)
    ]
    eager, comp = [_leaf(t) for t in base], [_leaf(t) for t in base]
    step(*eager).backward()
    torch.compile(step, fullgraph=True)(*comp).backward()
    for e, c in zip(eager, comp):
        assert e.grad is not None and e.grad.abs().max() > 0
        torch.testing.assert_close(c.grad, e.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
def test_norms_from_group_norms_give_the_gradient_without_norms(device, penalty):
    """norms = group_norms(X, dim, minus=L) is the residual's own norms: differentiating through both
    gives the gradient of shrink_residual without norms (the chain rule closes)."""
    dim = rda_ext.ops.GROUP_DIM[penalty]
    gen = torch.Generator().manual_seed(4)
    L = _randn(gen, 6, 5, device=device)
    X = L + _with_group_norms(_randn(gen, 6, 5, device=device), dim)
    g = _randn(gen, 6, 5, device=device)
    a, b = [_leaf(t) for t in (X, L)], [_leaf(t) for t in (X, L)]
    y = rda_ext.shrink_residual(*a, LAM, penalty, norms=rda_ext.group_norms(*a[:1], dim, minus=a[1]))
    want = torch.autograd.grad(rda_ext.shrink_residual(*b, LAM, penalty), b, g)
    for u, w in zip(torch.autograd.grad(y, a, g), want):
        torch.testing.assert_close(u, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_with_requires_grad(device):
    gen = torch.Generator().manual_seed(5)
    X, L, S, P = (_randn(gen, 7, 4, device=device) for _ in range(4))
    T = _randn(gen, 4, 7, device=device).t()
    norms_r = rda_ext.group_norms(X, 1, minus=L)
    norms_c = rda_ext.group_norms(T, 0, minus=L)
    samples = [
        (ops.soft_threshold.default, (X, 0.3)),
        (ops.soft_threshold.default, (T, 0.3)),
        (ops.group_shrink.default, (X, 1.0, 1)),
        (ops.group_shrink.default, (T, 1.0, 0)),
        (ops.shrink_residual.default, (X, L, 0.5, "l1")),
        (ops.shrink_residual.default, (X, L, 1.0, "l21_rows")),
        (ops.shrink_residual.default, (T, L, 1.0, "l21_cols")),
        (ops.shrink_residual.default, (X, L, 1.0, "l21_rows", norms_r)),
        (ops.shrink_residual.default, (T, L, 1.0, "l21_cols", norms_c)),
        (ops.group_norms.default, (X, 1)),
        (ops.group_norms.default, (T, 0, L)),
        (ops.group_norms.default, (X, -1, T)),
        (ops.convergence.default, (X, L, S, P)),
        (ops.convergence.default, (X, L, S, P, True)),
    ]
    for op, args in samples:
        args = tuple(_leaf(a) if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op, args)  # all of its tests, test_autograd_registration included


def _out_calls(device):
    """(id, call, the tensors it takes, the one it writes): every mutating entry, wrapper and op."""
    gen = torch.Generator().manual_seed(6)
    X, L, S, P, out = (_randn(gen, 5, 4, device=device) for _ in range(5))
    n = rda_ext.group_norms(X, 1, minus=L)
    return [
        ("soft_threshold", lambda x, o: rda_ext.soft_threshold(x, 0.3, out=o), [X, out], 1),
        ("soft_threshold_out", lambda x, o: ops.soft_threshold_out(x, 0.3, o), [X, out], 1),
        ("group_shrink", lambda x, o: rda_ext.group_shrink(x, 1.0, 0, out=o), [X, out], 1),
        ("group_shrink_out", lambda x, o: ops.group_shrink_out(x, 1.0, 0, o), [X, out], 1),
        ("shrink_residual", lambda X, L, n, o: rda_ext.shrink_residual(X, L, 1.0, "l21_rows", norms=n, out=o),
         [X, L, n, out], 3),
        ("shrink_residual_out", lambda X, L, n, o: ops.shrink_residual_out(X, L, 1.0, "l21_rows", o, n),
         [X, L, n, out], 3),
        ("shrink_residual_l1", lambda X, L, o: rda_ext.shrink_residual(X, L, 1.0, "l1", out=o), [X, L, out], 2),
        ("convergence_step", rda_ext.convergence_step, [X, L, S, P], 3),
        ("convergence_step_op", ops.convergence_step, [X, L, S, P], 3),
        ("convergence_step_norms", lambda X, L, S, P: rda_ext.convergence_step(X, L, S, P, norms=True),
         [X, L, S, P], 3),
    ]


OUT_IDS = [c[0] for c in _out_calls("cpu")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OUT_IDS)
def test_mutating_ops_refuse_requires_grad(device, name):
    (call,) = [c for c in _out_calls(device) if c[0] == name]
    _, fn, tensors, written = call
    for i in range(len(tensors)):
        args = [t.clone() for t in tensors]
        args[i].requires_grad_(True)
        before = args[written].detach().clone()
        with pytest.raises(RuntimeError, match="don't support automatic differentiation"):
            fn(*args)
        assert torch.equal(args[written].detach(), before), f"argument {i} requiring grad: out was written"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OUT_IDS)
def test_mutating_ops_run_under_no_grad(device, name):
    (call,) = [c for c in _out_calls(device) if c[0] == name]
    _, fn, tensors, written = call
    plain = [t.clone() for t in tensors]
    fn(*plain)
    args = [_leaf(t) for t in tensors]
    with torch.no_grad():
        fn(*args)
    torch.testing.assert_close(args[written].detach(), plain[written], rtol=0, atol=0)
    assert not torch.equal(args[written].detach(), tensors[written])  # it was written


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_narrow_dtypes_on_cuda_match_the_reference(dtype):
    """float16/bfloat16 gradients are computed in float32, as the reference's."""
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for name in ("soft_threshold", "group_shrink_dim1", "group_shrink_T_dim0", "group_norms_minus_dim0",
                 "shrink_residual_l21_cols", "shrink_residual_l21_rows_norms", "convergence"):
        _, fn, inputs, ref = _case("cuda", name, seed=7)
        a = [_leaf(t.to(dtype)) for t in inputs]
        b = [_leaf(t.to(dtype)) for t in inputs]
        y, y_ref = fn(*a), ref(*b)
        g = torch.randn(y.shape, device="cuda", dtype=torch.float64).to(y.dtype)
        for u, w in zip(torch.autograd.grad(y, a, g), torch.autograd.grad(y_ref, b, g)):
            assert u.dtype == dtype
            torch.testing.assert_close(u.double(), w.double(), rtol=tol, atol=tol * (1 + w.abs().max().item()))


