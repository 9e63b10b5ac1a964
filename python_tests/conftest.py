"""Devices, dtypes, tolerances and random inputs shared by the tests.

Inputs are fresh random draws for every test (a new seed each run, printed on failure through the
test id of the generator fixture), never zeros, in several memory layouts."""

from __future__ import annotations

import os
import random

import pytest
import torch

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device visible")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]

# (device, dtype) pairs the kernels implement: float16/bfloat16 only on CUDA.
DEVICE_DTYPES = [
    ("cpu", torch.float32),
    ("cpu", torch.float64),
    *[
        pytest.param("cuda", dt, marks=requires_cuda)
        for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    ],
]

# Relative to the largest magnitude involved: the kernels sum in a different order (and in
# float64 where the reference may not), so results agree to rounding, not bit for bit.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

LAYOUTS = ["contiguous", "transposed", "sliced", "padded"]


@pytest.fixture
def gen(request) -> torch.Generator:
    seed = int(os.environ.get("RDA_EXT_TEST_SEED", random.SystemRandom().randrange(2**31)))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def seed(gen) -> int:
    """The generator fixture's seed as an int, for numpy, random_state and planted."""
    return int(gen.initial_seed())


def rand(shape, dtype, device, gen, layout="contiguous", scale=1.0) -> torch.Tensor:
    """Random normal values (never all zero) of the given shape, stored in the given layout:
    transposed = column-major, sliced = every other row and column of a larger tensor, padded =
    the leading columns of a wider tensor (rows not adjacent in memory)."""
    shape = tuple(shape)
    if layout == "contiguous" or len(shape) != 2:
        base = torch.randn(shape, generator=gen, dtype=torch.float64)
        view = base
    elif layout == "transposed":
        base = torch.randn(shape[::-1], generator=gen, dtype=torch.float64)
        view = None
    elif layout == "sliced":
        base = torch.randn((2 * shape[0], 2 * shape[1] + 1), generator=gen, dtype=torch.float64)
        view = None
    elif layout == "padded":
        base = torch.randn((shape[0], shape[1] + 3), generator=gen, dtype=torch.float64)
        view = None
    else:
        raise ValueError(layout)
    base = (base * scale).to(device=device, dtype=dtype)
    if view is not None:
        return base
    if layout == "transposed":
        return base.t()
    if layout == "sliced":
        return base[::2, 1::2]
    return base[:, : shape[1]]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale=None) -> None:
    """Equal up to the dtype's rounding, measured against the largest magnitude (scale)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a, e = actual.double().cpu(), expected.double().cpu()
    if scale is None:
        scale = e.abs().max().item() if e.numel() else 1.0
    tol = TOL[dtype] * max(scale, 1e-300)
    torch.testing.assert_close(a, e, rtol=0, atol=tol, equal_nan=True)
