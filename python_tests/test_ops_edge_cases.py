"""Thresholds at a group norm, lam = 0 and huge lam, zero and empty groups, NaN, out= and in place."""

import math

import pytest
import torch
from conftest import DEVICE_DTYPES, DEVICES, TOL, assert_close, rand

import rda_ext
from rda_ext import reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1])
def test_group_with_norm_exactly_lam_becomes_zero(device, dim):
    # ||(3, 4) * 2^-3|| = 0.625 exactly in binary floating point.
    x = torch.tensor([[0.375, 0.5], [0.5, 0.375]], dtype=torch.float64, device=device)
    x = x if dim == 1 else x.t().contiguous()
    assert torch.equal(rda_ext.group_shrink(x, 0.625, dim), torch.zeros_like(x))
    below = rda_ext.group_shrink(x, math.nextafter(0.625, 0), dim)
    assert (below != 0).all() and below.abs().max() < 1e-15
    assert torch.equal(rda_ext.group_shrink(x, math.nextafter(0.625, 1), dim), torch.zeros_like(x))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_threshold_at_and_around_a_computed_norm(device, dtype, dim, layout, gen):
    x = rand((301, 67), dtype, device, gen, layout)
    norms = rda_ext.group_norms(x, dim).double()
    k = int(torch.randint(norms.numel(), (), generator=gen))
    lam = norms[k].item()
    S = rda_ext.group_shrink(x, lam, dim)
    group = (lambda t: t[k]) if dim == 1 else (lambda t: t[:, k])
    # At its own norm a group is zero: exactly in float64, where group_norms returns the norm the
    # shrinkage compares with; narrower dtypes round the norm, so lam may fall just below it.
    if dtype == torch.float64:
        assert torch.equal(group(S), torch.zeros_like(group(S)))
    else:
        assert group(S).abs().max() <= TOL[dtype] * x.abs().max()
    keep = norms > lam * (1 + 1e-3)
    drop = norms < lam * (1 - 1e-3)
    nonzero = S.double().norm(dim=dim) > 0
    assert nonzero[keep].all() and not nonzero[drop].any()
    assert_close(S, reference.group_shrink(x, lam, dim), dtype, scale=x.abs().max().item())


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_lam_zero_is_the_identity_and_huge_lam_is_zero(device, dtype, gen):
    x = rand((129, 33), dtype, device, gen)
    x[3] = 0
    x[:, 5] = 0
    L = rand((129, 33), dtype, device, gen)
    assert torch.equal(rda_ext.soft_threshold(x, 0.0), x)
    for dim in (0, 1):
        assert torch.equal(rda_ext.group_shrink(x, 0.0, dim), x)
    for penalty in ("l1", "l21_rows", "l21_cols"):
        assert torch.equal(rda_ext.shrink_residual(x, L, 1e300, penalty), torch.zeros_like(x))
    assert torch.equal(rda_ext.soft_threshold(x, 1e300), torch.zeros_like(x))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_zero_groups_stay_zero_without_nan(device, dtype, gen):
    x = rand((50, 40), dtype, device, gen)
    x[7] = 0
    x[:, 9] = 0
    for lam in (0.0, 0.5):
        for dim in (0, 1):
            S = rda_ext.group_shrink(x, lam, dim)
            assert not S.isnan().any()
            assert (S[7] == 0).all() and (S[:, 9] == 0).all()
    assert rda_ext.group_norms(x, 1)[7] == 0 and rda_ext.group_norms(x, 0)[9] == 0


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_matrices(device, dtype, shape):
    x = torch.empty(shape, dtype=dtype, device=device)
    for dim in (0, 1):
        assert rda_ext.group_shrink(x, 1.0, dim).shape == shape
        norms = rda_ext.group_norms(x, dim)
        assert norms.shape == (shape[1 - dim],) and (norms == 0).all()
    for penalty in ("l1", "l21_rows", "l21_cols"):
        assert rda_ext.shrink_residual(x, x, 1.0, penalty).shape == shape
    assert rda_ext.soft_threshold(x, 1.0).shape == shape
    assert rda_ext.convergence(x, x, x, x).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_nan_is_propagated_not_hidden(device, dtype, gen):
    x = rand((20, 30), dtype, device, gen)
    x[4, 6] = float("nan")
    assert rda_ext.soft_threshold(x, 1e3).isnan().nonzero().tolist() == [[4, 6]]
    rows = rda_ext.group_shrink(x, 1e3, 1).isnan().any(dim=1)
    assert rows.nonzero().flatten().tolist() == [4]
    cols = rda_ext.group_shrink(x, 1e3, 0).isnan().any(dim=0)
    assert cols.nonzero().flatten().tolist() == [6]
    assert rda_ext.convergence(x, x, x, x).isnan().all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_convergence_of_zero_X_is_the_plain_norms(device, dtype, gen):
    X = torch.zeros((10, 3), dtype=dtype, device=device)
    L, S, P = (rand((10, 3), dtype, device, gen) for _ in range(3))
    expected = torch.stack([(-L.double() - S.double()).norm(), (P.double() - L.double() - S.double()).norm()])
    torch.testing.assert_close(rda_ext.convergence(X, L, S, P).cpu(), expected.cpu(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", ["l1", "l21_rows", "l21_cols"])
@pytest.mark.parametrize("out_layout", ["contiguous", "transposed", "padded", "into_X", "into_L"])
def test_out_variants_write_the_same_result(device, dtype, penalty, out_layout, gen):
    X = rand((97, 41), dtype, device, gen)
    L = rand((97, 41), dtype, device, gen, "transposed")
    lam = 0.3 if penalty == "l1" else 4.0
    expected = reference.shrink_residual(X, L, lam, penalty)
    if out_layout == "into_X":
        out = X
    elif out_layout == "into_L":
        out = L
    else:
        out = rand((97, 41), dtype, device, gen, out_layout)
    result = rda_ext.shrink_residual(X, L, lam, penalty, out=out)
    assert result is out
    assert_close(out, expected, dtype, scale=4.0)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
def test_in_place_soft_threshold_and_group_shrink(device, dtype, layout, gen):
    x = rand((64, 48), dtype, device, gen, layout)
    expected = reference.soft_threshold(x, 0.4)
    assert rda_ext.soft_threshold(x, 0.4, out=x) is x
    assert_close(x, expected, dtype)
    for dim in (0, 1):
        expected = reference.group_shrink(x, 0.5, dim)
        rda_ext.group_shrink(x, 0.5, dim, out=x)
        assert_close(x, expected, dtype, scale=4.0)


@pytest.mark.parametrize("device", DEVICES)
def test_out_partially_overlapping_an_input_is_refused(device, gen):
    buf = rand((11, 10), torch.float32, device, gen)
    X, out = buf[:10], buf[1:]
    with pytest.raises(RuntimeError, match="single memory location"):
        rda_ext.shrink_residual(X, X.clone(), 0.1, "l1", out=out)
