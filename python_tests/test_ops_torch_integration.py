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
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in samples(device):
        # The gradient tests do not apply: the proximal steps are not differentiated through.
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
