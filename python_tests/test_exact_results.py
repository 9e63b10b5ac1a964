"""Exact results: where the code is exact, the expected value is stated exactly (the number of
flagged groups, S = prox(X - L) to rounding, labels = the non-zero groups of S, the history's
numbers recomputed from the fitted matrices, an outer iteration replayed by hand). Everything in
float64, so that "to rounding" means 1e-12."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import planted

from rda_ext import RobustAutoencoder
from rda_ext.solver import RDASolver, survival_threshold
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.engine import Engine
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.training import Network, make_optimizer

# The paper's score, the residual norm: these tests check the decomposition and the scores it gives
# (test_scoring.py checks the default score).
EXACT = dict(hidden=(8, 3), outer_iter=3, inner_epochs=3, batch_size=32, lr=1e-2, activation="elu", dtype="float64",
             outlier_score="residual")
# lam values that leave some groups of the planted data non-zero and shrink the others to zero.
LAM = {"l1": 0.15, "l21_rows": 0.9, "l21_cols": 2.0}
# The axis summed over to get a group's norm (None: every entry is a group).
AXIS = {"l1": None, "l21_rows": 1, "l21_cols": 0}
PENALTIES = list(AXIS)


def data(seed, n=160, d=24):
    X, _ = planted(seed, n=n, d=d, n_out=n // 20)
    X = X.astype(np.float64)
    X[:, 3] = 1 - X[:, 3]  # a corrupted feature, for l21_cols
    return X


def group_norms(R, penalty):
    axis = AXIS[penalty]
    return np.abs(R) if axis is None else np.linalg.norm(R, axis=axis)


def prox(R, lam, penalty):
    """The proximal operator of lam * penalty at R, written out in numpy."""
    axis = AXIS[penalty]
    if axis is None:
        return np.sign(R) * np.maximum(np.abs(R) - lam, 0)
    norms = np.linalg.norm(R, axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(norms > lam, 1 - lam / norms, 0.0)
    return R * factor


def nonzero_groups(S, penalty):
    axis = AXIS[penalty]
    return S != 0 if axis is None else (S != 0).any(axis=axis)


def penalty_value(S, penalty):
    return float(group_norms(S, penalty).sum())


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("how", ["lam", "contamination"])
def test_S_is_the_prox_of_the_residual_and_the_history_follows(seed, penalty, how):
    X = data(seed)
    kwargs = dict(lam=LAM[penalty]) if how == "lam" else dict(contamination=0.1)
    est = RobustAutoencoder(penalty=penalty, random_state=seed, tol=0, **kwargs, **EXACT).fit(X)
    R = X - est.L_
    np.testing.assert_allclose(est.S_, prox(R, est.lam_, penalty), rtol=0, atol=1e-12)
    groups = nonzero_groups(est.S_, penalty)
    if how == "lam":
        assert est.lam_ == LAM[penalty]
        assert 0 < groups.sum() < groups.size  # the test would say little otherwise
    else:
        # lam lets exactly round(0.1 * groups) survive, halfway between the last survivor's norm and the next.
        assert groups.sum() == round(0.1 * groups.size)
        norms = np.sort(group_norms(R, penalty).reshape(-1))[::-1]
        k = round(0.1 * groups.size)
        assert est.lam_ == pytest.approx((norms[k - 1] + norms[k]) / 2, rel=1e-12)

    assert est.n_iter_ == len(est.history_) == EXACT["outer_iter"]
    assert [h["iteration"] for h in est.history_] == [1, 2, 3]
    h = est.history_[-1]
    assert h["lam"] == est.lam_
    assert h["n_nonzero"] == groups.sum()
    assert h["objective"] == pytest.approx(h["recon_error"] + est.lam_ * penalty_value(est.S_, penalty), rel=1e-12)
    assert h["c1"] == pytest.approx(np.linalg.norm(X - est.L_ - est.S_) / np.linalg.norm(X), rel=1e-9, abs=1e-15)
    assert h["train_loss"] > 0 and h["seconds"] > 0

    np.testing.assert_allclose(est.decision_scores_, np.linalg.norm(R, axis=1), rtol=1e-12)
    if penalty == "l21_rows":
        assert est.threshold_ == est.lam_
        np.testing.assert_array_equal(est.labels_, groups.astype(np.int64))
    else:
        assert est.threshold_ == np.quantile(est.decision_scores_, 1 - est.contamination)
        np.testing.assert_array_equal(est.labels_, (est.decision_scores_ > est.threshold_).astype(np.int64))
        assert est.labels_.sum() == round(est.contamination * len(X))


def test_the_last_recon_error_and_c2_are_those_of_one_more_outer_iteration_by_hand(seed):
    """A fit of k + 1 outer iterations ends where a warm start of one iteration after a fit of k
    does, and its recon_error and c2 are those of the matrices that iteration saw."""
    X = data(seed)
    est = RobustAutoencoder(lam=LAM["l21_rows"], random_state=seed, tol=0, **EXACT).fit(X)
    L_prev, S_prev = est.L_.copy(), est.S_.copy()
    est.set_params(warm_start=True, outer_iter=1).fit(X)
    h = est.history_[-1]
    assert h["iteration"] == EXACT["outer_iter"] + 1 and est.n_iter_ == 1
    c2 = np.linalg.norm(L_prev + S_prev - est.L_ - est.S_) / np.linalg.norm(X)
    assert h["c2"] == pytest.approx(c2, rel=1e-9)
    # recon_error is ||L_in - AE(L_in)|| with L_in = X - S of the previous iteration and AE(L_in) = L.
    assert h["recon_error"] == pytest.approx(np.linalg.norm(X - S_prev - est.L_), rel=1e-9)


@pytest.mark.parametrize("penalty", PENALTIES)
def test_an_outer_iteration_replayed_by_hand(seed, penalty):
    """An outer iteration of the engine against the algorithm written out with plain torch: train on X - S in
    shuffled minibatches, L = AE(X - S), lam from the contamination, S = prox(X - L), the numbers."""
    g = torch.Generator().manual_seed(seed)
    n, d, batch, epochs = 50, 12, 16, 2
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    model = DeepAutoencoder((d, 6, 3), "elu", "sigmoid", True, g).double()
    twin = copy.deepcopy(model)
    solver = RDASolver(X, torch.zeros_like(X), torch.zeros_like(X), penalty=penalty, lam=None, contamination=0.1)
    network = Network(model, make_optimizer(model, "adam", 1e-2), Schedule(epochs, batch),
                      torch.Generator().manual_seed(seed + 1))
    engine = Engine(network, [solver])
    rows = [engine.iterate()[0] for _ in range(2)]

    optim = torch.optim.Adam(twin.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed + 1)
    S, LS_prev = np.zeros((n, d)), np.zeros((n, d))
    Xn = X.numpy()
    for it, row in enumerate(rows):
        L_in = X - torch.from_numpy(S)
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=order)
            losses = []
            for start in range(0, n, batch):
                b = L_in[perm[start : start + batch]]
                loss = F.mse_loss(twin(b), b)
                optim.zero_grad()
                loss.backward()
                optim.step()
                losses.append(loss.item())
        with torch.no_grad():
            L = twin(L_in).numpy()
        R = Xn - L
        norms = np.sort(group_norms(R, penalty).reshape(-1))[::-1]
        k = round(0.1 * norms.size)
        lam = (norms[k - 1] + norms[k]) / 2
        S = prox(R, lam, penalty)
        expected = dict(
            lam=lam, train_loss=np.mean(losses), recon_error=np.linalg.norm(L_in.numpy() - L),
            c1=np.linalg.norm(Xn - L - S) / np.linalg.norm(Xn), c2=np.linalg.norm(LS_prev - L - S) / np.linalg.norm(Xn),
        )
        expected["objective"] = expected["recon_error"] + lam * penalty_value(S, penalty)
        LS_prev = L + S
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-14), (it, key)
        assert row["n_nonzero"] == nonzero_groups(S, penalty).sum() == k
    np.testing.assert_allclose(solver.L.numpy(), L, rtol=0, atol=1e-12)
    np.testing.assert_allclose(solver.S.numpy(), S, rtol=0, atol=1e-12)
    np.testing.assert_allclose(solver.LS_prev.numpy(), LS_prev, rtol=0, atol=1e-12)
    np.testing.assert_allclose(solver.row_scores().numpy(), np.linalg.norm(Xn - L, axis=1), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 40])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.25, 0.5, 0.99])
def test_survival_threshold_lets_exactly_the_rounded_fraction_survive(gen, n, fraction):
    norms = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    t = survival_threshold(norms, fraction)
    survivors = min(round(fraction * n), n - 1)
    assert int((norms > t).sum()) == survivors
    top = norms.sort(descending=True).values
    if survivors:
        assert t == pytest.approx(float(top[survivors - 1] + top[survivors]) / 2, rel=1e-15)
    else:
        assert t == float(top[0])  # the largest norm: nothing survives
    # Matrices are flattened: every entry is a group.
    assert survival_threshold(norms.reshape(1, -1), fraction) == t


def test_tol_stops_at_the_first_iteration_with_c1_and_c2_below_it(seed):
    X = data(seed)
    params = dict(lam=LAM["l21_rows"], random_state=seed, **{**EXACT, "outer_iter": 6})
    full = RobustAutoencoder(tol=0, **params).fit(X)
    c = np.array([[h["c1"], h["c2"]] for h in full.history_])
    assert full.n_iter_ == 6
    # Between the largest of (c1, c2) at two iterations: the run stops at the first where both are below.
    both = c.max(axis=1)
    for tol in np.unique(both)[:-1] * (1 + 1e-9):
        expected = int(np.argmax(both < tol)) + 1
        est = RobustAutoencoder(tol=float(tol), **params).fit(X)
        assert est.n_iter_ == expected
        assert [h["c1"] for h in est.history_] == [h["c1"] for h in full.history_[:expected]]

    def stop(tol, c1_at_tol_stops=False, c2_at_tol_stops=False):
        below1 = c[:, 0] <= tol if c1_at_tol_stops else c[:, 0] < tol
        below2 = c[:, 1] <= tol if c2_at_tol_stops else c[:, 1] < tol
        return int(np.argmax(below1 & below2)) + 1 if (below1 & below2).any() else len(c)

    # A number exactly at tol is not below it: tol = the first c2 (above its c1), and tol = the first
    # c1 above its c2 that every earlier iteration's numbers exceed.
    j = next((i for i in range(1, len(c)) if c[i, 0] > c[i, 1] and (both[:i] > c[i, 0]).all()), None)
    cases = [(c[0, 1], "c2_at_tol_stops")] + ([(c[j, 0], "c1_at_tol_stops")] if j is not None else [])
    for tol, at_tol_stops in cases:
        assert stop(tol, **{at_tol_stops: True}) != stop(tol)  # a case where the two comparisons differ
        assert RobustAutoencoder(tol=float(tol), **params).fit(X).n_iter_ == stop(tol)


def test_new_data_goes_through_the_trained_network(seed):
    X = data(seed)
    est = RobustAutoencoder(lam=LAM["l21_rows"], random_state=seed, **EXACT).fit(X[:120])
    new = X[120:]
    with torch.no_grad():
        t = torch.from_numpy(new)
        code = est.model_.encode(t).numpy()
        recon = est.model_(t).numpy()
    np.testing.assert_allclose(est.transform(new), code, rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.reconstruct(new), recon, rtol=0, atol=1e-12)
    assert np.abs(recon - new).max() > 1e-3  # not the identity
    scores = est.decision_function(new)
    np.testing.assert_allclose(scores, np.linalg.norm(new - recon, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(est.predict(new), (scores > est.threshold_).astype(np.int64))
    # The training rows score as in fit: L_ is AE(X - S) there, the scores ||X - L_||.
    np.testing.assert_allclose(est.decision_scores_, np.linalg.norm(X[:120] - est.L_, axis=1), rtol=1e-12)


def test_fit_predict_and_fit_transform_are_fit_then_the_attribute(seed):
    X = data(seed)
    params = dict(contamination=0.05, random_state=seed, **EXACT)
    est = RobustAutoencoder(**params).fit(X)
    np.testing.assert_array_equal(RobustAutoencoder(**params).fit_predict(X), est.labels_)
    np.testing.assert_array_equal(RobustAutoencoder(**params).fit_transform(X), est.transform(X))
    assert est.labels_.sum() == round(0.05 * len(X))


def test_optimizer_and_tied_weights_choose_what_is_trained(seed):
    X = data(seed)
    base = RobustAutoencoder(lam=0.9, random_state=seed, **EXACT).fit(X)
    sgd = RobustAutoencoder(lam=0.9, random_state=seed, optimizer="sgd", **EXACT).fit(X)
    assert isinstance(sgd._optim, torch.optim.SGD) and sgd._optim.defaults["momentum"] == 0.9
    assert isinstance(base._optim, torch.optim.Adam)
    assert not np.allclose(sgd.L_, base.L_)
    untied = RobustAutoencoder(lam=0.9, random_state=seed, tied_weights=False, **EXACT).fit(X)
    n_tied = sum(p.numel() for p in base.model_.parameters())
    n_untied = sum(p.numel() for p in untied.model_.parameters())
    # Untied: the decoder has weight matrices of its own, as many entries as the encoder's.
    assert n_untied - n_tied == 24 * 8 + 8 * 3
    assert untied.model_.architecture[-1] is False and base.model_.architecture[-1] is True


def test_load_with_a_device_overrides_the_saved_one(tmp_path, seed):
    X = data(seed, n=60)
    est = RobustAutoencoder(lam=0.9, random_state=seed, device="cpu", **EXACT).fit(X)
    est.save(tmp_path / "m.pt")
    est.set_params(device="auto").save(tmp_path / "auto.pt")
    back = RobustAutoencoder.load(tmp_path / "auto.pt", device="cpu")
    assert back.device == "cpu" and RobustAutoencoder.load(tmp_path / "auto.pt").device == "auto"
    assert next(back.model_.parameters()).device == torch.device("cpu")
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))
    with pytest.raises(ValueError, match="device"):
        RobustAutoencoder.load(tmp_path / "m.pt", device="tpu")


def test_predict_flags_scores_strictly_above_the_threshold(seed):
    X = data(seed, n=60)
    est = RobustAutoencoder(lam=LAM["l21_rows"], random_state=seed, **EXACT).fit(X)
    scores = est.decision_function(X)
    est.threshold_ = float(np.sort(scores)[30])  # a row scores exactly the threshold: not above it
    expected = (scores > est.threshold_).astype(np.int64)
    labels = est.predict(X)
    assert labels.dtype == np.int64 and np.array_equal(labels, expected) and 0 < labels.sum() < len(X) - 1
    t = est.predict(torch.from_numpy(X))
    assert t.dtype == torch.int64 and np.array_equal(t.numpy(), expected)


def test_new_data_errors_name_X(seed):
    est = RobustAutoencoder(lam=LAM["l21_rows"], random_state=seed, **EXACT).fit(data(seed, n=40))
    for method in (est.decision_function, est.predict, est.transform, est.reconstruct):
        with pytest.raises(ValueError) as e:
            method(np.zeros(24))
        assert str(e.value).startswith("X must be a 2-D matrix (rows = instances, columns = features), got shape (24,).")
    bad = data(seed, n=40)
    bad[7, 5] = np.nan
    with pytest.raises(ValueError, match=r"^X contains NaN or infinite values$"):
        RobustAutoencoder(**EXACT).fit(bad)


@pytest.mark.parametrize("penalty", ["l1", "l21_cols"])
def test_the_quantile_threshold_flags_scores_strictly_above_it(seed, penalty):
    """9 rows, contamination 0.25: the 0.75 quantile of the scores is the 7th smallest score itself,
    which is not above the threshold: 2 rows flagged."""
    est = RobustAutoencoder(penalty=penalty, contamination=0.25, random_state=seed, **EXACT).fit(data(seed, n=9))
    assert est.threshold_ == np.sort(est.decision_scores_)[6]
    assert est.labels_.dtype == np.int64
    np.testing.assert_array_equal(est.labels_, est.decision_scores_ > est.threshold_)
    assert est.labels_.sum() == 2


def test_random_state_seeds_the_weights_then_the_batch_orders(seed):
    """The fit replayed with the engine: the initial weights drawn from random_state, then the batch
    order's seed from the same generator; a warm start draws the orders from the next seed."""
    X = data(seed, n=60)
    params = dict(EXACT, outer_iter=1)
    est = RobustAutoencoder(lam=0.9, random_state=seed, tol=0, **params).fit(X)
    init = torch.Generator().manual_seed(seed)
    model = DeepAutoencoder((24, 8, 3), "elu", "sigmoid", True, init).double()
    batch_seed = int(torch.randint(2**62, (), generator=init))
    Xt = torch.from_numpy(X)
    solver = RDASolver(Xt, torch.zeros_like(Xt), torch.zeros_like(Xt), penalty="l21_rows", lam=0.9, contamination=0.1)
    network = Network(model, make_optimizer(model, "adam", 1e-2), Schedule(3, 32),
                      torch.Generator().manual_seed(batch_seed))
    engine = Engine(network, [solver])
    engine.run(1, 0.0)
    np.testing.assert_allclose(est.L_, solver.L.numpy(), rtol=0, atol=1e-12)
    est.set_params(warm_start=True).fit(X)
    network.generator = torch.Generator().manual_seed(batch_seed + 1)
    engine.run(1, 0.0)
    np.testing.assert_allclose(est.L_, solver.L.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.S_, solver.S.numpy(), rtol=0, atol=1e-12)


def test_a_fit_without_warm_start_forgets_the_previous_one(seed):
    X = data(seed, n=60)
    params = dict(lam=0.9, random_state=seed, tol=0, **EXACT)
    est = RobustAutoencoder(**params).fit(X).fit(X)
    fresh = RobustAutoencoder(**params).fit(X)
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(est.history_) == drop(fresh.history_)
    np.testing.assert_array_equal(est.L_, fresh.L_)


def test_a_warm_start_on_other_rows_starts_S_and_the_previous_L_plus_S_from_zero(seed):
    X = data(seed)
    est = RobustAutoencoder(lam=0.9, random_state=seed, tol=0, **EXACT).fit(X[:100])
    new = X[100:]
    est.set_params(warm_start=True, outer_iter=1).fit(new)
    h = est.history_[-1]
    assert h["iteration"] == EXACT["outer_iter"] + 1 and est.S_.shape == new.shape
    # c2 measures the step from the previous L + S, which for new rows is zero.
    assert h["c2"] == pytest.approx(np.linalg.norm(est.L_ + est.S_) / np.linalg.norm(new), rel=1e-9)
    # L_in = X - S with S = 0: the recon_error is that of the new rows themselves.
    assert h["recon_error"] == pytest.approx(np.linalg.norm(new - est.L_), rel=1e-9)


def test_a_warm_start_from_a_model_saved_without_data(tmp_path, seed):
    """No L_ and S_ in the file, and no optimizer state: the warm start trains the loaded network with
    a fresh optimizer, from S = 0."""
    X = data(seed, n=60)
    RobustAutoencoder(lam=0.9, random_state=seed, tol=0, **EXACT).fit(X).save(tmp_path / "m.pt", data=False)
    est = RobustAutoencoder.load(tmp_path / "m.pt")
    assert not hasattr(est, "S_") and not hasattr(est, "L_")
    est.set_params(warm_start=True, outer_iter=1).fit(X)
    h = est.history_[-1]
    assert h["iteration"] == EXACT["outer_iter"] + 1
    assert h["c2"] == pytest.approx(np.linalg.norm(est.L_ + est.S_) / np.linalg.norm(X), rel=1e-9)


def test_a_warm_start_trains_with_the_new_lr(seed):
    X = data(seed, n=60)
    est = RobustAutoencoder(lam=0.9, random_state=seed, **EXACT).fit(X)
    est.set_params(warm_start=True, lr=0.05, outer_iter=1).fit(X)
    assert [g["lr"] for g in est._optim.param_groups] == [0.05]


@pytest.mark.parametrize("name", ["S_", "L_"])
def test_a_warm_start_from_an_edited_fitted_matrix_names_it(seed, name):
    X = data(seed, n=60)
    est = RobustAutoencoder(lam=0.9, random_state=seed, **EXACT).fit(X)
    bad = getattr(est, name).copy()
    bad[4, 4] = np.inf
    setattr(est, name, bad)
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or infinite values$"):
        est.set_params(warm_start=True).fit(X)


@pytest.mark.parametrize("name", ["S_", "L_"])
def test_a_warm_start_names_a_fitted_matrix_that_the_fitted_scaling_takes_beyond_float32(seed, name):
    """S_ and L_ go back into the network's input space by the fitted scaling; where that leaves
    float32 the error names the matrix and the scaling, and the fit is kept."""
    X = (np.random.default_rng(seed).random((40, 3)) * 1e-30).astype(np.float32)
    est = RobustAutoencoder(lam=0.9, random_state=seed, preprocessing="minmax", **{**EXACT, "dtype": None}).fit(X)
    big = np.full_like(X, 1e10)
    setattr(est, name, big)
    kept = {k: v.clone() for k, v in est.model_.state_dict().items()}
    with pytest.raises(ValueError) as e:
        est.set_params(warm_start=True).fit(X)
    center = 0.0 if name == "S_" else float(est.center_[0])
    assert str(e.value) == (
        f"column 0 of {name} is not finite in float32 once scaled by the fitted scaling "
        f'(preprocessing="minmax") (center {center:.6g}, scale {float(est.scale_[0]):.6g}; the column spans '
        '[1e+10, 1e+10]): divide the column by a constant, or fit in float64 (dtype="float64")')
    assert getattr(est, name) is big and all(torch.equal(v, kept[k]) for k, v in est.model_.state_dict().items())


def test_a_warm_start_of_a_float32_model_on_float64_data(seed):
    """L_ and S_ keep X's dtype (float64) while the network computes in float32: the warm start
    casts them back, and c2 still measures the step from the previous L + S."""
    X = data(seed, n=60)
    params = {**EXACT, "dtype": None}
    est = RobustAutoencoder(lam=0.9, random_state=seed, tol=0, **params).fit(X)
    assert est.L_.dtype == np.float64 and next(est.model_.parameters()).dtype == torch.float32
    L_prev, S_prev = est.L_.copy(), est.S_.copy()
    est.set_params(warm_start=True, outer_iter=1).fit(X)
    c2 = np.linalg.norm(L_prev + S_prev - est.L_ - est.S_) / np.linalg.norm(X)
    assert est.history_[-1]["c2"] == pytest.approx(c2, rel=1e-4)


def test_verbose_shows_each_outer_iteration_and_its_numbers(seed, capsys):
    X = data(seed, n=60)
    est = RobustAutoencoder(lam=0.9, random_state=seed, tol=0, verbose=True, **EXACT).fit(X)
    last = capsys.readouterr().err.split("\r")[-1]
    h = est.history_[-1]
    rate = re.escape(f"{60 * EXACT['inner_epochs'] / h['seconds']:.3g}")  # rows x epochs per second
    assert re.fullmatch(
        rf"RDA outer iterations: 100%\|\S+\| 3/3 \[[^,]+, +[0-9.]+(it/s|s/it), c1={h['c1']:.2e}, c2={h['c2']:.2e}, "
        rf"lam={h['lam']:.4g}, nonzero={h['n_nonzero']}, rows/s={rate}\]\s*",
        last), last
    capsys.readouterr()
    RobustAutoencoder(lam=0.9, random_state=seed, **EXACT).fit(X)
    assert capsys.readouterr().err == ""
