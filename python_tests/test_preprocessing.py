"""Tables: preprocessing="minmax" (what "auto" picks for data outside [0, 1]) maps each column to
[0, 1] by its training range, "standardize" centres it on its median and divides it by a robust
scale; the fit runs on the scaled data, L_ and S_ come back in X's units, and
output_activation="auto" picks a sigmoid output for data in [0, 1] and a linear one otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rda_ext import RobustAutoencoder
from rda_ext.estimator.preprocessing import (
    IQR_PER_SD,
    column_quantile,
    resolve_output_activation,
    robust_scaling,
    scaling_for,
)

FAST = dict(hidden=(6, 3), outer_iter=3, inner_epochs=3, batch_size=16, lr=1e-2, activation="elu", dtype="float64",
            device="cpu", tol=0)


@pytest.fixture
def seed(gen):
    return int(gen.initial_seed())


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
