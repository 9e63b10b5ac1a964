"""Bad arguments give a clear error that names them, and leave out= untouched."""

import pytest
import torch
from conftest import DEVICES, requires_cuda

import rda_ext


@pytest.fixture
def X():
    return torch.randn(6, 5)


@pytest.mark.parametrize("lam", [-1e-9, float("nan"), float("inf"), -float("inf")])
def test_bad_lam(X, lam):
    for call in (
        lambda: rda_ext.soft_threshold(X, lam),
        lambda: rda_ext.group_shrink(X, lam, 1),
        lambda: rda_ext.shrink_residual(X, X, lam, "l21_rows"),
    ):
        with pytest.raises(RuntimeError, match="lam must be a finite number >= 0"):
            call()


def test_messages_carry_the_offending_values():
    # Formatting numbers into a message goes through the C++ standard library the extension was
    # linked with; a mismatched copy drops the numbers (or crashes), so check they arrive.
    with pytest.raises(RuntimeError, match=r"lam must be a finite number >= 0, got -1.5$"):
        rda_ext.soft_threshold(torch.ones(3), -1.5)
    with pytest.raises(RuntimeError, match=r"got 3 dimensions$"):
        rda_ext.group_norms(torch.ones(2, 2, 2), 0)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_wrong_rank(shape):
    x = torch.randn(shape)
    with pytest.raises(RuntimeError, match="x must be a 2-D matrix"):
        rda_ext.group_shrink(x, 0.1, 0)
    with pytest.raises(RuntimeError, match="x must be a 2-D matrix"):
        rda_ext.group_norms(x, 0)
    with pytest.raises(RuntimeError, match="X must be a 2-D matrix"):
        rda_ext.shrink_residual(x, x, 0.1, "l21_cols")


def test_mismatched_operands(X):
    with pytest.raises(RuntimeError, match=r"L must have the shape of X"):
        rda_ext.shrink_residual(X, X[:, :4], 0.1, "l1")
    with pytest.raises(RuntimeError, match=r"L must have the dtype of X"):
        rda_ext.shrink_residual(X, X.double(), 0.1, "l1")
    with pytest.raises(RuntimeError, match=r"LS_prev must have the shape of X"):
        rda_ext.convergence(X, X, X, X.t())
    with pytest.raises(RuntimeError, match=r"S must have the dtype of X"):
        rda_ext.convergence(X, X, X.double(), X)


@requires_cuda
def test_mismatched_devices(X):
    with pytest.raises(RuntimeError, match=r"L must be on the device of X"):
        rda_ext.shrink_residual(X.cuda(), X, 0.1, "l1")
    with pytest.raises(RuntimeError, match=r"device"):
        rda_ext.shrink_residual(X, X.cuda(), 0.1, "l1")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_data_is_refused_not_truncated(dtype):
    x = torch.ones(3, 3, dtype=dtype)
    with pytest.raises(RuntimeError, match="x must be a floating tensor"):
        rda_ext.soft_threshold(x, 0.5)
    with pytest.raises(RuntimeError, match="X must be a floating tensor"):
        rda_ext.shrink_residual(x, x, 0.5, "l1")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu_is_refused(dtype):
    with pytest.raises(RuntimeError, match="float16 and bfloat16 run on CUDA"):
        rda_ext.soft_threshold(torch.ones(3, dtype=dtype), 0.5)


def test_unknown_penalty(X):
    with pytest.raises(RuntimeError, match=r'penalty must be one of "l1", "l21_rows", "l21_cols", got "l2"'):
        rda_ext.shrink_residual(X, X, 0.1, "l2")


@pytest.mark.parametrize("dim", [2, -3])
def test_bad_dim(X, dim):
    with pytest.raises(RuntimeError, match="dim must be 0, 1, -1 or -2"):
        rda_ext.group_shrink(X, 0.1, dim)


@pytest.mark.parametrize("device", DEVICES)
def test_failed_call_leaves_out_untouched(device):
    X = torch.randn(6, 5, device=device)
    out = torch.randn(6, 5, device=device)
    before = out.clone()
    for call in (
        lambda: rda_ext.shrink_residual(X, X, 0.1, "l2", out=out),
        lambda: rda_ext.shrink_residual(X, X, -1.0, "l1", out=out),
        lambda: rda_ext.group_shrink(X, 0.1, 5, out=out),
        lambda: rda_ext.soft_threshold(X.double(), 0.1, out=out),
    ):
        with pytest.raises(RuntimeError):
            call()
        assert torch.equal(out, before)


def test_wrong_out(X):
    with pytest.raises(RuntimeError, match="out must have the shape"):
        rda_ext.soft_threshold(X, 0.1, out=torch.empty(5, 6))
    with pytest.raises(RuntimeError, match="out must have the dtype"):
        rda_ext.group_shrink(X, 0.1, 0, out=torch.empty(6, 5, dtype=torch.float64))
