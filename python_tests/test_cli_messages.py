"""The exact words of the command line's one-line errors, where they are computed (allocation
failures, layer sizes, the summary of a signal)."""

import argparse

import pytest
import torch

from rda_ext import cli

ADVICE = ": use smaller --hidden layer sizes or a smaller --batch-size"


@pytest.mark.parametrize("error, message", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"),
     "the network or the data does not fit in GPU memory (an allocation of 2.00 GiB failed)"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789012 bytes. Error code 12"),
     "the network or the data does not fit in CPU memory (an allocation of 115 GiB failed)"),
    (RuntimeError("CUDA error: out of memory; tried to allocate 512 MiB"),
     "the network or the data does not fit in GPU memory (an allocation of 512 MiB failed)"),
    (RuntimeError("Trying to create tensor with negative dimension: storage size calculation overflowed"),
     "the network or the data does not fit in CPU memory"),
    (RuntimeError("out of memory: you tried to allocate 3.5 bytes"),
     "the network or the data does not fit in CPU memory (an allocation of 3.5 bytes failed)"),
])
def test_allocation_failures_are_told_with_their_size_and_device(error, message):
    assert cli._allocation_failure(error)
    assert cli._out_of_memory(error) == message + ADVICE


@pytest.mark.parametrize("text", ["a bug", "index out of range", "Expected all tensors to be on the same device"])
def test_other_runtime_errors_are_not_allocation_failures(text):
    assert not cli._allocation_failure(RuntimeError(text))


@pytest.mark.parametrize("text, sizes", [("400,200", (400, 200)), ("1", (1,)), (" 3, 2", (3, 2))])
def test_layer_sizes(text, sizes):
    assert cli._sizes(text) == sizes


@pytest.mark.parametrize("text, message", [
    ("400;200", "expected \"auto\" or comma-separated layer sizes like 400,200, got '400;200'"),
    ("", "expected \"auto\" or comma-separated layer sizes like 400,200, got ''"),
    ("4,0", "layer sizes must be positive, got '4,0'"),
    ("-3", "layer sizes must be positive, got '-3'"),
    (str(2**63), f"layer sizes must be below 2**63, got '{2**63}'"),
])
def test_bad_layer_sizes(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        cli._sizes(text)
    assert str(e.value) == message


def test_fail_prints_one_line_with_the_programs_name(capsys):
    assert cli._fail("error: two\n  lines", 7) == 7
    assert capsys.readouterr().err == "rda-ext: error: two lines\n"


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("0", 0), ("12", 12)])
def test_inner_epochs_take_auto_or_a_number(text, value):
    assert cli._inner_epochs(text) == value


@pytest.mark.parametrize("text", ["Auto", "1.5", ""])
def test_bad_inner_epochs(text):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        cli._inner_epochs(text)
    assert str(e.value) == f'expected "auto" or a number of epochs, got {text!r}'
