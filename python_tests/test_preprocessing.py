"""Tables: preprocessing="minmax" (what "auto" picks for data outside [0, 1]) maps each column to
[0, 1] by its training range, "standardize" centres it on its median and divides it by a robust
scale; the fit runs on the scaled data, L_ and S_ come back in X's units, and
output_activation="auto" picks a sigmoid output for data in [0, 1] and a linear one otherwise."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import requires_cuda
from rda_ext import RobustAutoencoder, TrainingDiverged
from rda_ext.estimator import preprocessing as scaling_module
from rda_ext.estimator.preprocessing import (
    CHUNK_ENTRIES,
    IQR_PER_SD,
    column_quantile,
    column_sd,
    resolve_output_activation,
    robust_scaling,
    scale_rows,
    scaled_range,
    scaling_for,
    unscale_rows,
)
from rda_ext.io.fingerprint import Fingerprint, fingerprint
from rda_ext.validation import CONVERT_ENTRIES, checked_matrix

FAST = dict(hidden=(6, 3), outer_iter=3, inner_epochs=3, batch_size=16, lr=1e-2, activation="elu", dtype="float64",
            device="cpu", tol=0)


def table(seed, n=80):
    """Columns in very different units (as in a medical table), a few rows off the rest."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    X = np.c_[z @ rng.standard_normal((2, 5)), z[:, :1] * 3] * np.array([1e-3, 1, 50, 1e4, 7, 0.2]) + 100
    X[: n // 20] += rng.standard_normal((n // 20, 6)) * 4 * X.std(0)
    return X


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_column_quantiles_and_the_robust_scale_are_numpys(gen, n):
    X = torch.rand(n, 5, generator=gen, dtype=torch.float64) * 10
    for q in (0.25, 0.5, 0.75):
        np.testing.assert_allclose(column_quantile(X, q).numpy(), np.quantile(X.numpy(), q, axis=0), rtol=1e-14)
    center, scale = robust_scaling(X.float())
    x = X.float().double().numpy()
    iqr = np.quantile(x, 0.75, axis=0) - np.quantile(x, 0.25, axis=0)
    np.testing.assert_allclose(center.numpy(), np.median(x, axis=0), rtol=1e-12)
    expected = np.where(iqr > 0, iqr / IQR_PER_SD, np.where(x.std(0) > 0, x.std(0), 1.0))
    np.testing.assert_allclose(scale.numpy(), expected, rtol=1e-6)


def test_a_column_without_spread_in_its_middle_half_is_scaled_by_its_sd_and_a_constant_one_by_1():
    X = torch.tensor([[0.0, 5.0]] * 9 + [[1.0, 5.0]], dtype=torch.float64)
    center, scale = robust_scaling(X)
    assert center.tolist() == [0.0, 5.0]
    assert scale.tolist() == [pytest.approx(0.3), 1.0]  # the sd of nine 0s and one 1; 1 for the constant


def test_auto_scales_only_data_outside_the_unit_interval():
    inside, outside = torch.tensor([[0.0, 1.0], [0.5, 0.5]]), torch.tensor([[0.0, 1.5], [-2.0, 1.5]])
    assert scaling_for("auto", inside) is None and scaling_for("none", outside) is None
    assert scaling_for("auto", torch.tensor([[0.0, 1.25]])) is not None  # above 1 only
    for name in ("auto", "minmax"):
        center, scale = scaling_for(name, outside)
        assert center.tolist() == [-2.0, 1.5] and scale.tolist() == [2.0, 1.0]  # a constant column: 1
    center, scale = scaling_for("standardize", outside)
    assert center.tolist() == [-1.0, 1.5]
    assert resolve_output_activation("auto", inside) == "sigmoid"
    assert resolve_output_activation("auto", outside) == "linear"
    assert resolve_output_activation("tanh", outside) == "tanh"


@pytest.mark.parametrize("penalty", ["l1", "l21_rows", "l21_cols"])
@pytest.mark.parametrize("preprocessing", ["auto", "standardize"])
def test_the_fit_runs_on_scaled_data_and_answers_in_xs_units(seed, penalty, preprocessing):
    X = table(seed)
    est = RobustAutoencoder(penalty=penalty, contamination=0.1, random_state=seed, preprocessing=preprocessing,
                            outlier_score="residual", **FAST).fit(X)
    c, s = est.center_, est.scale_
    if preprocessing == "auto":  # minmax: [0, 1] on the training rows, hence a sigmoid output
        np.testing.assert_array_equal(c, X.min(0))
        np.testing.assert_allclose(s, X.max(0) - X.min(0), rtol=1e-15)
        assert est.model_.architecture[2] == "sigmoid"
    else:
        np.testing.assert_allclose(c, np.median(X, axis=0), rtol=1e-12)
        assert est.model_.architecture[2] == "linear"
    R = (X - est.L_) / s  # the residual in scaled units
    lam = est.lam_
    if penalty == "l1":
        prox = np.sign(R) * np.maximum(np.abs(R) - lam, 0)
    else:
        axis = 1 if penalty == "l21_rows" else 0
        norms = np.linalg.norm(R, axis=axis, keepdims=True)
        prox = R * np.where(norms > lam, 1 - lam / norms, 0.0)
    np.testing.assert_allclose(est.S_ / s, prox, rtol=0, atol=1e-9)
    np.testing.assert_allclose(est.decision_scores_, np.linalg.norm(R, axis=1), rtol=1e-9)
    # New rows: the network's reconstruction in X's units, scores in scaled units.
    new = X[:10] * 1.01
    recon = est.reconstruct(new)
    with torch.no_grad():
        expected = est.model_(torch.from_numpy((new - c) / s)).numpy() * s + c
    np.testing.assert_allclose(recon, expected, rtol=1e-9)
    np.testing.assert_allclose(est.decision_function(new), np.linalg.norm((new - recon) / s, axis=1), rtol=1e-9)
    with torch.no_grad():
        code = est.model_.encode(torch.from_numpy((new - c) / s)).numpy()
    np.testing.assert_allclose(est.transform(new), code, rtol=1e-9)


def test_scaled_fits_ignore_each_columns_units(seed):
    """A column in other units (times 1000, shifted) gives the same scaled data, so the same fit."""
    X = table(seed)
    Y = X.copy()
    Y[:, 2] = Y[:, 2] * 1000 - 7
    a = RobustAutoencoder(contamination=0.1, random_state=seed, **FAST).fit(X)
    b = RobustAutoencoder(contamination=0.1, random_state=seed, **FAST).fit(Y)
    np.testing.assert_allclose(a.decision_scores_, b.decision_scores_, rtol=1e-6)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(b.S_[:, 2], a.S_[:, 2] * 1000, rtol=1e-6, atol=1e-6)


def test_images_are_left_as_they_are(seed):
    X = np.random.default_rng(seed).random((40, 6))
    est = RobustAutoencoder(lam=0.5, random_state=seed, **FAST).fit(X)
    assert est.center_ is None and est.scale_ is None and est.model_.architecture[2] == "sigmoid"
    same = RobustAutoencoder(lam=0.5, random_state=seed, preprocessing="none", output_activation="sigmoid",
                             **FAST).fit(X)
    np.testing.assert_array_equal(est.L_, same.L_)


def test_a_warm_start_keeps_the_scaling_its_network_learned(seed):
    X = table(seed)
    est = RobustAutoencoder(contamination=0.1, random_state=seed, **FAST).fit(X)
    center = est.center_.copy()
    half = X[len(X) // 2 :]  # whose own range differs: a fresh fit would scale it otherwise
    assert not np.array_equal(half.min(0), center)
    est.set_params(warm_start=True, outer_iter=1).fit(half)
    np.testing.assert_array_equal(est.center_, center)
    assert est.history_[-1]["iteration"] == FAST["outer_iter"] + 1


def test_a_warm_start_on_the_same_rows_continues_from_its_scaled_decomposition(seed):
    """c2 of the warm iteration is the step from the previous L + S, measured in scaled units."""
    X = table(seed)
    est = RobustAutoencoder(contamination=0.1, random_state=seed, **FAST).fit(X)
    prev = est.L_ + est.S_
    est.set_params(warm_start=True, outer_iter=1).fit(X)
    c, s = est.center_, est.scale_
    c2 = np.linalg.norm((prev - est.L_ - est.S_) / s) / np.linalg.norm((X - c) / s)
    assert est.history_[-1]["c2"] == pytest.approx(c2, rel=1e-9)


def test_the_scaling_is_saved_with_the_model(tmp_path, seed):
    X = table(seed)
    est = RobustAutoencoder(contamination=0.1, random_state=seed, **FAST).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(back.center_, est.center_)
    np.testing.assert_array_equal(back.scale_, est.scale_)
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    for change, message in ((dict(scale_=-state["fitted"]["scale_"]), "scale_ has entries <= 0"),
                            (dict(center_=None), "center_ and scale_ are saved together or not at all"),
                            (dict(center_=state["fitted"]["center_"][:2]), "center_ is not a finite float64 vector"),
                            (dict(output_activation_="softmax"), "output_activation_ is 'softmax'")):
        bad = {**state, "fitted": {**state["fitted"], **change}}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=message):
            RobustAutoencoder.load(tmp_path / "bad.pt")
    del state["fitted"]["output_activation_"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing key 'fitted.output_activation_'"):
        RobustAutoencoder.load(tmp_path / "bad.pt")


# ---------------------------------------------------------------- columns near the ends of the dtype
EXTREME = {np.float32: 3e38, np.float64: 1.7e308}


def extreme_table(dtype, seed=0, n=60):
    """Three columns spread over +-big (the largest finite magnitudes of the dtype) and an ordinary one."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 4)) * EXTREME[dtype]
    X[:, 3] = rng.uniform(0, 1, n)
    return X.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_statistics_of_extreme_columns_are_finite_float64(dtype):
    X = torch.from_numpy(extreme_table(dtype))
    x = X.double().numpy()
    for q in (0.25, 0.5, 0.75):
        got = column_quantile(X, q).numpy()
        assert np.isfinite(got).all() and (got >= x.min(0)).all() and (got <= x.max(0)).all()
    m = np.abs(x).max(0)
    np.testing.assert_allclose(column_sd(X).numpy(), (x / m).std(0) * m, rtol=1e-12)
    if dtype == np.float32:  # float64 holds the statistics of float32 data, whatever its values
        np.testing.assert_allclose(column_sd(X).numpy(), x.std(0), rtol=1e-12)
        center, scale = scaling_for("minmax", X)
        assert scale.tolist() == (x.max(0) - x.min(0)).tolist()
    center, scale = scaling_for("standardize", X)
    assert torch.isfinite(center).all() and torch.isfinite(scale).all() and (scale > 0).all()


def test_a_column_without_middle_spread_at_the_ends_of_float64_is_scaled_by_its_finite_sd():
    X = torch.zeros(10, 1, dtype=torch.float64)
    X[0], X[1] = 1.7e308, -1.7e308  # IQR 0; the squares of the values overflow
    _, scale = robust_scaling(X)
    assert scale.item() == pytest.approx(np.sqrt(0.2) * 1.7e308, rel=1e-12)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaling_is_float64_arithmetic_rounded_once_the_same_in_chunks(monkeypatch, gen, dtype, center):
    X = (torch.randn(37, 5, generator=gen, dtype=torch.float64) * 1e30).to(dtype)
    scaling = (torch.randn(5, generator=gen, dtype=torch.float64) * 1e30,
               torch.rand(5, generator=gen, dtype=torch.float64) * 1e20 + 1e19)
    whole = scale_rows(X, scaling, center)
    c, s = scaling
    expected = (((X.double() - c) if center else X.double()) / s).to(dtype)
    assert whole.dtype == dtype and torch.equal(whole, expected)
    back = unscale_rows(whole, scaling, center)
    assert torch.equal(back, ((whole.double() * s + c) if center else whole.double() * s).to(dtype))
    monkeypatch.setattr(scaling_module, "CHUNK_ENTRIES", 12)  # rows of 5: two rows a chunk
    assert len(scaling_module.row_chunks(X)) == 19
    assert torch.equal(scale_rows(X, scaling, center), whole)
    assert torch.equal(unscale_rows(whole, scaling, center), back)


def test_scaling_near_the_ends_of_float64_does_not_overflow_on_the_way():
    X = torch.tensor([[-1.7e308], [1.7e308]], dtype=torch.float64)
    scaling = torch.tensor([3e307], dtype=torch.float64), torch.tensor([1e308], dtype=torch.float64)
    scaled = scale_rows(X, scaling)  # X - center overflows, the scaled value does not
    np.testing.assert_allclose(scaled.numpy().ravel(), [-2.0, 1.4], rtol=1e-15)
    np.testing.assert_allclose(unscale_rows(scaled, scaling).numpy().ravel(), [-1.7e308, 1.7e308], rtol=1e-15)


def assert_decomposes(est, X):
    """L_ and S_ finite in X's dtype and, with lam 0, L_ + S_ = X to the rounding of the scaled data
    (halved: the sum of two halves of float64's range overflows)."""
    assert est.L_.dtype == est.S_.dtype == X.dtype
    assert np.isfinite(est.L_).all() and np.isfinite(est.S_).all()
    half = lambda a: a.astype(np.float64) / 2  # noqa: E731
    fit_eps = np.finfo(np.float32 if est.dtype is None else np.float64).eps
    atol = 8 * fit_eps * est.scale_ * (1 + np.abs((X.astype(np.float64) / 2 - est.center_ / 2) / est.scale_))
    np.testing.assert_array_less(np.abs(half(est.L_) + half(est.S_) - half(X)), atol)


EXTREME_FIT = dict(hidden=(4,), outer_iter=2, inner_epochs=2, batch_size=16, penalty="l1", lam=0.0, device="cpu",
                   random_state=0, tol=0)


@pytest.mark.parametrize("preprocessing", ["auto", "minmax", "standardize"])
def test_float32_columns_near_its_ends_decompose_or_say_they_do_not_fit_float32(preprocessing):
    """The scaling is finite, so is what the network sees; a residual X - L of such columns may
    span twice float32's range: then S_ is refused in float32, and X as float64 (what the error
    advises) decomposes."""
    X = extreme_table(np.float32)
    est = RobustAutoencoder(preprocessing=preprocessing, **EXTREME_FIT)
    try:
        est.fit(X)
    except ValueError as e:
        assert re.fullmatch(r"[LS]_ \(in X's units\) has values beyond the range of float32 in column [0-2]: pass X "
                            r"as float64, or divide that column by a constant", str(e)), str(e)
        assert not hasattr(est, "model_")
        est.fit(X.astype(np.float64))  # the same values (a float32 fit), answered in float64
        X = X.astype(np.float64)
    assert np.isfinite(est.center_).all() and np.isfinite(est.scale_).all()
    assert_decomposes(est, X)
    assert np.isfinite(est.decision_function(X)).all() and np.isfinite(est.reconstruct(X)).all()


@pytest.mark.parametrize("preprocessing", ["auto", "minmax"])
def test_a_range_beyond_float64_is_refused_by_name(preprocessing):
    X = extreme_table(np.float64)
    label = 'preprocessing="auto" (here "minmax")' if preprocessing == "auto" else 'preprocessing="minmax"'
    with pytest.raises(ValueError) as e:
        RobustAutoencoder(preprocessing=preprocessing, dtype="float64", **EXTREME_FIT).fit(X)
    lo, hi = X[:, 0].min(), X[:, 0].max()
    assert str(e.value) == (f"{label} cannot scale column 0 of X: its range is beyond float64 (the column spans "
                            f"[{lo:.6g}, {hi:.6g}]); divide X by a constant first")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_columns_near_its_ends_standardize_and_decompose_or_say_they_do_not_fit(seed):
    X = extreme_table(np.float64, seed)
    est = RobustAutoencoder(preprocessing="standardize", dtype="float64", **EXTREME_FIT)
    try:
        est.fit(X)
    except ValueError as e:
        assert re.fullmatch(r"[LS]_ \(in X's units\) has values beyond the range of float64 in column [0-2]: divide "
                            r"that column by a constant", str(e)), str(e)
        est.fit(X / 4)  # what the error advises
        X = X / 4
    assert_decomposes(est, X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_preprocessing_extreme_columns_reach_the_network_as_they_are(dtype):
    with pytest.raises(TrainingDiverged, match="scale X"):
        RobustAutoencoder(preprocessing="none", dtype="float64" if dtype == np.float64 else None,
                          **EXTREME_FIT).fit(extreme_table(dtype))


def test_a_column_that_its_scale_takes_beyond_float32_is_refused_before_the_network_sees_it():
    X = np.zeros((40, 3), np.float32)
    X[:, 0] = np.linspace(0, 1e-30, 40)  # an IQR of about 5e-31
    X[-1, 0] = 3e38
    X[:, 1:] = np.random.default_rng(0).random((40, 2))
    with pytest.raises(ValueError) as e:
        RobustAutoencoder(preprocessing="standardize", **EXTREME_FIT).fit(X)
    message = str(e.value)
    assert message.startswith('column 0 of X is not finite in float32 once scaled by preprocessing="standardize" '
                              "(center "), message
    assert message.endswith('; the column spans [0, 3e+38]): divide the column by a constant, or fit in float64 '
                            '(dtype="float64")'), message


def test_new_rows_that_the_fitted_scaling_takes_beyond_the_dtype_are_refused():
    X = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    X[:, 0] *= 1e-30  # a range of about 1e-30
    est = RobustAutoencoder(preprocessing="minmax", **EXTREME_FIT).fit(X)
    new = X[:5].copy()
    new[2, 0] = 1e10
    for method in (est.decision_function, est.predict, est.transform, est.reconstruct):
        with pytest.raises(ValueError, match=r'^column 0 of X is not finite in float32 once scaled by the fitted '
                                             r'scaling \(preprocessing="minmax"\) \(center '):
            method(new)
    est.set_params(warm_start=True)
    with pytest.raises(ValueError, match=r'^column 0 of X is not finite in float32 once scaled by the fitted'):
        est.fit(np.r_[X, new])


@pytest.mark.parametrize("source", ["float64 array", "int tensor", "float32 tensor", "transposed float64"])
def test_the_pass_that_converts_x_also_measures_its_columns_range(seed, source):
    g = np.random.default_rng(seed)
    a = g.normal(size=(CONVERT_ENTRIES // 3 + 7, 5)) * 10  # several blocks and a short last one
    X = {"float64 array": a, "int tensor": torch.from_numpy(a.astype(np.int64)),
         "float32 tensor": torch.from_numpy(a.astype(np.float32)),
         "transposed float64": torch.from_numpy(np.ascontiguousarray(a.T)).T}[source]
    t, (lo, hi) = checked_matrix(X, "X", torch.device("cpu"), torch.float32)
    expected = torch.as_tensor(X).to(torch.float32)
    assert torch.equal(t, expected)
    assert torch.equal(lo, expected.amin(0)) and torch.equal(hi, expected.amax(0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_entry_in_any_block_is_refused(bad):
    X = np.random.default_rng(0).normal(size=(CONVERT_ENTRIES // 4 + 3, 4))
    X[-1, 2] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        checked_matrix(X, "X", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("name", ["minmax", "standardize"])
def test_the_scaled_columns_ends_are_the_scaled_ends(seed, name):
    X = torch.from_numpy(np.random.default_rng(seed).standard_t(2, size=(301, 6)).astype(np.float32))
    column_range = torch.aminmax(X, dim=0)
    scaling = scaling_for(name, X, column_range)
    lo, hi = scaled_range(column_range, scaling, how=name)
    Xs = scale_rows(X, scaling, how=name)
    assert torch.equal(lo, Xs.amin(0)) and torch.equal(hi, Xs.amax(0))
    assert scaled_range(column_range, None, how=name) is column_range


@pytest.mark.parametrize("shape", [(1, 7), (3, 1), (40, 5)])
def test_a_fingerprint_hashes_dtype_shape_and_bytes_in_row_major_order(seed, shape):
    import hashlib

    X = torch.from_numpy(np.random.default_rng(seed).normal(size=shape))
    expected = hashlib.sha256(f"{X.dtype} {tuple(X.shape)}".encode() + X.numpy().tobytes()).hexdigest()
    assert fingerprint(X) == expected
    assert fingerprint(X.T.contiguous().T) == expected  # column-major storage, the same matrix


@requires_cuda
def test_the_fingerprint_of_a_gpu_matrix_is_that_of_its_host_copy(seed):
    X = torch.from_numpy(np.random.default_rng(seed).normal(size=(300, 7)))
    assert fingerprint(X.cuda()) == fingerprint(X)


@pytest.mark.parametrize("scaled", [False, True])
def test_the_pass_that_scales_x_hashes_what_it_writes(seed, scaled):
    X = torch.from_numpy(np.random.default_rng(seed).normal(size=(CHUNK_ENTRIES // 5 + 11, 5)))
    scaling = scaling_for("minmax", X) if scaled else None
    digest = Fingerprint(X.dtype, X.shape)
    Xs = scale_rows(X, scaling, digest=digest)
    assert digest.hexdigest() == fingerprint(Xs)


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_a_reconstruction_beyond_the_range_of_xs_dtype_is_refused_by_name(kind):
    X = table(0).astype(np.float32)
    est = RobustAutoencoder(**{**FAST, "dtype": "float32"}, output_activation="linear").fit(X)
    with torch.no_grad():
        est.model_.dec_bias[-1][1] = float("inf")  # a network whose output in column 1 float32 cannot hold
    with pytest.raises(ValueError) as e:
        est.reconstruct(X if kind == "numpy" else torch.from_numpy(X))
    assert str(e.value) == ("the reconstruction (in X's units) has values beyond the range of float32 in column 1: "
                            "pass X as float64, or divide that column by a constant")


def test_an_l_beyond_the_range_of_xs_dtype_is_refused_by_name_and_the_fit_is_kept():
    """A network continued by a warm start whose output in column 1 lies far beyond the training
    range: L_ in X's units exceeds float32 (S_ is 0: lam is above every residual)."""
    X = table(0).astype(np.float32)
    X[:, 1] = np.linspace(0, 1e38, len(X), dtype=np.float32)
    params = dict(FAST, dtype="float32", preprocessing="minmax", output_activation="linear", lam=1e30, outer_iter=1)
    est = RobustAutoencoder(**params).fit(X)
    with torch.no_grad():
        est.model_.dec_bias[-1][1] = 10.0  # 10 times the column's range
    kept = est.L_.copy()
    with pytest.raises(ValueError) as e:
        est.set_params(warm_start=True, lr=1e-12).fit(X)
    assert str(e.value) == ("L_ (in X's units) has values beyond the range of float32 in column 1: pass X as float64, "
                            "or divide that column by a constant")
    np.testing.assert_array_equal(est.L_, kept)


@pytest.mark.parametrize("chunk_entries", [CHUNK_ENTRIES, 12])
def test_the_column_sd_is_numpys_in_chunks_for_zero_tiny_and_huge_columns(monkeypatch, gen, chunk_entries):
    """Each column divided by its largest magnitude first: the squares of 1e-200 would underflow,
    those of 1e300 overflow; a column of zeros has sd 0."""
    monkeypatch.setattr(scaling_module, "CHUNK_ENTRIES", chunk_entries)  # 12: two rows of 5 a chunk
    X = torch.randn(37, 5, generator=gen, dtype=torch.float64)
    X[:, 1] = 0.0
    X[:, 2] *= 1e-200
    X[:, 3] *= 1e300
    X[:, 4] = X[:, 4] * 0.25 + 0.5  # magnitudes below 1
    expected = np.std(X.numpy() / np.array([1, 1, 1e-200, 1e300, 1]), axis=0) * np.array([1, 1, 1e-200, 1e300, 1])
    sd = column_sd(X)
    assert sd[1].item() == 0.0
    np.testing.assert_allclose(sd.numpy(), expected, rtol=1e-13, atol=0)


def test_quartiles_at_both_ends_of_float64_give_a_finite_iqr_scale():
    X = torch.tensor([[-1e308]] * 10 + [[1e308]] * 10, dtype=torch.float64)  # IQR 2e308 overflows
    _, scale = robust_scaling(X)
    assert scale.item() == pytest.approx(1e308 / IQR_PER_SD * 2, rel=1e-12)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_column_scaled_beyond_its_dtype_is_named_with_its_scaling_from_any_chunk(monkeypatch, dtype, center):
    monkeypatch.setattr(scaling_module, "CHUNK_ENTRIES", 6)  # rows of 3: two rows a chunk
    big = 3e38 if dtype == torch.float32 else 1.7e308
    X = torch.ones(7, 3, dtype=dtype)
    X[0, 1] = big  # in the first of four chunks: (big - 0.25) / 0.001 is beyond the dtype
    scaling = (torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64), torch.tensor([1.0, 1e-3, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError) as e:
        scale_rows(X, scaling, center)
    name = str(dtype).removeprefix("torch.")
    advice = "divide the column by a constant" + (', or fit in float64 (dtype="float64")' if name == "float32" else "")
    assert str(e.value) == (f"column 1 of X is not finite in {name} once scaled by the preprocessing (center "
                            f"{0.25 if center else 0.0:.6g}, scale 0.001; the column spans [1, {big:.6g}]): {advice}")


def test_unscaling_is_rounded_once_to_the_dtype_asked_for(gen):
    X = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    assert unscale_rows(X, None) is X
    assert unscale_rows(X, None, dtype=torch.float32).dtype == torch.float32
    assert torch.equal(unscale_rows(X, None, dtype=torch.float32), X.float())
    c, s = torch.randn(3, generator=gen, dtype=torch.float64), torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    x32 = X.float()
    exact = x32.double() * s + c
    assert torch.equal(unscale_rows(x32, (c, s), dtype=torch.float64), exact)
    assert torch.equal(unscale_rows(x32, (c, s)), exact.float())
    assert torch.equal(unscale_rows(x32, (c, s), center=False), (x32.double() * s).float())


def test_a_spread_beyond_float64_is_refused_by_name():
    """Quartiles at both ends of float64: IQR / 1.349 is beyond it too."""
    X = np.zeros((8, 2))
    X[:, 0] = np.arange(8.0)
    X[:4, 1], X[4:, 1] = -1.7e308, 1.7e308
    with pytest.raises(ValueError) as e:
        scaling_for("standardize", torch.from_numpy(X))
    assert str(e.value) == ('preprocessing="standardize" cannot scale column 1 of X: its spread (interquartile range '
                            "/ 1.349, or standard deviation) is beyond float64 (the column spans [-1.7e+308, "
                            "1.7e+308]); divide X by a constant first")


def test_a_quantile_between_order_statistics_at_both_ends_of_float64_is_interpolated():
    """hi - lo is beyond float64 there: lo * (1 - t) + hi * t is not."""
    X = torch.tensor([[-1.7e308], [-1.6e308], [1.6e308], [1.7e308]], dtype=torch.float64)
    q = column_quantile(X, 0.4)  # position 1.2: 0.8 of -1.6e308 and 0.2 of 1.6e308
    assert q.item() == pytest.approx(-1.6e308 * 0.8 + 1.6e308 * 0.2, rel=1e-12)
    assert column_quantile(X, 0.1).item() == pytest.approx(-1.7e308 * 0.7 - 1.6e308 * 0.3, rel=1e-12)


def test_a_column_without_middle_spread_keeps_the_iqr_scale_of_the_others_below_1():
    """Once one column falls back to its sd, the others keep IQR / 1.349, however small."""
    X = torch.zeros(40, 2, dtype=torch.float64)
    X[-3:, 0] = 5.0  # IQR 0: its sd
    X[:, 1] = torch.linspace(0.0, 0.01, 40, dtype=torch.float64)
    _, scale = robust_scaling(X)
    iqr = np.subtract(*np.quantile(X[:, 1].numpy(), [0.75, 0.25]))
    assert scale[1].item() == pytest.approx(iqr / IQR_PER_SD, rel=1e-12)
    assert scale[0].item() == pytest.approx(float(np.std(X[:, 0].numpy())), rel=1e-12)


@pytest.mark.parametrize("shift", [0.0, 5.0], ids=["in [0, 1]", "outside"])
def test_the_column_range_comes_from_the_pass_that_checks_x(monkeypatch, shift):
    """X is read twice before training (the check, then the scaling and its fingerprint): the
    scaling and the output's choice take the columns' (min, max) from the check, not from passes
    of their own."""
    passes = []
    measure = scaling_module.column_min_max
    monkeypatch.setattr(scaling_module, "column_min_max", lambda t: passes.append(t.shape) or measure(t))
    X = np.random.default_rng(0).random((50, 4)) + shift
    est = RobustAutoencoder(hidden=(3,), outer_iter=1, inner_epochs=1, random_state=0, device="cpu").fit(X)
    assert passes == []
    assert est.model_.architecture[2] == "sigmoid"  # minmax takes the columns into [0, 1]
    assert (est.center_ is None) == (shift == 0)
