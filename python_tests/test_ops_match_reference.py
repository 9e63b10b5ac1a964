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
def test_convergence(device, dtype, shape, layout, gen):
    X, L, S, P = (rand(shape, dtype, device, gen, layout, scale=s) for s in (1.0, 0.9, 0.1, 1.0))
    out = rda_ext.convergence(X, L, S, P)
    assert out.dtype == torch.float64 and out.device == X.device
    # float64 sums in any order agree to ~1e-14; the inputs are exact in float64.
    torch.testing.assert_close(out.cpu(), reference.convergence(X, L, S, P).cpu(), rtol=1e-12, atol=0)
