import copy
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICES, requires_cuda
from helpers import planted

import rda_ext
from rda_ext import RobustAutoencoder, lambda_path
from rda_ext.experiments.metrics import roc_auc
from rda_ext.solver import HISTORY_KEYS

SMALL = dict(hidden=(16, 4), outer_iter=6, inner_epochs=10, batch_size=16, lr=1e-2, activation="elu")


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


def test_save_load_round_trip(tmp_path, seed):
    X, _ = planted(seed, n=120, n_out=6)
    est = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.get_params() == est.get_params()
    assert np.array_equal(back.decision_function(X), est.decision_function(X))
    assert np.array_equal(back.L_, est.L_) and back.history_ == est.history_
    assert back.threshold_ == est.threshold_ and np.array_equal(back.labels_, est.labels_)
    est.save(tmp_path / "small.pt", data=False)
    assert not hasattr(RobustAutoencoder.load(tmp_path / "small.pt"), "L_")


def test_load_refuses_other_files(tmp_path):
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an rda_ext model"):
        RobustAutoencoder.load(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable rda_ext model"):
        RobustAutoencoder.load(tmp_path / "junk.pt")


def test_load_runs_no_code_from_the_file(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "rda_ext.RobustAutoencoder/1", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable rda_ext model"):
        RobustAutoencoder.load(tmp_path / "evil.pt")


def test_failed_save_keeps_the_old_file(tmp_path, seed, monkeypatch):
    X, _ = planted(seed, n=60, n_out=3)
    est = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    target = tmp_path / "m.pt"
    target.write_bytes(b"old")

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        est.save(target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_warm_start_continues(seed):
    X, _ = planted(seed, n=100, n_out=5)
    est = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    weights = est.model_.enc_weight[0].detach().clone()
    est.set_params(warm_start=True, outer_iter=2).fit(X)
    assert len(est.history_) == SMALL["outer_iter"] + 2 and est.n_iter_ == 2
    assert [h["iteration"] for h in est.history_] == list(range(1, SMALL["outer_iter"] + 3))
    # c2 of the first warm iteration measures the change from where the previous fit ended.
    assert est.history_[0]["c2"] > 0.5 > est.history_[SMALL["outer_iter"]]["c2"]
    assert not torch.equal(weights, est.model_.enc_weight[0])


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



# ---------------------------------------------------------------- what a warm start continues, and what not
WARM = dict(hidden=(8, 3), outer_iter=2, inner_epochs=2, batch_size=16, lr=1e-2, device="cpu", precision="float32",
            lam=0.5, penalty="l1")


@pytest.mark.parametrize("fitted, then", [("auto", "minmax"), ("minmax", "standardize"), ("none", "auto"),
                                          ("standardize", "none")])
def test_a_warm_start_refuses_another_preprocessing_and_keeps_the_fit(seed, fitted, then):
    X, _ = planted(seed, n=60, d=8)
    X = X * 5 - 1  # outside [0, 1]: "auto" scales it
    est = RobustAutoencoder(preprocessing=fitted, random_state=seed, **WARM).fit(X)
    center, scores = est.center_, est.decision_scores_.copy()
    est.set_params(warm_start=True, preprocessing=then)
    with pytest.raises(ValueError) as e:
        est.fit(X)
    assert str(e.value) == (f'warm_start continues the fitted network, which was trained on X scaled by '
                            f'preprocessing="{fitted}" (center_, scale_ stay with it), so preprocessing="{then}" '
                            f'cannot apply: set preprocessing="{fitted}", or refit with warm_start=False')
    assert est.center_ is center and np.array_equal(est.decision_scores_, scores)
    # Even with a network of another shape, which would start afresh: the rule has no exception.
    with pytest.raises(ValueError, match="^warm_start continues the fitted network"):
        est.set_params(hidden=(5,)).fit(X)
    est.set_params(warm_start=False).fit(X)
    assert est._fit_preprocessing == then
    est.set_params(warm_start=True, outer_iter=1).fit(X)  # the preprocessing it was fitted with
    assert len(est.history_) == 3


@pytest.mark.parametrize("change", [dict(hidden=(6, 3)), dict(activation="tanh"), dict(tied_weights=False),
                                    dict(output_activation="linear"), "columns"])
def test_a_warm_start_of_another_network_shape_is_a_fresh_fit(seed, change):
    X, _ = planted(seed, n=60, d=8)
    est = RobustAutoencoder(random_state=seed, warm_start=True, **WARM).fit(X)
    if change == "columns":
        change, X = {}, X[:, :6]
    est.set_params(**change).fit(X)
    cold = RobustAutoencoder(random_state=seed, **{**WARM, **change}).fit(X)
    assert est.n_iter_ == len(est.history_) == WARM["outer_iter"]
    np.testing.assert_array_equal(est.decision_scores_, cold.decision_scores_)


def test_a_warm_start_continues_the_batch_order_whatever_random_state_says(seed):
    X, _ = planted(seed, n=60, d=8)
    a = RobustAutoencoder(random_state=seed, **WARM).fit(X)
    b = RobustAutoencoder(random_state=seed, **WARM).fit(X)
    a.set_params(warm_start=True).fit(X)
    b.set_params(warm_start=True, random_state=seed + 1).fit(X)
    np.testing.assert_array_equal(a.L_, b.L_)


def test_a_warm_start_on_other_rows_of_the_same_shape_starts_s_from_zeros(seed):
    """With inner_epochs=0 the network stays as it is and L = AE(X - S) for the S a warm start
    begins with: S_ of the previous fit on the same X, zeros on the rows in another order."""
    X, _ = planted(seed, n=60, d=8)
    kw = dict(random_state=seed, preprocessing="none", **WARM)
    fitted = RobustAutoencoder(**kw).fit(X)
    assert np.abs(fitted.S_).sum() > 0
    perm = np.random.default_rng(seed).permutation(len(X))
    Xp = X[perm]
    warm = dict(warm_start=True, inner_epochs=0, outer_iter=1)

    other = copy.deepcopy(fitted).set_params(**warm).fit(Xp)
    np.testing.assert_allclose(other.L_, fitted.reconstruct(Xp), rtol=1e-6, atol=1e-7)
    # c2 of its first iteration is measured from zeros, not from the previous fit's L + S
    assert other.history_[-1]["c2"] == pytest.approx(np.linalg.norm(other.L_ + other.S_) / np.linalg.norm(Xp),
                                                     rel=1e-5)

    same = copy.deepcopy(fitted).set_params(**warm).fit(X)
    np.testing.assert_allclose(same.L_, fitted.reconstruct(X - fitted.S_), rtol=1e-6, atol=1e-7)
    prev = fitted.L_ + fitted.S_
    assert same.history_[-1]["c2"] == pytest.approx(
        np.linalg.norm(prev - same.L_ - same.S_) / np.linalg.norm(X), rel=1e-5)
    # The same values in another dtype are another input to the network.
    other_dtype = copy.deepcopy(fitted).set_params(dtype="float64", **warm).fit(X)
    np.testing.assert_allclose(other_dtype.L_, fitted.reconstruct(X), rtol=1e-5, atol=1e-6)
