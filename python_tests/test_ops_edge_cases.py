"""Thresholds at a group norm, lam = 0 and huge lam, zero and empty groups, NaN, out= and in place.

The tests whose expected values are computed independently (not by the reference) run against the
kernels and the reference alike (the impl fixture), so that the ground truth follows the same rules."""

import math
import sys

import pytest
import torch
from conftest import DEVICE_DTYPES, DEVICES, LAYOUTS, TOL, assert_close, rand, requires_cuda

import rda_ext
import rda_ext.ops
from rda_ext import reference


@pytest.fixture(params=[rda_ext.ops, reference], ids=["kernels", "reference"])
def impl(request):
    """The module whose operators a test checks: rda_ext.ops or rda_ext.reference (same names)."""
    return request.param


def convergence_step(impl, X, L, S, LS_prev):
    """impl's convergence_step as the kernels' one: returns the numbers, leaves L + S in LS_prev."""
    if impl is reference:
        c, LS_next = reference.convergence_step(X, L, S, LS_prev)
        LS_prev.copy_(LS_next)
        return c
    return impl.convergence_step(X, L, S, LS_prev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1])
def test_group_with_norm_exactly_lam_becomes_zero(impl, device, dim):
    # ||(3, 4) * 2^-3|| = 0.625 exactly in binary floating point.
    x = torch.tensor([[0.375, 0.5], [0.5, 0.375]], dtype=torch.float64, device=device)
    x = x if dim == 1 else x.t().contiguous()
    assert torch.equal(impl.group_shrink(x, 0.625, dim), torch.zeros_like(x))
    below = impl.group_shrink(x, math.nextafter(0.625, 0), dim)
    assert (below != 0).all() and below.abs().max() < 1e-15
    assert torch.equal(impl.group_shrink(x, math.nextafter(0.625, 1), dim), torch.zeros_like(x))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_threshold_at_and_around_a_computed_norm(impl, device, dtype, dim, layout, gen):
    x = rand((301, 67), dtype, device, gen, layout)
    norms = impl.group_norms(x, dim).double()
    k = int(torch.randint(norms.numel(), (), generator=gen))
    lam = norms[k].item()
    S = impl.group_shrink(x, lam, dim)
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
def test_lam_zero_is_the_identity_and_huge_lam_is_zero(impl, device, dtype, gen):
    x = rand((129, 33), dtype, device, gen)
    x[3] = 0
    x[:, 5] = 0
    L = rand((129, 33), dtype, device, gen)
    assert torch.equal(impl.soft_threshold(x, 0.0), x)
    for dim in (0, 1):
        assert torch.equal(impl.group_shrink(x, 0.0, dim), x)
    for lam in (1e39, 1e300):  # 1e39: beyond float32's range (and float16's, bfloat16's)
        for penalty in ("l1", "l21_rows", "l21_cols"):
            assert torch.equal(impl.shrink_residual(x, L, lam, penalty), torch.zeros_like(x))
        assert torch.equal(impl.soft_threshold(x, lam), torch.zeros_like(x))
        for dim in (0, 1):
            assert torch.equal(impl.group_shrink(x, lam, dim), torch.zeros_like(x))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_zero_groups_stay_zero_without_nan(impl, device, dtype, gen):
    x = rand((50, 40), dtype, device, gen)
    x[7] = 0
    x[:, 9] = 0
    for lam in (0.0, 0.5):
        for dim in (0, 1):
            S = impl.group_shrink(x, lam, dim)
            assert not S.isnan().any()
            assert (S[7] == 0).all() and (S[:, 9] == 0).all()
    assert impl.group_norms(x, 1)[7] == 0 and impl.group_norms(x, 0)[9] == 0


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_matrices(impl, device, dtype, shape):
    x = torch.empty(shape, dtype=dtype, device=device)
    for dim in (0, 1):
        S = impl.group_shrink(x, 1.0, dim)
        assert S.shape == shape and S.dtype == dtype
        norms = impl.group_norms(x, dim)
        assert norms.shape == (shape[1 - dim],) and norms.dtype == dtype and (norms == 0).all()
    for penalty in ("l1", "l21_rows", "l21_cols"):
        assert impl.shrink_residual(x, x, 1.0, penalty).shape == shape
        assert impl.shrink_residual(x, x, 1e39, penalty).shape == shape
    assert impl.soft_threshold(x, 1.0).shape == shape
    assert impl.convergence(x, x, x, x).tolist() == [0.0, 0.0]
    assert impl.convergence(x, x, x, x, norms=True).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_nan_is_propagated_not_hidden(impl, device, dtype, gen):
    x = rand((20, 30), dtype, device, gen)
    x[4, 6] = float("nan")
    assert impl.soft_threshold(x, 1e3).isnan().nonzero().tolist() == [[4, 6]]
    rows = impl.group_shrink(x, 1e3, 1).isnan().any(dim=1)
    assert rows.nonzero().flatten().tolist() == [4]
    cols = impl.group_shrink(x, 1e3, 0).isnan().any(dim=0)
    assert cols.nonzero().flatten().tolist() == [6]
    assert impl.convergence(x, x, x, x).isnan().all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_convergence_of_zero_X_is_the_plain_norms(impl, device, dtype, gen):
    X = torch.zeros((10, 3), dtype=dtype, device=device)
    L, S, P = (rand((10, 3), dtype, device, gen) for _ in range(3))
    expected = torch.stack([(-L.double() - S.double()).norm(), (P.double() - L.double() - S.double()).norm()])
    torch.testing.assert_close(impl.convergence(X, L, S, P).cpu(), expected.cpu(), rtol=1e-12, atol=0)


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


# ---- group_norms(minus=), shrink_residual(norms=), convergence_step ----------------------------

GROUP_DIM = rda_ext.ops.GROUP_DIM
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


def ulp_step(t: torch.Tensor, steps: int) -> torch.Tensor:
    """Positive t moved by a number of ulps in its own dtype (+1: the next value up)."""
    return (t.view(_BITS[t.dtype]) + steps).view(t.dtype)


def residual_away_from_zero(shape, dtype, device, gen, layout="contiguous"):
    """X and L with every entry of X - L at least about 0.5 in magnitude, so a tiny shrink factor
    times the residual is not rounded to 0 even in float16."""
    L = rand(shape, dtype, device, gen, layout)
    D = rand(shape, torch.float64, "cpu", gen)
    D = (D.sign() * (0.5 + D.abs())).to(device)
    X = rand(shape, dtype, device, gen, layout)  # the layout, then the values
    X.copy_(L.double() + D)
    return X, L


def group_of(dim: int, k: int):
    return (lambda t: t[k]) if dim == 1 else (lambda t: t[:, k])


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_matrices_in_the_new_forms(impl, device, dtype, shape):
    x = torch.empty(shape, dtype=dtype, device=device)
    for dim in (0, 1):
        norms = impl.group_norms(x, dim, minus=torch.empty_like(x))
        assert norms.shape == (shape[1 - dim],) and norms.dtype == dtype and (norms == 0).all()
    for penalty in ("l21_rows", "l21_cols"):
        norms = torch.ones(shape[1 - GROUP_DIM[penalty]], dtype=dtype, device=device)
        S = impl.shrink_residual(x, x, 1.0, penalty, norms=norms)
        assert S.shape == shape and S.dtype == dtype
    P = torch.empty(shape, dtype=dtype, device=device)
    c = convergence_step(impl, x, x, x, P)
    assert c.dtype == torch.float64 and c.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_matrices_out_with_given_norms(device, dtype, shape):
    x = torch.empty(shape, dtype=dtype, device=device)
    for penalty in ("l21_rows", "l21_cols"):
        norms = torch.ones(shape[1 - GROUP_DIM[penalty]], dtype=dtype, device=device)
        out = torch.empty(shape, dtype=dtype, device=device)
        assert rda_ext.ops.shrink_residual(x, x, 1.0, penalty, norms=norms, out=out) is out


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
def test_given_norm_exactly_lam_is_zero_and_one_ulp_above_is_not(impl, device, dtype, penalty, gen):
    X, L = residual_away_from_zero((40, 23), dtype, device, gen)
    dim = GROUP_DIM[penalty]
    norms = impl.group_norms(X, dim, minus=L)
    n = norms.numel()
    k_at, k_above, k_below = torch.randperm(n, generator=gen)[:3].tolist()
    v = norms[k_at].clone()
    lam = v.item()  # exact: every dtype here converts to float64 exactly
    norms[k_above] = ulp_step(v, 1)
    norms[k_below] = ulp_step(v, -1)
    assert norms[k_below].item() < lam < norms[k_above].item()
    S = impl.shrink_residual(X, L, lam, penalty, norms=norms)
    at, above, below = (group_of(dim, k)(S) for k in (k_at, k_above, k_below))
    assert torch.equal(at, torch.zeros_like(at))
    assert torch.equal(below, torch.zeros_like(below))
    assert (above != 0).all()
    # Scaled by 1 - lam / norm, a little over 2^-p: tiny, and of the residual's signs.
    R = reference.shrink_residual(X, L, 0.0, "l1")
    r_above = group_of(dim, k_above)(R)
    assert torch.equal(above.sign(), r_above.sign())
    assert (above.double().abs() <= 2 * TOL[dtype] * r_above.double().abs()).all()
    assert_close(S, reference.shrink_residual(X, L, lam, penalty, norms), dtype, scale=R.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_lam_exactly_at_a_group_norms_result_zeroes_the_computed_group(impl, device, penalty, layout, gen):
    # float64: group_norms(X, dim, minus=L) is exactly the norm that shrink_residual computes and
    # compares with lam, so that group is exactly 0 and one ulp lower keeps it.
    X, L = residual_away_from_zero((301, 67), torch.float64, device, gen, layout)
    dim = GROUP_DIM[penalty]
    norms = impl.group_norms(X, dim, minus=L)
    k = int(torch.randint(norms.numel(), (), generator=gen))
    lam = norms[k].item()
    group = group_of(dim, k)
    at = group(impl.shrink_residual(X, L, lam, penalty))
    assert torch.equal(at, torch.zeros_like(at))
    below = group(impl.shrink_residual(X, L, math.nextafter(lam, 0), penalty))
    assert (below != 0).all() and below.abs().max() < 1e-14 * lam


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("transposed", "contiguous"),
                                     ("sliced", "transposed")])
def test_given_norms_and_computed_norms_give_the_same_S(impl, device, dtype, penalty, layouts, gen):
    X = rand((257, 130), dtype, device, gen, layouts[0])
    L = rand((257, 130), dtype, device, gen, layouts[1], scale=0.5)
    dim = GROUP_DIM[penalty]
    R = reference.shrink_residual(X, L, 0.0, "l1")
    norms = impl.group_norms(X, dim, minus=L)
    lam = torch.quantile(norms.double().cpu(), 0.5).item()
    computed = impl.shrink_residual(X, L, lam, penalty)
    given = impl.shrink_residual(X, L, lam, penalty, norms=norms)
    assert_close(given, computed, dtype, scale=R.abs().max().item())
    if dtype == torch.float64:  # the norms are those the kernel computes: the same S, bit for bit
        assert torch.equal(given, computed)
    assert_close(given, reference.shrink_residual(X, L, lam, penalty), dtype, scale=R.abs().max().item())


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_norm_gives_a_nan_group_and_inf_keeps_it(impl, device, dtype, penalty, bad, gen):
    X, L = residual_away_from_zero((20, 30), dtype, device, gen)
    dim = GROUP_DIM[penalty]
    norms = impl.group_norms(X, dim, minus=L)
    k = int(torch.randint(norms.numel(), (), generator=gen))
    lam = 0.5 * norms.double().min().item()  # no group is zeroed
    norms[k] = float(bad)
    S = impl.shrink_residual(X, L, lam, penalty, norms=norms)
    nan_groups = S.isnan().any(dim=dim).nonzero().flatten().tolist()
    if bad == "nan":
        assert nan_groups == [k] and group_of(dim, k)(S).isnan().all()
    else:  # factor 1 - lam / inf = 1: the residual itself
        R = reference.shrink_residual(X, L, 0.0, "l1")
        assert nan_groups == [] and torch.equal(group_of(dim, k)(S), group_of(dim, k)(R))
    others = torch.ones(norms.numel(), dtype=torch.bool)
    others[k] = False
    kept = S.movedim(dim, 1)[others.to(device)] if dim == 0 else S[others.to(device)]
    assert (kept != 0).all() and not kept.isnan().any()
    assert_close(S, reference.shrink_residual(X, L, lam, penalty, norms), dtype, scale=20.0)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_group_norms_minus_itself_is_zero_and_nan_propagates(impl, device, dtype, gen):
    x = rand((20, 30), dtype, device, gen)
    for dim in (0, 1):
        assert torch.equal(impl.group_norms(x, dim, minus=x), torch.zeros(x.shape[1 - dim], dtype=dtype,
                                                                        device=device))
    minus = rand((20, 30), dtype, device, gen)
    minus[4, 6] = float("nan")
    assert impl.group_norms(x, 1, minus=minus).isnan().nonzero().flatten().tolist() == [4]
    assert impl.group_norms(x, 0, minus=minus).isnan().nonzero().flatten().tolist() == [6]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("P_layout", ["transposed", "sliced", "padded"])
@pytest.mark.parametrize("X_layout", ["contiguous", "transposed"])
def test_convergence_step_writes_a_strided_LS_prev_and_nothing_beside_it(device, dtype, P_layout, X_layout, gen):
    shape = (45, 31)
    X, L, S = (rand(shape, dtype, device, gen, X_layout) for _ in range(3))
    # LS_prev a view of a larger buffer, so writes outside the view would show.
    if P_layout == "transposed":
        base = rand(shape[::-1], dtype, device, gen)
        P = base.t()
    elif P_layout == "sliced":
        base = rand((2 * shape[0], 2 * shape[1] + 1), dtype, device, gen)
        P = base[::2, 1::2]
    else:
        base = rand((shape[0], shape[1] + 3), dtype, device, gen)
        P = base[:, : shape[1]]
    base_before, P_before = base.clone(), P.clone()
    c = rda_ext.ops.convergence_step(X, L, S, P)
    assert torch.equal(P, reference.convergence_step(X, L, S, P_before)[1])
    assert torch.equal(c, rda_ext.convergence(X, L, S, P_before))
    untouched = torch.ones_like(base, dtype=torch.bool)
    (untouched.t() if P_layout == "transposed" else untouched)[
        (slice(None, None, 2), slice(1, None, 2)) if P_layout == "sliced" else (slice(None), slice(None, shape[1]))
    ] = False
    assert torch.equal(base[untouched], base_before[untouched])


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (63, 17), (4, 5, 6), (20000,)])
def test_convergence_step_returns_convergence_before_the_update(device, dtype, shape, gen):
    X, L, S, P = (rand(shape, dtype, device, gen, scale=s) for s in (1.0, 0.9, 0.1, 1.0))
    before = rda_ext.convergence(X, L, S, P)
    P_before = P.clone()
    c = rda_ext.ops.convergence_step(X, L, S, P)
    assert torch.equal(c, before)  # the same kernel, the same sums
    assert torch.equal(P, reference.convergence_step(X, L, S, P_before)[1])
    assert torch.equal(rda_ext.convergence(X, L, S, P), rda_ext.ops.convergence_step(X, L, S, P))
    # A second step from the updated LS_prev measures against L + S, which it writes again.
    assert rda_ext.convergence(X, L, S, P)[1] < before[1]
    assert torch.equal(P, reference.convergence_step(X, L, S, P_before)[1])


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
@pytest.mark.parametrize("out_layout", ["contiguous", "transposed", "padded", "into_X", "into_L"])
def test_out_with_given_norms(device, dtype, penalty, out_layout, gen):
    X = rand((97, 41), dtype, device, gen)
    L = rand((97, 41), dtype, device, gen, "transposed")
    dim = GROUP_DIM[penalty]
    norms = rda_ext.group_norms(X, dim, minus=L)
    lam = torch.quantile(norms.double().cpu(), 0.4).item()
    expected = reference.shrink_residual(X, L, lam, penalty, norms)
    scale = reference.shrink_residual(X, L, 0.0, "l1").abs().max().item()
    out = {"into_X": X, "into_L": L}.get(out_layout)
    if out is None:
        out = rand((97, 41), dtype, device, gen, out_layout)
    assert rda_ext.ops.shrink_residual(X, L, lam, penalty, norms=norms, out=out) is out
    assert_close(out, expected, dtype, scale=scale)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", ["l1", "l21_rows", "l21_cols"])
def test_rda_iterations_reusing_S_and_LS_prev_buffers(device, dtype, penalty, gen):
    # The solver's loop: S and LS_prev allocated once, S written with out=S, LS_prev by
    # convergence_step, the l2,1 norms from group_norms(minus=) handed to the shrinkage.
    shape = (120, 36)
    X = rand(shape, dtype, device, gen)
    S = torch.zeros_like(X).t().contiguous().t()  # a column-major buffer
    LS_prev = X.clone()
    S_ref, LS_prev_ref = torch.zeros_like(X), X.clone()
    dim = GROUP_DIM[penalty]
    lam = 0.3 if dim is None else math.sqrt(shape[dim])  # about the median norm: zeroes some groups
    for it in range(3):
        L = X - S_ref + rand(shape, dtype, device, gen)  # an autoencoder's reconstruction
        norms = None if dim is None else rda_ext.group_norms(X, dim, minus=L)
        assert rda_ext.ops.shrink_residual(X, L, lam, penalty, norms=norms, out=S) is S
        S_ref = reference.shrink_residual(X, L, lam, penalty)
        assert_close(S, S_ref, dtype, scale=reference.shrink_residual(X, L, 0.0, "l1").abs().max().item())
        zero_groups = (S == 0) if dim is None else (S == 0).all(dim=dim)
        assert not zero_groups.all() and (it > 0 or zero_groups.any())
        S_ref = S.clone()  # go on from the kernel's S, so that the iterations stay comparable
        c = rda_ext.ops.convergence_step(X, L, S, LS_prev)
        c_ref, LS_prev_ref = reference.convergence_step(X, L, S_ref, LS_prev_ref)
        torch.testing.assert_close(c.cpu(), c_ref.cpu(), rtol=1e-12, atol=0)
        assert torch.equal(LS_prev, LS_prev_ref)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("lam", [3.4e38, 3.41e38, 1e300, 1.7976931348623157e308])
def test_huge_finite_lam_keeps_infinite_entries(impl, device, dtype, lam, gen):
    """A finite lam at or above the dtype's largest value zeroes every finite entry but the largest
    ones above it, and keeps +-inf (the prox of an infinite entry) as float64 arithmetic does; it must
    not round to inf in the dtype and make inf - inf = NaN."""
    x = rand((7, 9), dtype, device, gen)
    x[0, 0], x[3, 4], x[5, 8] = math.inf, -math.inf, torch.finfo(dtype).max
    # A lam beyond the dtype acts as its largest value: what float64 arithmetic gives for the entries
    # (the dtype's values and its largest value are exact in float64, their difference too).
    lam_in_dtype = torch.tensor(min(lam, torch.finfo(dtype).max), dtype=dtype).item()
    expected = reference.soft_threshold(x.double(), lam_in_dtype).to(dtype)
    for got in (impl.soft_threshold(x, lam), impl.shrink_residual(x, torch.zeros_like(x), lam, "l1")):
        assert got[0, 0] == math.inf and got[3, 4] == -math.inf and not got.isnan().any()
        assert torch.equal(got, expected)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
def test_groups_holding_inf_keep_their_values_in_kernels_and_reference(impl, device, dtype, dim, gen):
    """The rule for an infinite group norm (a group holding +-inf, or whose norm overflows the dtype):
    factor 1 - lam / inf = 1, the group unchanged, in the kernels and the reference alike; the
    other groups are shrunk as usual."""
    x = rand((6, 8), dtype, device, gen)
    big = torch.finfo(dtype).max * 0.6
    group = (lambda t, k: t[k]) if dim == 1 else (lambda t, k: t[:, k])
    group(x, 1)[0] = math.inf
    group(x, 2)[1] = -math.inf
    group(x, 3)[:4] = big  # finite entries whose norm overflows the dtype
    lam = 0.5
    penalty = "l21_rows" if dim == 1 else "l21_cols"
    for S in (impl.group_shrink(x, lam, dim), impl.shrink_residual(x, torch.zeros_like(x), lam, penalty)):
        for k in (1, 2, 3):
            assert torch.equal(group(S, k), group(x, k))
        assert not S.isnan().any()
    assert torch.equal(impl.group_norms(x, dim)[[1, 2, 3]].cpu(), torch.full((3,), math.inf, dtype=dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("magnitude", [1e-320, 1e-300, 1e-170, 3e151, 1e170, 1e300])
@pytest.mark.parametrize("step", [False, True], ids=["convergence", "convergence_step"])
def test_convergence_of_float64_data_beyond_the_square_range(device, magnitude, step, gen):
    """Squares of float64 data beyond 1e+-154 under- or overflow; the numbers must still be the
    ratios of the true norms (not NaN, and not a false [0, 0] that stops training as converged)."""
    shape = (700, 300)  # several chunks and tiles, so that chunk sums are combined too
    X, L, S, P = (rand(shape, torch.float64, device, gen) * magnitude for _ in range(4))
    # The same numbers from the data brought back to ordinary magnitudes (a power of two: exact).
    k = -round(math.log2(magnitude))
    expected = reference.convergence(*(t * 2.0 ** (k // 2) * 2.0 ** (k - k // 2) for t in (X, L, S, P)))
    assert (expected > 0).all()
    # Subnormal data (1e-320) holds only a few significant digits; the ratios keep what is there.
    rel = 1e-3 if magnitude < 1e-307 else 1e-13
    torch.testing.assert_close(reference.convergence(X, L, S, P).cpu(), expected.cpu(), rtol=rel, atol=0)
    P_next = L + S
    c = rda_ext.ops.convergence_step(X, L, S, P) if step else rda_ext.convergence(X, L, S, P)
    torch.testing.assert_close(c.cpu(), expected.cpu(), rtol=rel, atol=0)
    if step:
        assert torch.equal(P, P_next)


@pytest.mark.parametrize("device", DEVICES)
def test_convergence_with_one_chunk_far_below_the_others(device, gen):
    """A few tiny rows among ordinary ones: the chunks' sums are combined without losing either."""
    X, L, S, P = (rand((3000, 100), torch.float64, device, gen) for _ in range(4))
    for t in (X, L, S, P):
        t[:1000] *= 1e-200  # the first chunks hold only tiny values
    ref = reference.convergence(X, L, S, P)
    torch.testing.assert_close(rda_ext.convergence(X, L, S, P).cpu(), ref.cpu(), rtol=1e-13, atol=0)
    assert (ref > 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scale", [1e25, 1e-21])
def test_float32_values_whose_squares_leave_float32s_range(gen, device, dim, layout, scale):
    """Squares are formed and summed in float64: float32 entries near 1e25 have squares beyond
    float32's range (3.4e38), entries near 1e-21 squares among its subnormals (below 1.2e-38,
    with few digits left); their group norms are exact to float32's rounding all the same."""
    x = rand((37, 23), torch.float32, device, gen, layout, scale=scale)
    expected = reference.group_norms(x, dim)
    assert torch.isfinite(expected).all() and (expected > 0).all()
    assert_close(rda_ext.ops.group_norms(x, dim), expected, torch.float32)
    lam = scale / 10
    assert_close(rda_ext.ops.group_shrink(x, lam, dim), reference.group_shrink(x, lam, dim), torch.float32)


# ---- the reference held to the kernels' rules: lam, ranges, exact thresholds, inf -----------------

# (device, dtype) pairs whose range a finite float64 lam can exceed.
NARROW_DEVICE_DTYPES = [
    ("cpu", torch.float32),
    *[pytest.param("cuda", dt, marks=requires_cuda) for dt in (torch.float32, torch.float16, torch.bfloat16)],
]


@pytest.mark.parametrize("lam", [-1e-9, math.nan, math.inf, -math.inf])
def test_lam_the_kernels_refuse_is_refused(impl, lam, gen):
    x = rand((4, 5), torch.float64, "cpu", gen)
    error = ValueError if impl is reference else RuntimeError
    calls = [
        lambda: impl.soft_threshold(x, lam),
        lambda: impl.group_shrink(x, lam, 0),
        *[lambda p=p: impl.shrink_residual(x, x, lam, p) for p in ("l1", "l21_rows", "l21_cols")],
        lambda: impl.shrink_residual(x, x, lam, "l21_rows", norms=impl.group_norms(x, 1)),
    ]
    for call in calls:
        with pytest.raises(error, match="lam must be a finite number >= 0"):
            call()


@pytest.mark.parametrize("device,dtype", NARROW_DEVICE_DTYPES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("lam_case", ["half_the_big_norm", "1e39", "1e300", "float64_max"])
def test_lam_beyond_the_dtypes_range_in_the_group_penalties(impl, device, dtype, dim, lam_case, gen):
    """Group norms and shrink factors are float64 in every dtype: a group of finite values whose norm
    overflows the dtype is compared with a lam beyond the dtype's range as it is (scaled by
    1 - lam / norm, the factor rounded to the computing dtype, or zeroed); a group holding +-inf
    keeps its values, a NaN group is NaN, ordinary groups are 0."""
    rows = rand((6, 64), dtype, device, gen)
    big = 2.0 ** math.floor(math.log2(torch.finfo(dtype).max))  # the dtype's largest power of two
    rows[0] = big  # norm 8 * big (64 entries): beyond the dtype's range, finite in float64
    rows[1, 5] = math.inf
    rows[2, 7] = -math.inf
    rows[3, 11] = math.nan
    big_norm = 8 * big
    lam = {"half_the_big_norm": big_norm / 2, "1e39": 1e39, "1e300": 1e300, "float64_max": sys.float_info.max}[lam_case]
    assert lam > torch.finfo(dtype).max
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    factor = torch.tensor(max(0.0, 1 - lam / big_norm), dtype=torch.float64).to(compute).item()
    expected_big = torch.tensor(factor * big, dtype=compute).to(dtype).item()  # a power of two times it: exact
    x = rows if dim == 1 else rows.t().contiguous()
    penalty = "l21_rows" if dim == 1 else "l21_cols"
    for S in (impl.group_shrink(x, lam, dim), impl.shrink_residual(x, torch.zeros_like(x), lam, penalty)):
        g = group_of(dim, 0)(S)
        assert torch.equal(g, torch.full_like(g, expected_big))
        for k in (1, 2):
            assert torch.equal(group_of(dim, k)(S), group_of(dim, k)(x))
        assert group_of(dim, 3)(S).isnan().all()
        for k in (4, 5):
            g = group_of(dim, k)(S)
            assert torch.equal(g, torch.zeros_like(g))
    # Rounded to the dtype, the big group's norm overflows.
    assert impl.group_norms(x, dim)[0].item() == math.inf
    assert (expected_big != 0) == (lam_case == "half_the_big_norm" or (lam_case == "1e39" and big_norm > 1e39))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("magnitude", [1e-320, 1e-300, 1e-170, 1e170, 1e300])
def test_float64_groups_beyond_the_square_range(impl, device, dim, magnitude, gen):
    """Squares of float64 data beyond 1e+-154 under- or overflow; group norms and the shrinkage must
    still be those of the same data at ordinary magnitudes (torch's plain norm there), scaled back by
    the same power of two: not 0, inf or NaN."""
    def scaled(t, p):  # t * 2^p in two steps: 2^1063 alone overflows
        return t * 2.0 ** (p // 2) * 2.0 ** (p - p // 2)

    e = round(math.log2(magnitude))
    o = rand((37, 23), torch.float64, device, gen)
    groups = o.shape[1 - dim]
    # Group norms alternately 2 and 5 at ordinary magnitude, lam 3.5: none is near lam.
    target = torch.tensor([2.0 if k % 2 == 0 else 5.0 for k in range(groups)], dtype=torch.float64, device=device)
    x = scaled(o / o.norm(dim=dim, keepdim=True) * target.unsqueeze(dim), e)
    ordinary = scaled(x, -e)  # exact: the digits x holds, brought back
    lam = scaled(3.5, e)
    lam_o = scaled(lam, -e)
    n_o = ordinary.norm(dim=dim)
    # Subnormal data (1e-320) holds only a few significant digits; the results keep what is there.
    rel = 1e-3 if magnitude < 1e-307 else 1e-13
    norms = impl.group_norms(x, dim)
    assert (norms > 0).all() and norms.isfinite().all()
    torch.testing.assert_close(norms.cpu(), scaled(n_o, e).cpu(), rtol=rel, atol=0)
    factor = torch.where(n_o <= lam_o, torch.zeros_like(n_o), 1 - lam_o / n_o).unsqueeze(dim)
    expected = scaled(ordinary * factor, e)
    penalty = "l21_rows" if dim == 1 else "l21_cols"
    for S in (impl.group_shrink(x, lam, dim), impl.shrink_residual(x, torch.zeros_like(x), lam, penalty)):
        assert (S == 0).all(dim=dim).tolist() == (n_o <= lam_o).tolist() == [k % 2 == 0 for k in range(groups)]
        torch.testing.assert_close(S.cpu(), expected.cpu(), rtol=0, atol=rel * x.abs().max().item())


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_entry_exactly_lam_becomes_zero_and_one_ulp_above_is_not(impl, device, dtype, gen):
    x = rand((30, 20), dtype, device, gen)
    lam = 0.625  # exact in every dtype
    v = torch.tensor(lam, dtype=dtype, device=device)
    x[0], x[1] = v, -v
    x[2], x[3] = ulp_step(v, 1), -ulp_step(v, 1)
    x[4] = ulp_step(v, -1)
    # sign(x) max(|x| - lam, 0) in float64, where it is exact, rounded once to the dtype: what the
    # dtype's own subtraction gives.
    expected = (x.double().sign() * (x.double().abs() - lam).clamp_min(0)).to(dtype)
    assert (expected[[0, 1, 4]] == 0).all() and (expected[2] > 0).all() and (expected[3] < 0).all()
    for S in (impl.soft_threshold(x, lam), impl.shrink_residual(x, torch.zeros_like(x), lam, "l1")):
        assert torch.equal(S, expected)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_convergence_with_an_infinite_entry(impl, device, dtype, gen):
    X, L, S, P = (rand((20, 30), dtype, device, gen) for _ in range(4))
    X[3, 4] = math.inf
    n = impl.convergence(X, L, S, P, norms=True).cpu()
    assert n[0] == math.inf and n[1] == math.inf
    torch.testing.assert_close(n[2], (P.double() - L.double() - S.double()).norm().cpu(), rtol=1e-12, atol=0)
    assert impl.convergence(X, L, S, P)[0].isnan()  # inf / inf
