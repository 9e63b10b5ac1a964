"""The autoencoder's precision: "bfloat16" runs its forward and backward under autocast while the
weights, the optimizer state, X, L, S and the proximal step stay float32; "auto" picks bfloat16
only where the device multiplies bfloat16 in hardware."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import planted

from rda_ext import RobustAutoencoder, validation
from rda_ext.validation import PRECISIONS, resolve_precision

SMALL = dict(hidden=(16, 4), outer_iter=3, inner_epochs=2, batch_size=32, lr=1e-2, device="cpu")
CPU = torch.device("cpu")


def test_bfloat16_computes_the_network_in_bfloat16_and_keeps_the_rest_float32(seed):
    X, _ = planted(seed, n=120, d=20)
    est = RobustAutoencoder(precision="bfloat16", lam=0.9, random_state=seed, tol=0, outlier_score="residual",
                            **SMALL).fit(X)
    assert est.L_.dtype == est.S_.dtype == np.float32
    assert all(p.dtype == torch.float32 for p in est.model_.parameters())
    assert all(v.dtype == torch.float32 for s in est._optim.state.values() for k, v in s.items() if k != "step")

    x = torch.from_numpy(X)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        recon = est.model_(x)
        code = est.model_.encode(x)
    assert recon.dtype == torch.bfloat16
    np.testing.assert_array_equal(est.reconstruct(X), recon.float().numpy())
    np.testing.assert_array_equal(est.transform(X), code.float().numpy())
    scores = np.linalg.norm(X - recon.float().numpy(), axis=1)
    np.testing.assert_allclose(est.decision_function(X), scores, rtol=1e-5)
    np.testing.assert_allclose(est.decision_scores_, np.linalg.norm(X - est.L_, axis=1), rtol=1e-5)

    # The same weights in float32 give a different reconstruction, by about bfloat16's rounding.
    exact = RobustAutoencoder(**{**est.get_params(), "precision": "float32"})
    exact.__dict__.update({k: v for k, v in est.__dict__.items() if k.endswith("_") and not k.startswith("_")})
    gap = np.abs(exact.reconstruct(X) - est.reconstruct(X)).max()
    assert 1e-4 < gap < 5e-2


def test_bfloat16_keeps_the_decomposition_exact_given_its_L(seed):
    """The proximal step is float32 whatever the network's precision: S = prox(X - L) exactly."""
    X, _ = planted(seed, n=120, d=20)
    est = RobustAutoencoder(precision="bfloat16", contamination=0.1, random_state=seed, **SMALL).fit(X)
    R = X.astype(np.float64) - est.L_
    norms = np.linalg.norm(R, axis=1, keepdims=True)
    expected = R * np.maximum(0, 1 - est.lam_ / norms)
    np.testing.assert_allclose(est.S_, expected, rtol=0, atol=1e-5)
    assert est.labels_.sum() == round(0.1 * len(X))


@pytest.mark.parametrize("fast", [True, False])
def test_auto_is_bfloat16_only_where_the_hardware_is_fast(monkeypatch, fast):
    monkeypatch.setattr(validation, "fast_bfloat16", lambda device: fast)
    assert resolve_precision("auto", CPU, torch.float32) == (torch.bfloat16 if fast else None)
    assert resolve_precision("auto", CPU, torch.float64) is None
    assert resolve_precision("float32", CPU, torch.float32) is None
    assert resolve_precision("bfloat16", CPU, torch.float32) == torch.bfloat16


def test_auto_fits_as_the_precision_it_resolves_to(seed, monkeypatch):
    X, _ = planted(seed, n=80, d=12)
    params = dict(lam=0.9, random_state=seed, tol=0, **SMALL)
    for fast, same_as in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(validation, "fast_bfloat16", lambda device, fast=fast: fast)
        auto = RobustAutoencoder(precision="auto", **params).fit(X)
        np.testing.assert_array_equal(auto.L_, RobustAutoencoder(precision=same_as, **params).fit(X).L_)
        # A float64 fit computes in float64 whatever the hardware.
        auto = RobustAutoencoder(precision="auto", dtype="float64", **params).fit(X)
        full = RobustAutoencoder(precision="float32", dtype="float64", **params).fit(X)
        np.testing.assert_array_equal(auto.L_, full.L_)
        np.testing.assert_array_equal(auto.decision_scores_, full.decision_scores_)
    # bfloat16 is not float32: the fit computes its network in it.
    bf16 = RobustAutoencoder(precision="bfloat16", **params).fit(X)
    assert not np.array_equal(bf16.L_, RobustAutoencoder(precision="float32", **params).fit(X).L_)


def test_bad_precisions_name_the_parameter():
    X = np.random.default_rng(0).random((10, 4))
    with pytest.raises(ValueError) as e:
        RobustAutoencoder(precision="half", **SMALL).fit(X)
    assert str(e.value) == f"precision must be one of {PRECISIONS}, got 'half'"
    with pytest.raises(ValueError) as e:
        RobustAutoencoder(precision="bfloat16", dtype="float64", **SMALL).fit(X)
    assert str(e.value) == ("precision must be \"float32\" or \"auto\" with dtype \"float64\" (a float64 fit "
                            "computes in float64), got 'bfloat16'")
    # float64 with "auto" computes in float64.
    est = RobustAutoencoder(precision="auto", dtype="float64", lam=0.9, random_state=1, **SMALL).fit(X)
    assert est.L_.dtype == np.float64


def test_the_precision_is_saved_with_the_model(tmp_path, seed):
    X, _ = planted(seed, n=60, d=12)
    est = RobustAutoencoder(precision="bfloat16", lam=0.9, random_state=seed, **SMALL).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.precision == "bfloat16"
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))


def outputs(est, X) -> list[np.ndarray]:
    return [est.decision_function(X), est.predict(X), est.transform(X), est.reconstruct(X)]


@pytest.mark.parametrize("fitted, then", [("float32", "bfloat16"), ("bfloat16", "float32"), ("auto", "bfloat16"),
                                          ("auto", "float32")])
def test_new_data_goes_through_the_network_in_the_fits_precision_until_the_next_fit(seed, fitted, then):
    X, _ = planted(seed, n=80, d=12)
    new = X[:20] * 0.9
    est = RobustAutoencoder(precision=fitted, lam=0.9, random_state=seed, **SMALL).fit(X)
    before = outputs(est, new)
    est.set_params(precision=then)
    for a, b in zip(outputs(est, new), before):
        np.testing.assert_array_equal(a, b)
    # The next fit runs in the new precision, and new data follows it.
    est.fit(X)
    amp = resolve_precision(then, CPU, torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
        recon = est.model_(torch.from_numpy(new)).float().numpy()
    np.testing.assert_array_equal(est.reconstruct(new), recon)


def test_a_model_file_keeps_the_precision_of_the_fit_not_of_a_later_set_params(tmp_path, seed):
    X, _ = planted(seed, n=60, d=12)
    est = RobustAutoencoder(precision="bfloat16", lam=0.9, random_state=seed, **SMALL).fit(X)
    before = outputs(est, X)
    est.set_params(precision="float32").save(tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["fitted"]["precision"] == "bfloat16"
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.precision == "float32"  # the parameter, for the next fit
    for a, b in zip(outputs(back, X), before):
        np.testing.assert_array_equal(a, b)
