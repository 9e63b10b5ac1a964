"""The RobustAutoencoder estimator on planted outliers: the constructor only stores its parameters
and fit checks them and the data; a fit finds the outliers, with labels, L_ and S_ as each penalty
defines them, of the input's types and the same for the same seed; the fitted model scores new data;
lambda_path fits a decreasing sequence of lam; errors, warnings and progress are clear."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICES, requires_cuda
from helpers import SMALL, planted

import rda_ext
from rda_ext import RobustAutoencoder, lambda_path
from rda_ext.experiments.metrics import roc_auc
from rda_ext.solver import HISTORY_KEYS


def test_constructor_only_stores_parameters():
    est = RobustAutoencoder(hidden=(5,), lam=-3, penalty="nope")  # checked at fit, not here
    assert est.get_params()["lam"] == -3 and est.hidden == (5,)
    assert not hasattr(est, "model_")
    assert "lam=-3" in repr(est)


def test_scikit_learn_clone_and_set_params():
    base = pytest.importorskip("sklearn.base")
    est = RobustAutoencoder(hidden=(7, 3), contamination=0.2)
    twin = base.clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert est.set_params(lam=0.5) is est and est.lam == 0.5
    with pytest.raises(ValueError, match="unknown parameter 'lamda'"):
        est.set_params(lamda=1)


@pytest.mark.parametrize("device", DEVICES)
def test_finds_planted_outliers(seed, device):
    X, is_out = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, device=device, **SMALL).fit(X)
    assert roc_auc(is_out, est.decision_scores_) > 0.95
    assert len(est.history_) == est.n_iter_ <= SMALL["outer_iter"]
    assert set(est.history_[0]) == set(HISTORY_KEYS)


def test_contamination_flags_the_expected_fraction(seed):
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.1, random_state=seed, **SMALL).fit(X)
    assert est.labels_.sum() == round(0.1 * len(X))
    assert est.history_[-1]["n_nonzero"] == (est.S_ != 0).any(axis=1).sum() == est.labels_.sum()


def test_l21_rows_labels_are_the_nonzero_rows_of_S(seed):
    """With the paper's score."""
    X, _ = planted(seed)
    est = RobustAutoencoder(lam=0.8, random_state=seed, outlier_score="residual", **SMALL).fit(X)
    assert est.threshold_ == est.lam_ == 0.8
    nonzero = np.abs(est.S_).sum(1) > 0
    assert np.array_equal(est.labels_, nonzero.astype(int))
    assert np.allclose(est.decision_scores_, np.linalg.norm(X - est.L_, axis=1), rtol=1e-5, atol=1e-6)
    # S is the l21_rows prox of X - L: the flagged rows shrunk by lam, the others zero.
    R = X - est.L_
    norms = np.linalg.norm(R, axis=1, keepdims=True)
    expected = R * np.maximum(0, 1 - 0.8 / norms)
    np.testing.assert_allclose(est.S_, expected, atol=1e-5)


def test_l1_and_l21_cols(seed):
    X, _ = planted(seed)
    X[:, 5] = 1.0 - X[:, 5]  # a corrupted feature for l21_cols
    for penalty, lam in (("l1", 0.2), ("l21_cols", 2.0)):
        est = RobustAutoencoder(penalty=penalty, lam=lam, contamination=0.05, random_state=seed, **SMALL).fit(X)
        assert est.S_.shape == X.shape and np.isfinite(est.S_).all()
        R = X - est.L_
        if penalty == "l1":
            np.testing.assert_allclose(est.S_, np.sign(R) * np.maximum(np.abs(R) - lam, 0), atol=1e-6)
        else:
            col_norms = np.linalg.norm(R, axis=0)
            assert np.array_equal(np.abs(est.S_).sum(0) > 0, col_norms > lam)
        assert est.threshold_ == pytest.approx(np.quantile(est.decision_scores_, 0.95))
        assert np.array_equal(est.labels_, (est.decision_scores_ > est.threshold_).astype(int))


def test_same_seed_same_result_on_cpu(seed):
    X, _ = planted(seed)
    a = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    b = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    assert np.array_equal(a.L_, b.L_) and np.array_equal(a.S_, b.S_)
    assert np.array_equal(a.decision_scores_, b.decision_scores_)
    c = RobustAutoencoder(random_state=seed + 1, **SMALL).fit(X)
    assert not np.array_equal(a.L_, c.L_)


def test_new_data_scoring(seed):
    X, is_out = planted(seed, n=400, n_out=20)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, **SMALL).fit(X[:300])
    scores = est.decision_function(X[300:])
    assert scores.shape == (100,) and scores.dtype == np.float64
    assert roc_auc(is_out[300:], scores) > 0.9
    # A tensor's scores come in the fit's dtype (float32 here), whatever the tensor's own.
    for dtype in (torch.float32, torch.float64):
        tensor_scores = est.decision_function(torch.from_numpy(X[300:]).to(dtype))
        assert tensor_scores.dtype == torch.float32
        np.testing.assert_allclose(tensor_scores.numpy(), scores, rtol=1e-6)
    assert np.array_equal(est.predict(X[300:]), (scores > est.threshold_).astype(int))
    code = est.transform(X[300:])
    assert code.shape == (100, SMALL["hidden"][-1]) and code.dtype == np.float32
    assert est.reconstruct(X[300:]).shape == (100, X.shape[1])
    with pytest.raises(ValueError, match="X has 29 features, but RobustAutoencoder is expecting 30 features as input"):
        est.decision_function(X[:, :29])


def test_types_follow_the_input(seed):
    X, _ = planted(seed, n=100, n_out=5)
    est = RobustAutoencoder(random_state=seed, **SMALL).fit(X.astype(np.float64))
    assert est.L_.dtype == np.float64 and isinstance(est.S_, np.ndarray)
    assert est.model_.enc_weight[0].dtype == torch.float32  # float64 input computes in float32
    t = torch.from_numpy(X)
    est = RobustAutoencoder(random_state=seed, dtype="float64", **SMALL).fit(t)
    assert isinstance(est.L_, torch.Tensor) and est.L_.dtype == torch.float32
    assert est.model_.enc_weight[0].dtype == torch.float64
    assert isinstance(est.decision_function(t), torch.Tensor)
    assert est.predict(t).dtype == torch.int64


def test_lambda_path(seed):
    X, is_out = planted(seed)
    path = lambda_path(X, [0.5, 2.0, 1.0], random_state=seed, outlier_score="residual", **SMALL)
    assert [r["lam"] for r in path] == [2.0, 1.0, 0.5]
    flagged = [r["n_flagged"] for r in path]
    assert flagged == sorted(flagged) and flagged[-1] > flagged[0]
    assert [len(r["history"]) for r in path] == [SMALL["outer_iter"], 1, 1]
    assert all(r["n_nonzero"] == r["n_flagged"] for r in path)
    assert all(np.array_equal(r["nonzero_groups"], r["labels"].astype(bool)) for r in path)
    with pytest.raises(ValueError, match="lams"):
        lambda_path(X, [], **SMALL)


def test_fixed_autoencoder_iterations(seed):
    """inner_epochs=0 with a warm start keeps the network and only alternates L = AE(X - S)
    with the proximal step (what lambda_path(warm_inner_epochs=0) does)."""
    X, _ = planted(seed, n=100, n_out=5)
    est = RobustAutoencoder(lam=1.0, random_state=seed, **SMALL).fit(X)
    weights = [p.detach().clone() for p in est.model_.parameters()]
    est.set_params(warm_start=True, inner_epochs=0, outer_iter=3, lam=0.5).fit(X)
    assert all(torch.equal(a, b) for a, b in zip(weights, est.model_.parameters()))
    assert est.n_iter_ == 3 and est.lam_ == 0.5
    path = lambda_path(X, [1.0, 0.5], warm_inner_epochs=0, random_state=seed, **SMALL)
    assert path[1]["n_flagged"] >= path[0]["n_flagged"]


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(lam=-1.0), "lam must be None or a finite number >= 0"),
        (dict(lam=math.nan), "lam must be"),
        (dict(contamination=0.7), "contamination must be a number in"),
        (dict(penalty="l2"), "penalty must be one of"),
        (dict(hidden=()), "hidden must be"),
        (dict(hidden=(10, 0)), "hidden must be"),
        (dict(outer_iter=0), "outer_iter must be a positive integer"),
        (dict(inner_epochs=-1), 'inner_epochs must be "auto" or an integer >= 0'),
        (dict(batch_size=2.5), "batch_size must be a positive integer"),
        (dict(lr=0), "lr must be"),
        (dict(optimizer="lbfgs"), "optimizer must be one of"),
        (dict(activation="swish"), "activation must be one of"),
        (dict(dtype="float16"), "dtype must be"),
        (dict(device="tpu"), "device must be"),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        RobustAutoencoder(**params).fit(np.random.rand(10, 4))


def test_bad_data():
    est = RobustAutoencoder(**SMALL)
    X = np.random.rand(20, 5)
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        est.fit(X)
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        est.fit(torch.full((4, 4), math.inf))
    with pytest.raises(ValueError, match="X must be a 2-D matrix"):
        est.fit(np.random.rand(10))
    with pytest.raises(ValueError, match=r"X has 0 sample\(s\) \(shape=\(0, 5\)\)"):
        est.fit(np.zeros((0, 5)))
    with pytest.raises(ValueError, match=r"X has 0 feature\(s\) \(shape=\(7, 0\)\)"):
        est.fit(np.zeros((7, 0)))
    with pytest.raises(ValueError, match="X must be numeric"):
        est.fit(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"X has dtype float\d+, which torch cannot hold"):
        est.fit(np.ones((4, 3), dtype=np.longdouble))
    X_big_endian = np.random.rand(30, 5).astype(">f8")
    np.testing.assert_array_equal(
        RobustAutoencoder(**dict(SMALL, outer_iter=1), random_state=0, device="cpu").fit(X_big_endian).decision_scores_,
        RobustAutoencoder(**dict(SMALL, outer_iter=1), random_state=0, device="cpu").fit(X_big_endian.astype("<f8")).decision_scores_,
    )
    with pytest.raises(ValueError, match="Complex data not supported"):
        est.fit(np.ones((4, 3), dtype=complex))
    with pytest.raises(TypeError, match="sparse matrix, which is not supported"):
        est.fit(pytest.importorskip("scipy.sparse").eye(5, format="csr"))
    with pytest.raises(TypeError, match="must be a string or a real number"):
        est.fit(np.array([[0.5, {"a": 1}]], dtype=object))


@pytest.mark.parametrize("method", ["predict", "decision_function", "transform", "reconstruct"])
def test_fitted_only_methods_raise_not_fitted_error(method):
    est = RobustAutoencoder(**SMALL)
    with pytest.raises(rda_ext.NotFittedError, match="not fitted yet"):
        getattr(est, method)(np.random.rand(3, 5))
    with pytest.raises(rda_ext.NotFittedError):
        est.save("never-written.pt")
    sklearn_exceptions = pytest.importorskip("sklearn.exceptions")
    assert rda_ext.NotFittedError is sklearn_exceptions.NotFittedError


def test_object_arrays_of_numbers_fit_like_floats(seed):
    X, _ = planted(seed, n=60, d=6)
    params = dict(SMALL, outer_iter=2, random_state=seed, device="cpu")
    a = RobustAutoencoder(**params).fit(X.astype(object))
    b = RobustAutoencoder(**params).fit(X.astype(np.float64))
    np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)


def test_sigmoid_output_warns_about_unscaled_data():
    for preprocessing in ("none", "standardize"):  # standardised data lies outside [0, 1] too
        with pytest.warns(UserWarning, match="scale X or use output_activation='linear'"):
            RobustAutoencoder(output_activation="sigmoid", preprocessing=preprocessing,
                              **{**SMALL, "outer_iter": 1}).fit(np.random.rand(20, 5) * 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RobustAutoencoder(output_activation="linear", preprocessing="none",
                          **{**SMALL, "outer_iter": 1}).fit(np.random.rand(20, 5) * 255)
        # The defaults map such data to [0, 1], where the sigmoid output suits it.
        est = RobustAutoencoder(**{**SMALL, "outer_iter": 1}).fit(np.random.rand(20, 5) * 255)
    assert est.model_.architecture[2] == "sigmoid" and est.center_ is not None


def test_verbose_shows_progress(capsys):
    RobustAutoencoder(verbose=True, **{**SMALL, "outer_iter": 2}).fit(np.random.rand(30, 6))
    err = capsys.readouterr().err
    assert "RDA outer iterations" in err and "2/2" in err
    RobustAutoencoder(**{**SMALL, "outer_iter": 2}).fit(np.random.rand(30, 6))
    assert capsys.readouterr().err == ""


def test_no_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        RobustAutoencoder(device="cuda", **SMALL).fit(np.random.rand(10, 4))


@requires_cuda
def test_at_most_one_host_sync_per_outer_iteration(seed):
    X, _ = planted(seed)
    Xt = torch.from_numpy(X).cuda()
    est = RobustAutoencoder(lam=0.8, device="cuda", random_state=seed, **SMALL)
    est.fit(Xt)  # warm-up: lazy CUDA initialisation synchronises
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(Xt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # One per outer iteration (its numbers read at once), the input checks (finite, range) and the
    # final scores: the lower bound shows that the detector sees the syncs at all.
    assert est.n_iter_ <= len(syncs) <= est.n_iter_ + 4, [str(w.message) for w in syncs[:8]]

