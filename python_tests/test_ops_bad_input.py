"""Bad arguments give a clear error that names them, and leave out= untouched."""

import numpy as np
import pytest
import torch
from conftest import DEVICES, requires_cuda

import rda_ext
from rda_ext import reference


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


# ---- group_norms(minus=), shrink_residual(norms=), convergence_step ----------------------------


def test_bad_minus(X):
    with pytest.raises(RuntimeError, match=r"minus must have the shape of x \[6, 5\], got \[6, 4\]"):
        rda_ext.group_norms(X, 1, minus=X[:, :4])
    with pytest.raises(RuntimeError, match=r"minus must have the shape of x \[6, 5\], got \[5\]"):
        rda_ext.group_norms(X, 0, minus=X[0])
    with pytest.raises(RuntimeError, match=r"minus must have the dtype of x \(Float\), got Double"):
        rda_ext.group_norms(X, 1, minus=X.double())
    with pytest.raises(RuntimeError, match=r"minus must have the dtype of x \(Float\), got Long"):
        rda_ext.group_norms(X, 0, minus=X.long())
    # x is checked before minus, and dim as without minus.
    with pytest.raises(RuntimeError, match="x must be a 2-D matrix"):
        rda_ext.group_norms(X[0], 0, minus=X[0])
    with pytest.raises(RuntimeError, match="dim must be 0, 1, -1 or -2"):
        rda_ext.group_norms(X, 2, minus=X)


def good_norms(X, penalty):
    return torch.ones(X.shape[1 - rda_ext.ops.GROUP_DIM[penalty]], dtype=X.dtype, device=X.device)


@pytest.mark.parametrize("device", DEVICES)
def test_norms_for_l1_are_refused(device):
    X = torch.randn(6, 5, device=device)
    with pytest.raises(RuntimeError, match=r'norms are the group norms of an l2,1 penalty; penalty "l1"'):
        rda_ext.ops.shrink_residual(X, X, 0.1, "l1", norms=torch.ones(6, device=device))
    with pytest.raises(RuntimeError, match=r'norms are the group norms of an l2,1 penalty; penalty "l1"'):
        rda_ext.ops.shrink_residual(X, X, 0.1, "l1", norms=torch.ones(6, device=device), out=torch.empty_like(X))


@pytest.mark.parametrize("use_out", [False, True])
def test_bad_norms(X, use_out):
    out = torch.empty_like(X) if use_out else None
    L = torch.randn_like(X)

    def call(penalty, norms):
        return rda_ext.ops.shrink_residual(X, L, 0.1, penalty, norms=norms, out=out)

    # The rows' norms given for the columns and the other way round: 6 rows, 5 columns.
    with pytest.raises(RuntimeError, match=r"norms must be a vector of the 5 group norms of X - L \(one per column\), "
                                           r"got shape \[6\]"):
        call("l21_cols", good_norms(X, "l21_rows"))
    with pytest.raises(RuntimeError, match=r"norms must be a vector of the 6 group norms of X - L \(one per row\), "
                                           r"got shape \[5\]"):
        call("l21_rows", good_norms(X, "l21_cols"))
    with pytest.raises(RuntimeError, match=r"norms must be a vector of the 6 group norms .* got shape \[6, 1\]"):
        call("l21_rows", good_norms(X, "l21_rows")[:, None])
    with pytest.raises(RuntimeError, match=r"norms must be a vector of the 6 group norms .* got shape \[\]"):
        call("l21_rows", torch.tensor(1.0))
    with pytest.raises(RuntimeError, match=r"norms must have the dtype of X \(Float\), got Double"):
        call("l21_rows", good_norms(X, "l21_rows").double())
    with pytest.raises(RuntimeError, match=r"norms must have the dtype of X \(Float\), got Long"):
        call("l21_cols", good_norms(X, "l21_cols").long())
    # The penalty is checked before the norms.
    with pytest.raises(RuntimeError, match='penalty must be one of "l1", "l21_rows", "l21_cols", got "l2"'):
        call("l2", good_norms(X, "l21_rows"))


@requires_cuda
def test_norms_minus_and_LS_prev_on_another_device(X):
    Xc = X.cuda()
    with pytest.raises(RuntimeError, match=r"norms must be on the device of X \(cuda:0\), got cpu"):
        rda_ext.ops.shrink_residual(Xc, Xc, 0.1, "l21_rows", norms=torch.ones(6))
    with pytest.raises(RuntimeError, match=r"norms must be on the device of X \(cpu\), got cuda:0"):
        rda_ext.ops.shrink_residual(X, X, 0.1, "l21_cols", norms=torch.ones(5, device="cuda"))
    with pytest.raises(RuntimeError, match=r"minus must be on the device of x \(cuda:0\), got cpu"):
        rda_ext.group_norms(Xc, 1, minus=X)
    with pytest.raises(RuntimeError, match=r"LS_prev must be on the device of X \(cuda:0\), got cpu"):
        rda_ext.ops.convergence_step(Xc, Xc, Xc, X.clone())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
def test_out_overlapping_norms_is_refused_and_left_untouched(device, penalty):
    X, L = (torch.randn(6, 6, device=device) for _ in range(2))
    # norms the first row of out: a 6-vector in out's memory.
    out = torch.randn(6, 6, device=device)
    before = out.clone()
    with pytest.raises(RuntimeError, match="single memory location"):
        rda_ext.ops.shrink_residual(X, L, 0.1, penalty, norms=out[0], out=out)
    assert torch.equal(out, before)
    # norms read from X while S is written over X.
    X_before = X.clone()
    with pytest.raises(RuntimeError, match="single memory location"):
        rda_ext.ops.shrink_residual(X, L, 0.1, penalty, norms=X[2], out=X)
    assert torch.equal(X, X_before)
    # A strided norms (a column of out) is made contiguous, a copy, before out is written: accepted.
    out[:, 2] = reference.group_norms(X, rda_ext.ops.GROUP_DIM[penalty], L)
    expected = reference.shrink_residual(X, L, 0.1, penalty, out[:, 2].clone())
    rda_ext.ops.shrink_residual(X, L, 0.1, penalty, norms=out[:, 2], out=out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_failed_call_with_norms_leaves_out_untouched(device):
    X = torch.randn(6, 5, device=device)
    out = torch.randn(6, 5, device=device)
    before = out.clone()
    for call in (
        lambda: rda_ext.ops.shrink_residual(X, X, 0.1, "l1", norms=torch.ones(6, device=device), out=out),
        lambda: rda_ext.ops.shrink_residual(X, X, 0.1, "l21_rows", norms=torch.ones(5, device=device), out=out),
        lambda: rda_ext.ops.shrink_residual(X, X, 0.1, "l21_cols", norms=torch.ones(5, 1, device=device), out=out),
        lambda: rda_ext.ops.shrink_residual(X, X, -0.1, "l21_cols", norms=torch.ones(5, device=device), out=out),
    ):
        with pytest.raises(RuntimeError, match="norms|lam"):
            call()
        assert torch.equal(out, before)


def test_bad_LS_prev_operands(X):
    P = torch.randn(6, 5)
    before = P.clone()
    with pytest.raises(RuntimeError, match=r"LS_prev must have the shape of X \[6, 5\], got \[5, 6\]"):
        rda_ext.ops.convergence_step(X, X, X, torch.randn(5, 6))
    with pytest.raises(RuntimeError, match=r"LS_prev must have the dtype of X \(Float\), got Double"):
        rda_ext.ops.convergence_step(X, X, X, P.double())
    with pytest.raises(RuntimeError, match=r"L must have the shape of X"):
        rda_ext.ops.convergence_step(X, X[:, :4], X, P)
    with pytest.raises(RuntimeError, match=r"S must have the dtype of X"):
        rda_ext.ops.convergence_step(X, X, X.double(), P)
    with pytest.raises(RuntimeError, match="X must be a floating tensor"):
        rda_ext.ops.convergence_step(*(t.long() for t in (X, X, X, P)))
    with pytest.raises(RuntimeError, match="float16 and bfloat16 run on CUDA"):
        rda_ext.ops.convergence_step(*(t.half() for t in (X, X, X, P)))
    assert torch.equal(P, before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alias", ["X", "L", "S", "X.t() of a square X", "X shifted one row", "L sliced",
                                   "S in a larger buffer"])
def test_LS_prev_sharing_memory_with_an_input_is_refused(device, alias):
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(7, 6, generator=g).to(device)
    X, L, S = (torch.randn(6, 6, generator=g).to(device) for _ in range(3))
    if alias == "X":
        P = X
    elif alias == "L":
        P = L
    elif alias == "S":
        P = S
    elif alias == "X.t() of a square X":
        P = X.t()
    elif alias == "X shifted one row":
        X, P = buf[:6], buf[1:]
    elif alias == "L sliced":  # the same tensor, not dense
        L = torch.randn(12, 12, generator=g).to(device)[::2, ::2]
        P = L
    else:  # S the first rows of a buffer, LS_prev rows of it that include some of S's
        big = torch.randn(10, 6, generator=g).to(device)
        S, P = big[:6], big[4:]
    before = [t.clone() for t in (X, L, S, P)]
    with pytest.raises(RuntimeError, match="LS_prev must share no memory with [XLS]"):
        rda_ext.ops.convergence_step(X, L, S, P)
    assert all(torch.equal(a, b) for a, b in zip((X, L, S, P), before))


@pytest.mark.parametrize("device", DEVICES)
def test_expanded_LS_prev_is_refused(device):
    X = torch.randn(6, 5, device=device)
    P = torch.randn(1, 5, device=device).expand(6, 5)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        rda_ext.ops.convergence_step(X, X, X, P)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overlap", ["same elements", "partly"])
def test_LS_prev_as_another_strided_view_of_an_input_is_refused(device, overlap):
    """Two non-dense views of one buffer: torch cannot tell whether they overlap, so it is refused
    (computing through a copy and copying back would overwrite L)."""
    buf = torch.randn(13, 13, device=device)
    L = buf[:12:2, :12:2]
    P = buf[:12:2, :12:2] if overlap == "same elements" else buf[1:13:2, :12:2]
    X, S = torch.randn(6, 6, device=device), torch.randn(6, 6, device=device)
    before = buf.clone()
    with pytest.raises(RuntimeError, match="LS_prev must share no memory with L"):
        rda_ext.ops.convergence_step(X, L, S, P)
    assert torch.equal(buf, before)


@pytest.mark.parametrize("dim", [1.7, 1.0, True, "1", None])
def test_dim_that_int_would_truncate_is_refused(dim):
    x = torch.randn(4, 5)
    for call in (lambda: rda_ext.group_shrink(x, 0.3, dim), lambda: rda_ext.group_shrink(x, 0.3, dim, out=x.clone()),
                 lambda: rda_ext.group_norms(x, dim)):
        with pytest.raises(TypeError, match="dim must be an integer"):
            call()


@pytest.mark.parametrize("dim", [np.int64(1), np.int32(0), torch.tensor(1)])
def test_integer_dims_of_other_types_are_accepted(dim):
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(rda_ext.group_norms(x, dim), reference.group_norms(x, int(dim)))
