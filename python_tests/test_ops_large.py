"""Tensors of more than 2^31 elements: offsets past int32 must not overflow. Each test holds an
8.6 GB float32 tensor, so it runs where the memory is there (this project's 24 GB machines, CI
included) and is skipped elsewhere."""

import os

import pytest
import torch
from conftest import DEVICES, assert_close

import rda_ext
from rda_ext import reference

ROWS, COLS = (1 << 21) + 3, 1 << 10  # 2^31 + 3072 elements
NEED = ROWS * COLS * 4


def available_bytes(device) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def big(device, gen):
    if available_bytes(device) < NEED * 1.5:
        pytest.skip(f"needs {NEED * 1.5 / 2**30:.0f} GiB free on {device}")
    # One random row repeated, with fresh random rows at the end (past element 2^31).
    x = torch.empty(ROWS, COLS, device=device)
    x.copy_(torch.randn(1, COLS, generator=gen).to(device).expand(ROWS, COLS))
    x[-5:] = torch.randn(5, COLS, generator=gen).to(device)
    yield x
    del x


@pytest.mark.parametrize("device", DEVICES)
def test_soft_threshold_past_2_31_elements(big):
    tail = big[-5:].clone()
    rda_ext.soft_threshold(big, 0.5, out=big)
    assert_close(big[-5:], reference.soft_threshold(tail, 0.5), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_row_groups_past_2_31_elements(big):
    tail = big[-5:].clone()
    assert_close(rda_ext.group_norms(big, 1)[-5:], reference.group_norms(tail, 1), torch.float32)
    rda_ext.group_shrink(big, 30.0, 1, out=big)
    assert_close(big[-5:], reference.group_shrink(tail, 30.0, 1), torch.float32, scale=4.0)


@pytest.mark.parametrize("device", DEVICES)
def test_column_groups_past_2_31_elements(big):
    head, tail = big[0].double(), big[-5:].double()
    expected = ((ROWS - 5) * head**2 + (tail**2).sum(0)).sqrt()
    torch.testing.assert_close(rda_ext.group_norms(big, 0).double(), expected, rtol=1e-5, atol=0)
