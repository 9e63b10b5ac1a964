"""out= on any view of any buffer, hypothesis-generated: every operator either refuses the call
(and leaves the buffer as it was) or writes exactly the reference's result computed from copies of
its inputs. Never a silent wrong result, whatever the views share."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rda_ext
from rda_ext import ops, reference

BASE = (9, 14)


@st.composite
def views(draw, base):
    """A 2-D strided view of base, possibly transposed: slices with random start and step."""
    t = base.t() if draw(st.booleans()) else base
    idx = []
    for size in t.shape:
        step = draw(st.integers(1, 2))
        start = draw(st.integers(0, 2))
        stop = draw(st.integers(start + 1, size))
        idx.append(slice(start, stop, step))
    return t[tuple(idx)]


def crop(*views):
    """The views cut to their common shape (views of one buffer rarely agree)."""
    rows, cols = min(v.shape[0] for v in views), min(v.shape[1] for v in views)
    return [v[:rows, :cols] for v in views]


CALLS = {
    "soft_threshold": (lambda x, y, o: ops.soft_threshold(x, 0.3, out=o), lambda x, y: reference.soft_threshold(x, 0.3)),
    "group_shrink rows": (lambda x, y, o: ops.group_shrink(x, 0.8, 1, out=o), lambda x, y: reference.group_shrink(x, 0.8, 1)),
    "group_shrink cols": (lambda x, y, o: ops.group_shrink(x, 0.8, 0, out=o), lambda x, y: reference.group_shrink(x, 0.8, 0)),
    **{f"shrink_residual {p}": (lambda x, y, o, p=p: ops.shrink_residual(x, y, 0.8, p, out=o),
                                lambda x, y, p=p: reference.shrink_residual(x, y, 0.8, p)) for p in ops.PENALTIES},
}


@settings(max_examples=300, deadline=None)
@given(data=st.data(), op=st.sampled_from(sorted(CALLS)), second_buffer=st.booleans())
def test_out_on_any_view_is_refused_or_exact(data, op, second_buffer):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    buf = torch.randn(BASE, generator=g, dtype=torch.float64)
    other = torch.randn(BASE, generator=g, dtype=torch.float64) if second_buffer else buf
    x, y, out = crop(data.draw(views(buf)), data.draw(views(buf)), data.draw(views(other)))
    call, ref = CALLS[op]
    expected = ref(x.clone(), y.clone())
    before = (buf.clone(), other.clone())
    try:
        call(x, y, out)
    except RuntimeError as e:
        assert "same memory" in str(e) or "memory location" in str(e), e
        assert torch.equal(buf, before[0]) and torch.equal(other, before[1])
        return
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_convergence_step_on_any_view_is_refused_or_exact(data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    buf = torch.randn(BASE, generator=g, dtype=torch.float64)
    X, P = crop(data.draw(views(buf)), data.draw(views(buf)))
    L, S = (torch.randn(X.shape, generator=g, dtype=torch.float64) for _ in range(2))
    expected_c, expected_P = reference.convergence_step(X.clone(), L, S, P.clone())
    before = buf.clone()
    try:
        c = ops.convergence_step(X, L, S, P)
    except RuntimeError as e:
        assert "share no memory" in str(e) or "memory location" in str(e), e
        assert torch.equal(buf, before)
        return
    torch.testing.assert_close(c, expected_c, rtol=1e-12, atol=0)
    torch.testing.assert_close(P, expected_P, rtol=0, atol=0)


@pytest.mark.parametrize("call", [
    lambda x, o: rda_ext.group_shrink(x, 0.3, 1, out=o),
    lambda x, o: rda_ext.group_shrink(x, 0.3, 0, out=o),
    lambda x, o: rda_ext.shrink_residual(x, x.clone(), 0.3, "l21_rows", out=o),
    lambda x, o: rda_ext.shrink_residual(x, x.clone(), 0.3, "l21_cols", out=o),
], ids=["group_shrink rows", "group_shrink cols", "l21_rows", "l21_cols"])
def test_the_reported_partial_overlap_is_refused(call):
    b = torch.randn(6, 12)
    x, o = b[:, :10], b[:, 1:11]
    before = b.clone()
    with pytest.raises(RuntimeError, match="same memory"):
        call(x, o)
    assert torch.equal(b, before)
