"""Every operator against rda_ext.reference, over devices x dtypes x shapes x memory layouts."""

import pytest
import torch
from conftest import DEVICE_DTYPES, LAYOUTS, assert_close, rand

import rda_ext
from rda_ext import reference

SHAPES = [(1, 1), (7, 13), (65, 784), (1000, 3), (3, 5000), (2049, 17), (3000, 1000)]
PENALTIES = ["l1", "l21_rows", "l21_cols"]


def lam_between_norms(r: torch.Tensor, gen: torch.Generator, dim: int) -> float:
    """A threshold that zeroes some groups and keeps others."""
    norms = r.double().norm(dim=dim).cpu()
    q = torch.rand((), generator=gen).item() * 0.8 + 0.1
    return torch.quantile(norms, q).item()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (5, 0), (1001,), (37, 11), (2, 3, 129), (4097, 33)])
def test_soft_threshold(device, dtype, shape, gen):
    x = rand(shape, dtype, device, gen)
    lam = torch.rand((), generator=gen).item()
    assert_close(rda_ext.soft_threshold(x, lam), reference.soft_threshold(x, lam), dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS + ["permuted_3d"])
def test_soft_threshold_strided(device, dtype, layout, gen):
    if layout == "permuted_3d":
        x = rand((3, 50, 7), dtype, device, gen).permute(2, 0, 1)
    else:
        x = rand((301, 45), dtype, device, gen, layout)
    out = rda_ext.soft_threshold(x, 0.5)
    assert_close(out, reference.soft_threshold(x, 0.5), dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_group_shrink_and_norms(device, dtype, shape, dim, layout, gen):
    x = rand(shape, dtype, device, gen, layout)
    lam = lam_between_norms(x, gen, dim)
    # A factor 1 - lam/norm carries the rounding of the norm: measure against the input's scale.
    scale = x.abs().max().item()
    assert_close(rda_ext.group_shrink(x, lam, dim), reference.group_shrink(x, lam, dim), dtype, scale)
    assert_close(rda_ext.group_norms(x, dim), reference.group_norms(x, dim), dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("transposed", "transposed"),
                                     ("contiguous", "transposed"), ("sliced", "padded")])
def test_shrink_residual(device, dtype, shape, penalty, layouts, gen):
    X = rand(shape, dtype, device, gen, layouts[0])
    L = rand(shape, dtype, device, gen, layouts[1], scale=0.5)
    R = reference.shrink_residual(X, L, 0.0, "l1")  # X - L, rounded as the kernels round it
    lam = lam_between_norms(R, gen, 1 if penalty == "l21_rows" else 0) if penalty != "l1" else 0.7
    assert_close(rda_ext.shrink_residual(X, L, lam, penalty), reference.shrink_residual(X, L, lam, penalty),
                 dtype, scale=R.abs().max().item())


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (33, 7), (2, 3, 5), (3000, 1000)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("norms", [False, True])
def test_convergence(device, dtype, shape, layout, norms, gen):
    X, L, S, P = (rand(shape, dtype, device, gen, layout, scale=s) for s in (1.0, 0.9, 0.1, 1.0))
    out = rda_ext.convergence(X, L, S, P, norms=norms)
    assert out.dtype == torch.float64 and out.device == X.device and out.shape == (3 if norms else 2,)
    # float64 sums in any order agree to ~1e-14; the inputs are exact in float64.
    torch.testing.assert_close(out.cpu(), reference.convergence(X, L, S, P, norms).cpu(), rtol=1e-12, atol=0)


# ---- group_norms(minus=), shrink_residual(norms=), convergence_step, the penalty table -------------

# Row groups longer than a CUDA warp's limit (3, 5000), column groups over several CUDA row chunks
# (2049, 17), (3000, 1000), and the degenerate (1, 1).
RESIDUAL_SHAPES = [(1, 1), (7, 13), (1000, 3), (3, 5000), (2049, 17), (3000, 1000)]
# (X layout, L / minus layout): the second operand in X's layout and in another.
PAIR_LAYOUTS = [("contiguous", "contiguous"), ("transposed", "transposed"), ("contiguous", "transposed"),
                ("transposed", "sliced"), ("sliced", "padded")]


def vector(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A 1-D tensor equal to values, stored contiguously, every other element of a longer vector
    (strided), or as a column of a row-major matrix (column)."""
    if layout == "contiguous":
        return values.clone()
    if layout == "strided":
        base = torch.full((2 * values.numel() + 1,), float("nan"), dtype=values.dtype, device=values.device)
        base[1::2] = values
        return base[1::2]
    if layout == "column":
        base = torch.full((values.numel(), 3), float("nan"), dtype=values.dtype, device=values.device)
        base[:, 1] = values
        return base[:, 1]
    raise ValueError(layout)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", RESIDUAL_SHAPES)
@pytest.mark.parametrize("dim,layouts", [(d, ls) for d in (0, 1) for ls in PAIR_LAYOUTS]
                         + [(-1, ("contiguous", "transposed"))])
def test_group_norms_of_a_difference(device, dtype, shape, dim, layouts, gen):
    x = rand(shape, dtype, device, gen, layouts[0])
    minus = rand(shape, dtype, device, gen, layouts[1], scale=0.5)
    x_before, minus_before = x.clone(), minus.clone()
    norms = rda_ext.group_norms(x, dim, minus=minus)
    assert norms.shape == (shape[1 - dim % 2],) and norms.device == x.device and norms.is_contiguous()
    assert_close(norms, reference.group_norms(x, dim, minus), dtype)
    assert torch.equal(x, x_before) and torch.equal(minus, minus_before)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", RESIDUAL_SHAPES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous", "contiguous"),
                                     ("transposed", "transposed", "strided"),
                                     ("contiguous", "transposed", "column"),
                                     ("sliced", "padded", "strided")])
def test_shrink_residual_with_given_norms(device, dtype, shape, penalty, layouts, gen):
    X = rand(shape, dtype, device, gen, layouts[0])
    L = rand(shape, dtype, device, gen, layouts[1], scale=0.5)
    dim = rda_ext.ops.GROUP_DIM[penalty]
    # Norms that are not the residual's (each off by a random factor in [0.5, 2)): the kernel must
    # scale by the norms it is given, not by norms of its own.
    true = reference.group_norms(X, dim, L).double().cpu()
    off = 0.5 + 1.5 * torch.rand(true.shape, generator=gen, dtype=torch.float64)
    given = (true * off).to(device=device, dtype=dtype)
    norms = vector(given, layouts[2])
    lam = lam_between_norms(given.unsqueeze(dim), gen, dim)
    R = reference.shrink_residual(X, L, 0.0, "l1")
    S = rda_ext.ops.shrink_residual(X, L, lam, penalty, norms=norms)
    assert_close(S, reference.shrink_residual(X, L, lam, penalty, given), dtype, scale=R.abs().max().item())
    assert torch.equal(norms, given)  # read, not written
    # Exactly the groups of given norm <= lam are zero (away from lam, where a narrow dtype may
    # round a tiny factor times the residual to 0).
    zero = (S == 0).all(dim=dim).cpu()
    g = given.double().cpu()
    far = ((g - lam).abs() > 1e-3 * lam) & (R != 0).any(dim=dim).cpu()
    assert torch.equal(zero[far], (g <= lam)[far])


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (33, 7), (2, 3, 5), (1500, 1000)])
@pytest.mark.parametrize("layouts", [("contiguous",) * 4, ("transposed",) * 4, ("sliced",) * 4,
                                     ("contiguous", "contiguous", "contiguous", "transposed"),
                                     ("transposed", "contiguous", "sliced", "padded")])
@pytest.mark.parametrize("norms", [False, True])
def test_convergence_step(device, dtype, shape, layouts, norms, gen):
    X, L, S, P = (rand(shape, dtype, device, gen, layout, scale=s)
                  for layout, s in zip(layouts, (1.0, 0.9, 0.1, 1.0)))
    X_before, L_before, S_before, P_before = (t.clone() for t in (X, L, S, P))
    expected_c, expected_next = reference.convergence_step(X, L, S, P, norms)
    c = rda_ext.ops.convergence_step(X, L, S, P, norms=norms)
    assert c.dtype == torch.float64 and c.shape == (3 if norms else 2,) and c.device == X.device
    torch.testing.assert_close(c.cpu(), expected_c.cpu(), rtol=1e-12, atol=0)
    # c2 was measured against the old LS_prev, which now holds L + S (added as the reference adds).
    assert not torch.equal(P, P_before)
    assert torch.equal(P, expected_next)
    assert all(torch.equal(a, b) for a, b in ((X, X_before), (L, L_before), (S, S_before)))


def test_penalty_table():
    assert rda_ext.ops.GROUP_DIM == {"l1": None, "l21_rows": 1, "l21_cols": 0}
    assert list(rda_ext.ops.GROUP_DIM) == ["l1", "l21_rows", "l21_cols"]
    assert rda_ext.ops.PENALTIES == ("l1", "l21_rows", "l21_cols")
    assert rda_ext.ops.PENALTIES == tuple(rda_ext._C.penalties())
    assert reference.GROUP_DIM is rda_ext.ops.GROUP_DIM
    assert PENALTIES == list(rda_ext.ops.PENALTIES)  # this file's own list


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("penalty", rda_ext.ops.PENALTIES)
def test_every_penalty_of_the_table_matches_the_reference(device, dtype, penalty, gen):
    X = rand((61, 45), dtype, device, gen)
    L = rand((61, 45), dtype, device, gen, "transposed", scale=0.5)
    R = reference.shrink_residual(X, L, 0.0, "l1")
    dim = rda_ext.ops.GROUP_DIM[penalty]
    scale = R.abs().max().item()
    if dim is None:
        lam = 0.7
        S = rda_ext.shrink_residual(X, L, lam, penalty)
        assert_close(S, reference.shrink_residual(X, L, lam, penalty), dtype, scale)
        far = ((R.double().abs() - lam).abs() > 1e-2 * lam).cpu()  # rounding R may cross lam
        assert torch.equal((S == 0).cpu()[far], (R.double().abs() <= lam).cpu()[far])
        return
    lam = lam_between_norms(R, gen, dim)
    expected = reference.shrink_residual(X, L, lam, penalty)
    S = rda_ext.shrink_residual(X, L, lam, penalty)
    assert_close(S, expected, dtype, scale)
    # The table's dim is the dim the groups reduce over: exactly those of norm <= lam are zero.
    norms = rda_ext.group_norms(X, dim, minus=L)
    zero = (S == 0).all(dim=dim)
    far = ((norms.double() - lam).abs() > 1e-2 * lam).cpu()
    assert torch.equal(zero.cpu()[far], (norms.double() <= lam).cpu()[far]) and far.sum() > 30
    assert_close(rda_ext.ops.shrink_residual(X, L, lam, penalty, norms=norms),
                 reference.shrink_residual(X, L, lam, penalty, norms), dtype, scale)
