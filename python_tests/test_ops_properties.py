"""Property-based checks (hypothesis) of the float64 CPU kernels on arbitrary shapes and values."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rda_ext
from rda_ext import reference

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=True)
matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=70), elements=finite)
lams = st.floats(min_value=0, max_value=1e7, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9), elements=finite),
       lam=lams)
def test_soft_threshold_is_exact(x, lam):
    t = torch.from_numpy(x)
    assert torch.equal(rda_ext.soft_threshold(t, lam), reference.soft_threshold(t, lam))


@settings(max_examples=200, deadline=None)
@given(x=matrices, q=st.floats(0, 1.2), dim=st.sampled_from([0, 1]), transposed=st.booleans())
def test_group_shrink_matches_and_zeroes_exactly_the_small_groups(x, q, dim, transposed):
    t = torch.from_numpy(np.asfortranarray(x) if transposed else x)
    norms = rda_ext.group_norms(t, dim)
    lam = q * norms.max().item()
    S = rda_ext.group_shrink(t, lam, dim)
    ref = reference.group_shrink(t, lam, dim)
    torch.testing.assert_close(S, ref, rtol=0, atol=1e-12 * max(t.abs().max().item(), 1e-300))
    zero = (S == 0).all(dim=dim)
    assert torch.equal(zero, norms <= lam)
    # The prox of a norm never increases it: each surviving group shrinks by exactly lam.
    kept = ~zero
    torch.testing.assert_close(S.norm(dim=dim)[kept], (norms - lam)[kept], rtol=1e-12, atol=1e-12 * max(lam, 1))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), penalty=st.sampled_from(["l1", "l21_rows", "l21_cols"]), lam=lams)
def test_shrink_residual_equals_the_prox_of_the_difference(data, penalty, lam):
    X = data.draw(matrices)
    L = data.draw(hnp.arrays(np.float64, X.shape, elements=finite))
    tX, tL = torch.from_numpy(X), torch.from_numpy(L)
    S = rda_ext.shrink_residual(tX, tL, lam, penalty)
    ref = reference.shrink_residual(tX, tL, lam, penalty)
    torch.testing.assert_close(S, ref, rtol=0, atol=1e-12 * max((tX - tL).abs().max().item(), 1e-300))


@settings(max_examples=100, deadline=None)
@given(data=st.data(), dim=st.sampled_from([0, 1]), transposed=st.booleans())
def test_group_norms_of_a_difference_equal_those_of_the_materialised_difference(data, dim, transposed):
    # float64: the kernels form x - minus exactly as torch rounds it, then sum as without minus.
    x = data.draw(matrices)
    minus = data.draw(hnp.arrays(np.float64, x.shape, elements=finite))
    tx = torch.from_numpy(np.asfortranarray(x) if transposed else x)
    tm = torch.from_numpy(minus)
    norms = rda_ext.group_norms(tx, dim, minus=tm)
    assert torch.equal(norms, rda_ext.group_norms(tx - tm, dim))
    ref = reference.group_norms(tx, dim, tm)
    torch.testing.assert_close(norms, ref, rtol=1e-12, atol=0)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), penalty=st.sampled_from(["l21_rows", "l21_cols"]), q=st.floats(0, 1.2),
       transposed=st.booleans())
def test_shrink_residual_with_its_own_norms_is_the_same_as_without(data, penalty, q, transposed):
    X = data.draw(matrices)
    L = data.draw(hnp.arrays(np.float64, X.shape, elements=finite))
    tX = torch.from_numpy(np.asfortranarray(X) if transposed else X)
    tL = torch.from_numpy(L)
    dim = rda_ext.ops.GROUP_DIM[penalty]
    norms = rda_ext.group_norms(tX, dim, minus=tL)
    lam = q * norms.max().item()
    S = rda_ext.ops.shrink_residual(tX, tL, lam, penalty, norms=norms)
    # float64 on the CPU: group_norms sums exactly as the shrinkage does, so S is bit-identical,
    # the groups at lam included.
    assert torch.equal(S, rda_ext.ops.shrink_residual(tX, tL, lam, penalty))
    assert torch.equal((S == 0).all(dim=dim), norms <= lam)
    ref = reference.shrink_residual(tX, tL, lam, penalty, norms)
    torch.testing.assert_close(S, ref, rtol=0, atol=1e-12 * max((tX - tL).abs().max().item(), 1e-300))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_convergence_step_is_convergence_then_LS_prev_is_L_plus_S(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
    X, L, S, P = (torch.from_numpy(data.draw(hnp.arrays(np.float64, shape, elements=finite))) for _ in range(4))
    expected = rda_ext.convergence(X, L, S, P)
    c = rda_ext.ops.convergence_step(X, L, S, P)
    assert torch.equal(c, expected)
    assert torch.equal(P, L + S)
