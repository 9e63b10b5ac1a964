"""The "residual+code" outlier score (rda_ext.estimator.scoring), against the same numbers computed
in numpy from its definition, in chunks and whole, in the estimator, on new data and after a save.
(Its local term, which the default adds: test_neighbours.py.)"""

import numpy as np
import pytest
import torch
from conftest import DEVICES
from helpers import planted
from helpers import SMALL

from rda_ext import RobustAutoencoder
from rda_ext.estimator import scoring
from rda_ext.experiments.metrics import roc_auc


def by_definition(R, Z, reference, R_new=None, Z_new=None):
    """The score of the module docstring, in numpy float64."""
    rms = np.sqrt((R[reference] ** 2).mean(0))
    sigma = rms + scoring.RESIDUAL_FLOOR * rms.mean()
    mu = Z[reference].mean(0)
    precision = np.linalg.pinv(np.cov(Z[reference], rowvar=False, bias=True), hermitian=True)
    R = R if R_new is None else R_new
    dz = (Z if Z_new is None else Z_new) - mu
    return ((R / sigma) ** 2).mean(1) + np.einsum("ij,jk,ik->i", dz, precision, dz) / Z.shape[1], (sigma, mu, precision)


@pytest.mark.parametrize("chunk", [7, 65536])
def test_statistics_and_scores_match_the_definition_in_float64(seed, chunk, monkeypatch):
    monkeypatch.setattr(scoring, "CHUNK_ROWS", chunk)
    gen = torch.Generator().manual_seed(seed)
    n, d, k = 53, 11, 3
    X = torch.rand(n, d, generator=gen, dtype=torch.float64)
    L = torch.rand(n, d, generator=gen, dtype=torch.float64)
    W = torch.randn(d, k, generator=gen, dtype=torch.float64)
    reference = torch.rand(n, generator=gen) < 0.8
    Z = torch.sigmoid(X @ W)

    stats = scoring.fit_statistics(X, L, Z, reference)
    scores = scoring.row_scores(X, L, Z, stats)
    want, (sigma, mu, precision) = by_definition((X - L).numpy(), Z.numpy(), reference.numpy())
    for got, ref in zip(stats, (sigma, mu, precision)):
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-9)
    residual, code = scoring.score_terms(X, L, Z, stats)
    np.testing.assert_allclose((residual + code).numpy(), want, rtol=1e-12)
    # On the reference rows the code term averages 1 and the residual term a little less (the floor).
    assert residual[reference].mean() < 1 and code[reference].mean() == pytest.approx(1, rel=1e-9)


def test_a_feature_that_never_varies_is_floored_and_a_constant_code_adds_nothing():
    X = torch.zeros(20, 4, dtype=torch.float64)
    X[:, 0] = torch.linspace(0, 1, 20)
    L = torch.zeros_like(X)  # residual: column 0 only
    stats = scoring.fit_statistics(X, L, torch.ones(20, 2, dtype=X.dtype), torch.ones(20, dtype=torch.bool))
    sigma, mu, precision = stats
    rms = X[:, 0].square().mean().sqrt()
    floor = scoring.RESIDUAL_FLOOR * rms / 4  # of the mean root mean square over the 4 columns
    torch.testing.assert_close(sigma, torch.stack([rms + floor, floor, floor, floor]))
    assert torch.all(precision == 0) and torch.equal(mu, torch.ones(2, dtype=torch.float64))
    new = torch.zeros(1, 4, dtype=torch.float64)
    new[0, 3] = 0.5  # a stray value where the data never varies counts, but at the floored scale
    score = scoring.row_scores(new, torch.zeros_like(new), torch.ones(1, 2, dtype=new.dtype), stats)
    assert torch.isfinite(score).all() and score.item() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_a_fit_scores_by_residual_and_code(seed, device):
    X, is_out = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, device=device, outlier_score="residual+code",
                            **SMALL).fit(X)
    assert est.neighbours_ is None and est.term_spread_ is None
    R, Z = X.astype(np.float64) - est.L_, est.transform(X).astype(np.float64)
    residual = np.linalg.norm(R, axis=1)
    reference = residual <= np.quantile(residual, 0.95)
    want, (sigma, mu, precision) = by_definition(R, Z, reference)
    np.testing.assert_allclose(est.residual_scale_, sigma, rtol=1e-4)
    np.testing.assert_allclose(est.code_center_, mu, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(est.decision_scores_, want, rtol=1e-3, atol=1e-4)
    assert est.threshold_ == np.quantile(est.decision_scores_, 0.95)
    np.testing.assert_array_equal(est.labels_, (est.decision_scores_ > est.threshold_).astype(np.int64))
    assert est.labels_.sum() == round(0.05 * len(X))
    assert roc_auc(is_out, est.decision_scores_) > 0.95
    # New rows: the residual is X - AE(X), the statistics those of the fit.
    new, _ = planted(seed + 1, n=40)
    R_new = new.astype(np.float64) - est.reconstruct(new)
    got = est.decision_function(new)
    want_new, _ = by_definition(R, Z, reference, R_new, est.transform(new).astype(np.float64))
    np.testing.assert_allclose(got, want_new, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(est.predict(new), (got > est.threshold_).astype(np.int64))
    tensor = est.decision_function(torch.from_numpy(new).to(device))
    assert tensor.dtype == torch.float32 and tensor.device.type == torch.device(device).type


def test_with_s_at_zero_the_training_scores_are_those_of_new_rows_in_float64(seed):
    """lam above every residual norm leaves S at zero, so L = AE(X): fit and decision_function agree."""
    X = planted(seed)[0].astype(np.float64)  # L_ comes back in X's dtype
    est = RobustAutoencoder(lam=1e6, random_state=seed, dtype="float64", outlier_score="residual+code",
                            **SMALL).fit(X)
    assert not est.S_.any()
    np.testing.assert_allclose(est.decision_function(X), est.decision_scores_, rtol=1e-12)
    R, Z = X - est.L_, est.transform(X)
    residual = np.linalg.norm(R, axis=1)
    want, _ = by_definition(R, Z, residual <= np.quantile(residual, 1 - est.contamination))
    np.testing.assert_allclose(est.decision_scores_, want, rtol=1e-9)


def test_score_residual_is_the_papers_detector(seed):
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, outlier_score="residual", **SMALL).fit(X)
    assert est.residual_scale_ is None and est.code_center_ is None and est.code_precision_ is None
    np.testing.assert_allclose(est.decision_scores_, np.linalg.norm(X - est.L_, axis=1), rtol=1e-5)
    assert est.threshold_ == est.lam_
    np.testing.assert_array_equal(est.labels_, (np.abs(est.S_).sum(1) > 0).astype(np.int64))
    # The same decomposition as the default fit: only the scoring differs.
    default = RobustAutoencoder(contamination=0.05, random_state=seed, **SMALL).fit(X)
    np.testing.assert_array_equal(default.S_, est.S_)


def test_a_saved_model_scores_new_rows_alike(seed, tmp_path):
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, **SMALL).fit(X)
    est.save(tmp_path / "m.pt", data=False)
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.outlier_score == "residual+code+knn"
    for name in ("code_precision_", "neighbours_", "term_spread_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(est, name))
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))


@pytest.mark.parametrize("key, value, message", [
    ("code_precision_", torch.zeros(3, 3, dtype=torch.float64), "code_precision_ is not a finite float64 tensor"),
    ("code_center_", torch.full((4,), float("nan"), dtype=torch.float64), "code_center_ is not a finite"),
    ("code_center_", torch.zeros(4, dtype=torch.float32), "code_center_ is not a finite float64"),
    ("residual_scale_", None, "residual_scale_ is not a finite float64 tensor"),
    ("residual_scale_", torch.zeros(30, dtype=torch.float64), "residual_scale_ has entries <= 0"),
])
def test_a_model_file_with_broken_statistics_is_refused(seed, tmp_path, key, value, message):
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, **SMALL).fit(X)
    est.save(tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    state["fitted"][key] = value
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        RobustAutoencoder.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("fitted, then", [("residual+code", "residual"), ("residual", "residual+code"),
                                          ("residual+code+knn", "residual+code"), ("residual+code", "residual+code+knn"),
                                          ("knn", "residual+code+knn"), ("residual+code+knn", "knn"), ("knn", "residual")])
def test_the_fit_not_the_parameter_decides_how_a_saved_model_scores(seed, tmp_path, fitted, then):
    """set_params after fit changes the next fit, not this one: the model file keeps its scoring."""
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, outlier_score=fitted, **SMALL).fit(X)
    scores = est.decision_function(X)
    est.set_params(outlier_score=then)
    np.testing.assert_array_equal(est.decision_function(X), scores)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.outlier_score == then
    np.testing.assert_array_equal(back.decision_function(X), scores)


def test_a_checkpoint_resumes_under_another_score(seed, tmp_path):
    """The score is computed after the last iteration: a resumed fit may change it."""
    X, _ = planted(seed)
    params = dict(contamination=0.05, random_state=seed, checkpoint=tmp_path / "ck", **SMALL)
    whole = RobustAutoencoder(**{**params, "checkpoint": None}).fit(X)
    RobustAutoencoder(**{**params, "outer_iter": 3}).fit(X)
    resumed = RobustAutoencoder(**params, outlier_score="residual").fit(X)
    np.testing.assert_array_equal(resumed.S_, whole.S_)
    assert resumed.residual_scale_ is None and resumed.threshold_ == resumed.lam_
    np.testing.assert_allclose(resumed.decision_scores_, np.linalg.norm(X - resumed.L_, axis=1), rtol=1e-5)


def test_an_unknown_score_is_refused_by_name():
    with pytest.raises(ValueError, match="outlier_score must be one of"):
        RobustAutoencoder(outlier_score="cosine").fit(np.random.default_rng(0).random((20, 4)))
