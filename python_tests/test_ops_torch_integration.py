"""The operators as torch sees them: schemas, fake kernels and torch.compile."""

import pytest
import torch
from conftest import DEVICES, assert_close

import rda_ext
from rda_ext import reference

ops = torch.ops.rda_ext


def samples(device):
    g = torch.Generator().manual_seed(0)
    X, L, S, P = (torch.randn(37, 19, generator=g).to(device) for _ in range(4))
    T = torch.randn(19, 37, generator=g).to(device).t()
    return [
        (ops.soft_threshold.default, (X, 0.3)),
        (ops.soft_threshold.default, (T, 0.3)),
        (ops.soft_threshold_out.default, (X, 0.3, torch.empty_like(X))),
        (ops.group_shrink.default, (X, 2.0, 1)),
        (ops.group_shrink.default, (T, 2.0, 0)),
        (ops.group_shrink_out.default, (X, 2.0, 0, torch.empty_like(X))),
        (ops.shrink_residual.default, (X, L, 1.0, "l1")),
        (ops.shrink_residual.default, (X, L, 3.0, "l21_rows")),
        (ops.shrink_residual.default, (T, L, 3.0, "l21_cols")),
        (ops.shrink_residual_out.default, (X, L, 3.0, "l21_cols", torch.empty_like(X))),
        (ops.group_norms.default, (X, 1)),
        (ops.group_norms.default, (T, 0)),
        (ops.convergence.default, (X, L, S, P)),
        (ops.convergence.default, (X, L, S, P, True)),
        # minus, norms and LS_prev present and absent, in X's layout and in others.
        (ops.group_norms.default, (X, 1, L)),
        (ops.group_norms.default, (T, 0, L)),
        (ops.group_norms.default, (X, -1, T)),
        (ops.group_norms.default, (X, 0, None)),
        (ops.shrink_residual.default, (X, L, 3.0, "l21_rows", rda_ext.group_norms(X, 1, minus=L))),
        (ops.shrink_residual.default, (T, L, 3.0, "l21_cols", rda_ext.group_norms(T, 0, minus=L))),
        (ops.shrink_residual.default, (X, L, 1.0, "l1", None)),
        (ops.shrink_residual_out.default,
         (X, L, 3.0, "l21_cols", torch.empty_like(X), rda_ext.group_norms(X, 0, minus=L))),
        # A column-major out and strided norms (every other element of a longer vector).
        (ops.shrink_residual_out.default, (X, T, 3.0, "l21_rows", torch.empty_like(X).t().contiguous().t(),
                                           torch.stack([rda_ext.group_norms(X, 1, minus=T)] * 2, 1).flatten()[::2])),
        (ops.shrink_residual_out.default, (X, L, 3.0, "l21_rows", torch.empty_like(X), None)),
        (ops.convergence_step.default, (X, L, S, P.clone())),
        (ops.convergence_step.default, (X, L, S, T.clone())),
        (ops.convergence_step.default, (T, L, S, P.clone())),
        (ops.convergence_step.default, (X, L, S, P.clone(), True)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in samples(device):
        # Gradients: test_ops_autograd.py (requires-grad samples); these samples include out= forms, which have none.
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    @torch.compile(fullgraph=True)
    def proximal_step(X, L, S_prev, lam):
        S = rda_ext.shrink_residual(X, L, lam, "l21_rows")
        scores = rda_ext.group_norms(X - L, 1)
        c = rda_ext.convergence(X, L, S, L + S_prev)
        rda_ext.soft_threshold(S_prev, lam, out=S_prev)
        return S, scores, c

    g = torch.Generator().manual_seed(1)
    X, L, S_prev = (torch.randn(64, 20, generator=g).to(device) for _ in range(3))
    S_prev_ref = S_prev.clone()
    S, scores, c = proximal_step(X, L, S_prev, 4.0)
    assert_close(S, reference.shrink_residual(X, L, 4.0, "l21_rows"), torch.float32)
    assert_close(scores, reference.group_norms(X - L, 1), torch.float32)
    torch.testing.assert_close(c.cpu(), reference.convergence(X, L, S, L + S_prev_ref).cpu(), rtol=1e-6, atol=0)
    assert_close(S_prev, reference.soft_threshold(S_prev_ref, 4.0), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
def test_torch_compile_fullgraph_through_the_fused_step(device, penalty):
    dim = rda_ext.ops.GROUP_DIM[penalty]

    @torch.compile(fullgraph=True)
    def rda_step(X, L, S, LS_prev, lam):
        norms = rda_ext.group_norms(X, dim, minus=L)  # the outlier scores, reused by the shrinkage
        rda_ext.ops.shrink_residual(X, L, lam, penalty, norms=norms, out=S)
        c = rda_ext.ops.convergence_step(X, L, S, LS_prev)
        return norms, c

    g = torch.Generator().manual_seed(2)
    X, L, S, LS_prev = (torch.randn(64, 20, generator=g).to(device) for _ in range(4))
    LS_prev_ref = LS_prev.clone()
    lam = torch.quantile(reference.group_norms(X, dim, L), 0.6).item()
    norms, c = rda_step(X, L, S, LS_prev, lam)
    assert_close(norms, reference.group_norms(X, dim, L), torch.float32)
    assert_close(S, reference.shrink_residual(X, L, lam, penalty), torch.float32, scale=8.0)
    assert (S == 0).all(dim=dim).any() and (S != 0).any()
    c_ref, next_ref = reference.convergence_step(X, L, S, LS_prev_ref)
    torch.testing.assert_close(c.cpu(), c_ref.cpu(), rtol=1e-6, atol=0)
    assert torch.equal(LS_prev, next_ref)  # the in-place write survives compilation


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_with_norms_and_minus_absent(device):
    @torch.compile(fullgraph=True)
    def step(X, L, LS_prev):
        scores = rda_ext.group_norms(X - L, 1)
        S = rda_ext.ops.shrink_residual(X, L, 0.5, "l1")
        return scores, S, rda_ext.ops.convergence_step(X, L, S, LS_prev)

    g = torch.Generator().manual_seed(3)
    X, L, LS_prev = (torch.randn(30, 17, generator=g).to(device) for _ in range(3))
    LS_prev_ref = LS_prev.clone()
    scores, S, c = step(X, L, LS_prev)
    assert_close(scores, reference.group_norms(X, 1, L), torch.float32)
    assert_close(S, reference.shrink_residual(X, L, 0.5, "l1"), torch.float32)
    c_ref, next_ref = reference.convergence_step(X, L, S, LS_prev_ref)
    torch.testing.assert_close(c.cpu(), c_ref.cpu(), rtol=1e-6, atol=0)
    assert torch.equal(LS_prev, next_ref)
