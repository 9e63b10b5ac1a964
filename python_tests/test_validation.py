"""The checks of the estimator's parameters and of user data (rda_ext.validation): each bound on
both sides, and the exact message naming the argument."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rda_ext import RobustAutoencoder
from rda_ext.validation import (
    as_matrix,
    check_params,
    fast_bfloat16,
    like_input,
    output_dtype,
    resolve_device,
    resolve_dtype,
    to_cpu,
    vector_like_input,
    warn_if_outside_output_range,
)

CPU = torch.device("cpu")


def params(**changes) -> dict:
    return {**RobustAutoencoder().get_params(), **changes}


GOOD = [
    dict(hidden=[3]), dict(hidden=(1, np.int64(2))), dict(lam=0), dict(lam=0.0), dict(lam=np.float32(2.5)),
    dict(contamination=1e-9), dict(contamination=0.4999), dict(outer_iter=1), dict(batch_size=1),
    dict(inner_epochs=0), dict(lr=1e-12), dict(tol=0), dict(tol=float("inf")), dict(random_state=0),
    dict(random_state=2**64 - 1), dict(random_state=np.uint64(7)), dict(random_state=np.random.RandomState(0)),
    dict(random_state=np.random.default_rng(0)), dict(device="cpu"), dict(device="auto"), dict(dtype="float64"),
    dict(dtype=torch.float64), dict(dtype="float32"), dict(penalty="l1"), dict(penalty="l21_cols"),
    dict(optimizer="sgd"), dict(activation="relu"), dict(output_activation="linear"),
    dict(distributed=True), dict(distributed=False), dict(checkpoint="ck"), dict(checkpoint=Path("ck")),
]


def _id(change: dict) -> str:
    """A test id without memory addresses (a RandomState's repr has one), stable from run to run."""
    ((name, value),) = change.items()
    shown = type(value).__name__ if isinstance(value, (np.random.RandomState, np.random.Generator)) else repr(value)
    return f"{name}={shown}"


@pytest.mark.parametrize("change", GOOD, ids=_id)
def test_good_parameters_pass(change):
    check_params(params(**change))


SIZES = '"auto" or a non-empty sequence of positive layer sizes, e.g. (400, 200)'
BAD = [
    ("hidden", (), SIZES), ("hidden", (0,), SIZES), ("hidden", (3, -1), SIZES), ("hidden", (3.0,), SIZES),
    ("hidden", (True,), SIZES), ("hidden", "12", SIZES), ("hidden", 12, SIZES),
    ("penalty", "l2", "one of ('l1', 'l21_rows', 'l21_cols')"),
    ("optimizer", "rmsprop", "one of ('adam', 'sgd')"),
    ("lam", -1e-12, "None or a finite number >= 0"), ("lam", float("inf"), "None or a finite number >= 0"),
    ("lam", float("nan"), "None or a finite number >= 0"), ("lam", True, "None or a finite number >= 0"),
    ("lam", "1", "None or a finite number >= 0"),
    ("contamination", 0, "a number in (0, 0.5)"), ("contamination", 0.5, "a number in (0, 0.5)"),
    ("contamination", None, "a number in (0, 0.5)"),
    ("outer_iter", 0, "a positive integer"), ("outer_iter", 2.0, "a positive integer"),
    ("batch_size", 0, "a positive integer"), ("batch_size", True, "a positive integer"),
    ("inner_epochs", -1, '"auto" or an integer >= 0'), ("inner_epochs", 1.5, '"auto" or an integer >= 0'),
    ("inner_epochs", "Auto", '"auto" or an integer >= 0'),
    ("lr", 0, "a finite number > 0"), ("lr", float("inf"), "a finite number > 0"), ("lr", -1, "a finite number > 0"),
    ("tol", -1e-12, "a number >= 0"), ("tol", float("nan"), "a number >= 0"),
    ("random_state", -1, "None, an integer seed in [0, 2**64) or a numpy RandomState/Generator"),
    ("random_state", 2**64, "None, an integer seed in [0, 2**64) or a numpy RandomState/Generator"),
    ("random_state", 1.0, "None, an integer seed in [0, 2**64) or a numpy RandomState/Generator"),
    ("random_state", True, "None, an integer seed in [0, 2**64) or a numpy RandomState/Generator"),
    ("distributed", 1, '"auto", True or False'), ("distributed", "yes", '"auto", True or False'),
    ("checkpoint", 3, "None or a directory path"), ("checkpoint", True, "None or a directory path"),
]


@pytest.mark.parametrize("name, value, expected", BAD, ids=lambda v: repr(v))
def test_bad_parameters_name_themselves(name, value, expected):
    with pytest.raises(ValueError) as e:
        check_params(params(**{name: value}))
    assert str(e.value) == f"{name} must be {expected}, got {value!r}"


def test_the_activations_are_checked_as_choices():
    for name in ("activation", "output_activation"):
        with pytest.raises(ValueError) as e:
            check_params(params(**{name: "swish"}))
        assert str(e.value).startswith(f"{name} must be one of (") and "'sigmoid'" in str(e.value)


def test_devices():
    assert resolve_device("cpu") == CPU and resolve_device(torch.device("cpu")) == CPU
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("tpu", "meta", 3.5, "cuda:x"):
        with pytest.raises(ValueError) as e:
            resolve_device(name)
        assert str(e.value) == f'device must be "auto", "cpu", "cuda" or "cuda:N", got {name!r}'
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ValueError) as e:
                resolve_device(name)
            assert str(e.value) == f'device is {name!r} but no CUDA device is visible (use "cpu" or "auto")'
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            check_params(params(device="cuda"))


def test_dtypes():
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("float64") is torch.float64 and resolve_dtype(torch.float64) is torch.float64
    assert resolve_dtype("torch.float32") is torch.float32
    for name in ("float16", "double", torch.bfloat16):
        with pytest.raises(ValueError) as e:
            resolve_dtype(name)
        assert str(e.value) == f'dtype must be None, "float32" or "float64", got {name!r}'
    with pytest.raises(ValueError, match="dtype must be"):
        check_params(params(dtype="float16"))


def test_as_matrix_converts_and_never_writes_the_callers_data():
    a = np.arange(6, dtype=">f8").reshape(2, 3)  # big-endian
    t = as_matrix(a, "X", CPU, torch.float64)
    assert t.dtype == torch.float64 and torch.equal(t, torch.arange(6.0, dtype=torch.float64).reshape(2, 3))
    ro = np.ones((2, 2), np.float32)
    ro.flags.writeable = False
    t = as_matrix(ro, "X", CPU, torch.float32)
    t += 1  # a copy: the read-only array is untouched
    assert ro.sum() == 4
    src = torch.ones(2, 2, requires_grad=True)
    t = as_matrix(src, "X", CPU, torch.float32)
    assert not t.requires_grad
    assert as_matrix([[True, False]], "X", CPU, torch.float32).tolist() == [[1.0, 0.0]]
    assert as_matrix(np.array([[1, 2.5]], dtype=object), "X", CPU, torch.float64).tolist() == [[1.0, 2.5]]
    assert as_matrix(np.arange(12).reshape(3, 4)[:, ::2], "X", CPU, torch.float32).tolist() == [[0, 2], [4, 6], [8, 10]]


@pytest.mark.parametrize("X, error, message", [
    (np.zeros(3), ValueError, "X must be a 2-D matrix (rows = instances, columns = features), got shape (3,). Reshape "
     "your data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one row."),
    (np.zeros((2, 2, 2)), ValueError, "X must be a 2-D matrix (rows = instances, columns = features), got shape (2, 2, 2)."),
    (torch.zeros(3), ValueError, "X must be a 2-D matrix (rows = instances, columns = features), got shape (3,). Reshape "
     "your data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one row."),
    (np.zeros((0, 3)), ValueError, "X has 0 sample(s) (shape=(0, 3)) while a minimum of 1 is required."),
    (np.zeros((3, 0)), ValueError, "X has 0 feature(s) (shape=(3, 0)) while a minimum of 1 is required."),
    (np.array([[1.0, np.nan]]), ValueError, "X contains NaN or infinite values"),
    (torch.tensor([[1.0, float("-inf")]]), ValueError, "X contains NaN or infinite values"),
    (np.ones((2, 2), np.complex64), ValueError, "Complex data not supported: X has dtype complex64"),
    (torch.ones(2, 2, dtype=torch.complex64), ValueError, "Complex data not supported: X has dtype torch.complex64"),
    (np.array([["a", "b"]]), ValueError, "X must be numeric, got dtype <U1"),
])
def test_bad_data_is_named(X, error, message):
    with pytest.raises(error) as e:
        as_matrix(X, "X", CPU, torch.float32)
    assert str(e.value) == message


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is float64 on this platform")
def test_long_double_is_refused():
    with pytest.raises(ValueError) as e:
        as_matrix(np.ones((2, 2), np.longdouble), "X", CPU, torch.float32)
    name = np.dtype(np.longdouble).name
    assert str(e.value) == f"X has dtype {name}, which torch cannot hold: convert it, e.g. X.astype(np.float64)"


def test_sparse_input_is_refused_by_name():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError) as e:
        as_matrix(sparse.csr_matrix(np.eye(3)), "X", CPU, torch.float32)
    assert str(e.value) == "X is a sparse matrix, which is not supported: pass a dense array (X.toarray())"


@pytest.mark.parametrize("method", ["toarray", "tocsr"])
def test_anything_with_a_sparse_matrix_method_is_refused(method):
    """Sparse containers of other libraries have one or the other (pydata/sparse: tocsr, no toarray)."""
    sparse_like = type("SparseLike", (), {method: lambda self: np.eye(2), "__array__": lambda self, *a, **k: np.eye(2)})
    with pytest.raises(TypeError, match=r"^M is a sparse matrix, which is not supported"):
        as_matrix(sparse_like(), "M", CPU, torch.float32)


def test_values_beyond_float32_are_not_finite_there():
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        as_matrix(np.array([[1e300]]), "X", CPU, torch.float32)
    assert as_matrix(np.array([[1e300]]), "X", CPU, torch.float64).item() == 1e300


def test_the_sigmoid_range_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_outside_output_range(torch.tensor([[0.0, 1.0]]), "sigmoid")  # the ends are inside
        warn_if_outside_output_range(torch.tensor([[-5.0, 9.0]]), "linear")
    for X, shown in (([[-1e-3, 0.5]], "[-0.001, 0.5]"), ([[0.0, 1.5]], "[0, 1.5]")):
        with pytest.warns(UserWarning) as record:
            warn_if_outside_output_range(torch.tensor(X), "sigmoid")
        assert str(record[0].message) == (f"X has values in {shown} but the output activation is sigmoid, which "
                                          "reconstructs only [0, 1]: scale X or use output_activation='linear'")


# mutmut calls every function through a trampoline, a frame more than the warning's stacklevel counts.
@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampoline adds stack frames")
def test_the_sigmoid_range_warning_points_at_the_callers_fit():
    with pytest.warns(UserWarning, match="output activation is sigmoid") as record:
        RobustAutoencoder(hidden=(2,), outer_iter=1, inner_epochs=1, lam=1.0, device="cpu", output_activation="sigmoid",
                          preprocessing="none").fit(np.full((4, 3), 2.0))
    assert record[0].filename == __file__


def test_results_take_the_callers_form():
    t = torch.tensor([[1.5, 2.0]], dtype=torch.float64)
    out = like_input(t, np.zeros((1, 2), np.float32))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert like_input(t, np.zeros((1, 2), np.int64)).dtype == np.float32
    assert like_input(t, np.zeros((1, 2), np.float64)).dtype == np.float64
    assert like_input(t, np.zeros((1, 2), np.float16)).dtype == np.float16
    assert like_input(t, torch.zeros(1, 2, dtype=torch.float16)).dtype == torch.float16
    assert like_input(t, torch.zeros(1, 2, dtype=torch.int32)).dtype == torch.float64
    scores = torch.tensor([1.25, 2.5], dtype=torch.float32)
    v = vector_like_input(scores, np.zeros((2, 2)))
    assert isinstance(v, np.ndarray) and v.dtype == np.float64 and v.tolist() == [1.25, 2.5]
    v = vector_like_input(scores, torch.zeros(2, 2))
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float32
    c = to_cpu(np.arange(6.0).reshape(2, 3)[:, ::2])
    assert isinstance(c, torch.Tensor) and c.is_contiguous() and c.tolist() == [[0.0, 2.0], [3.0, 5.0]]
    g = torch.ones(2, requires_grad=True)
    assert not to_cpu(g * 2).requires_grad


@pytest.mark.parametrize("n, batch, epochs", [(6316, 128, 1), (6400, 128, 1), (6401, 128, 1), (527, 128, 10),
                                              (190, 128, 25), (1, 128, 50), (60000, 128, 1), (527, 64, 6)])
def test_auto_inner_epochs_are_the_fewest_whole_epochs_of_at_least_50_steps(n, batch, epochs):
    from rda_ext.solver.schedule import AUTO_STEPS, resolve_inner_epochs

    assert AUTO_STEPS == 50
    assert resolve_inner_epochs("auto", n, batch) == epochs
    steps_per_epoch = -(-n // batch)
    assert epochs * steps_per_epoch >= AUTO_STEPS > (epochs - 1) * steps_per_epoch
    assert resolve_inner_epochs(3, n, batch) == 3 and resolve_inner_epochs(0, n, batch) == 0


def test_auto_inner_epochs_fit_as_the_number_they_resolve_to():
    X = np.random.default_rng(7).random((70, 5)).astype(np.float32)
    kw = dict(hidden=(4,), outer_iter=2, batch_size=16, device="cpu", random_state=3, lam=0.5)
    a = RobustAutoencoder(inner_epochs="auto", **kw).fit(X)
    b = RobustAutoencoder(inner_epochs=10, **kw).fit(X)  # 5 batches per epoch: 10 epochs make 50 steps
    assert (a.L_ == b.L_).all() and (a.S_ == b.S_).all()
    c = RobustAutoencoder(inner_epochs=9, **kw).fit(X)
    assert not (c.L_ == b.L_).all()


SWITCHES = ("tied_weights", "warm_start", "cuda_graphs", "verbose")


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.bool_(False), 0, 1, np.int64(0), np.uint8(1)],
                         ids=repr)
def test_switches_take_bools_and_0_or_1(name, value):
    check_params(params(**{name: value}))


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("value", ["no", "yes", "False", "", None, 2, -1, np.int64(2), 0.0, 1.0, np.float64(1.0), 0.5,
                                   [], [True], (False,)], ids=repr)
def test_switches_refuse_anything_else_by_name(name, value):
    """bool() would read "no" as True and None as False: each is an error naming the switch."""
    with pytest.raises(ValueError) as e:
        check_params(params(**{name: value}))
    assert str(e.value) == f"{name} must be True or False, got {value!r}"


@pytest.mark.parametrize("name", SWITCHES)
def test_fit_refuses_a_string_switch(name):
    with pytest.raises(ValueError, match=f"^{name} must be True or False, got 'no'$"):
        RobustAutoencoder(**{name: "no"}, hidden=(2,), outer_iter=1, device="cpu").fit(np.zeros((4, 3)))


SPARSE_LAYOUTS = {
    "coo": lambda t: t.to_sparse(), "csr": lambda t: t.to_sparse_csr(), "csc": lambda t: t.to_sparse_csc(),
    "bsr": lambda t: t.to_sparse_bsr((1, 1)), "bsc": lambda t: t.to_sparse_bsc((1, 1)),
}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", SPARSE_LAYOUTS)
def test_sparse_tensors_are_refused_by_name_in_every_layout(layout):
    X = SPARSE_LAYOUTS[layout](torch.eye(3))
    with pytest.raises(TypeError) as e:
        as_matrix(X, "M", CPU, torch.float32)
    assert str(e.value) == f"M is a sparse tensor ({X.layout}), which is not supported: pass a dense tensor (M.to_dense())"


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_fit_and_new_data_refuse_sparse_tensors(layout):
    X = SPARSE_LAYOUTS[layout](torch.rand(8, 3))
    est = RobustAutoencoder(hidden=(2,), outer_iter=1, inner_epochs=1, device="cpu", random_state=0)
    with pytest.raises(TypeError, match=r"^X is a sparse tensor \(torch\.sparse_"):
        est.fit(X)
    est.fit(X.to_dense())
    for method in (est.decision_function, est.predict, est.transform, est.reconstruct):
        with pytest.raises(TypeError, match=r"^X is a sparse tensor \(torch\.sparse_"):
            method(X)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_a_nested_tensor_is_refused_by_name():
    X = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(TypeError) as e:
        as_matrix(X, "M", CPU, torch.float32)
    assert str(e.value) == "M is a nested tensor, which is not supported: pass a 2-D matrix (rows of one length)"


NOT_A_MATRIX = "M must be a 2-D matrix (a numpy array, a tensor or a list of rows), got "
RAGGED = "M must be a 2-D matrix (rows = instances, columns = features), but numpy cannot read this list as one: "


@pytest.mark.parametrize("X, error, message", [
    ([[1.0, 2.0], [3.0]], ValueError, RAGGED),
    ([[1.0, [2.0]]], ValueError, RAGGED),
    ({"a": [1.0, 2.0]}, TypeError, NOT_A_MATRIX + "an object of type dict"),
    ({1.0, 2.0}, TypeError, NOT_A_MATRIX + "an object of type set"),
    ("1,2;3,4", TypeError, NOT_A_MATRIX + "an object of type str"),
    (b"12", TypeError, NOT_A_MATRIX + "an object of type bytes"),
    (None, TypeError, NOT_A_MATRIX + "None"),
    (3.5, TypeError, NOT_A_MATRIX + "an object of type float"),
    ((row for row in [[1.0, 2.0]]), TypeError, NOT_A_MATRIX + "an object of type generator"),
    (["a", "b"], ValueError, "M must be numeric, got dtype <U1"),
    ([["1", "2"]], ValueError, "M must be numeric, got dtype <U1"),
    (np.array([[1.0, {"a": 1}]], dtype=object), TypeError,
     "M must be numeric, but its entries of dtype object are not all numbers ("),
], ids=["ragged", "ragged-deeper", "dict", "set", "str", "bytes", "None", "number", "generator", "strings",
        "strings-2d", "object-dict"])
def test_what_is_not_a_matrix_is_named(X, error, message):
    with pytest.raises(error) as e:
        as_matrix(X, "M", CPU, torch.float32)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("X", [[[1.0, 2.0], [3.0]], {"a": [1.0]}, None, "abc"], ids=["ragged", "dict", "None", "str"])
def test_fit_and_new_data_name_x_when_it_is_not_a_matrix(X):
    est = RobustAutoencoder(hidden=(2,), outer_iter=1, inner_epochs=1, device="cpu", random_state=0)
    with pytest.raises((TypeError, ValueError), match="^X must be a 2-D matrix"):
        est.fit(X)
    est.fit(np.random.default_rng(0).random((8, 2)))
    with pytest.raises((TypeError, ValueError), match="^X must be a 2-D matrix"):
        est.decision_function(X)


def test_float64_results_for_float16_numpy_input_are_rounded_once(gen):
    """torch rounds float64 to float16 through float32; numpy rounds once, to the nearest."""
    t = torch.rand(500000, 2, generator=gen, dtype=torch.float64)  # about 63 in 10^6 are rounded twice
    assert (t.to(torch.float16).numpy() != t.numpy().astype(np.float16)).any()  # what is avoided
    np.testing.assert_array_equal(like_input(t, np.zeros((1, 2), np.float16)), t.numpy().astype(np.float16))


def test_a_decomposition_of_float16_numpy_input_is_rounded_once(gen):
    from rda_ext.estimator.preprocessing import in_xs_units

    t = torch.rand(20000, 2, generator=gen, dtype=torch.float64)
    scaling = (torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([3.0, 0.25], dtype=torch.float64))
    exact = (t * scaling[1] + scaling[0]).numpy()
    got = in_xs_units(t, np.zeros((1, 2), np.float16), "L_", scaling)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, exact.astype(np.float16))


def test_a_float32_decomposition_of_float16_numpy_input_is_rounded_once(gen):
    """The fit's float32 L, unscaled in float64, goes to float16 in one rounding (not through float32)."""
    from rda_ext.estimator.preprocessing import in_xs_units

    t = torch.rand(500000, 2, generator=gen)
    scaling = (torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([3.0, 0.25], dtype=torch.float64))
    exact = t.double() * scaling[1] + scaling[0]
    assert (exact.float().numpy().astype(np.float16) != exact.numpy().astype(np.float16)).any()  # what is avoided
    got = in_xs_units(t, np.zeros((1, 2), np.float16), "L_", scaling)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, exact.numpy().astype(np.float16))


@pytest.mark.parametrize("X", [np.zeros((1, 2), np.float32), torch.zeros(1, 2)], ids=["numpy", "tensor"])
def test_a_decomposition_beyond_xs_dtype_is_an_error_and_no_warning(X):
    from rda_ext.estimator.preprocessing import in_xs_units

    t = torch.tensor([[1.0, 3e38]])
    scaling = (torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, 4.0], dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError) as e:
            in_xs_units(t, X, "L_", scaling)
    assert str(e.value) == ("L_ (in X's units) has values beyond the range of float32 in column 1: pass X as "
                            "float64, or divide that column by a constant")


def test_a_result_in_xs_dtype_is_handed_over_without_a_copy():
    t = torch.rand(4, 3)
    out = like_input(t, np.zeros((1, 3), np.float32))
    assert out.dtype == np.float32 and np.shares_memory(out, t.numpy())


def test_a_tensor_of_another_dense_layout_is_refused_by_its_layout():
    X = torch.rand(3, 3).to_mkldnn()
    with pytest.raises(TypeError) as e:
        as_matrix(X, "M", CPU, torch.float32)
    assert str(e.value) == ("M is a tensor of layout torch._mkldnn, which is not supported: pass a dense tensor "
                            "(M.to_dense())")


def test_a_cpu_has_fast_bfloat16_with_either_avx512_bf16_or_amx():
    expected = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert fast_bfloat16(CPU) is expected


@pytest.mark.parametrize(("dtype", "expected"), [(np.float16, torch.float16), (np.float32, torch.float32),
                                                 (np.dtype(">f4"), torch.float32), (np.float64, torch.float64),
                                                 (np.int64, torch.float32), (np.bool_, torch.float32)])
def test_results_for_numpy_input_are_in_its_float_dtype_else_float32(dtype, expected):
    assert output_dtype(np.zeros((2, 3), dtype=dtype), torch.float64) == expected
