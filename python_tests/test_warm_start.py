"""A second fit of the same estimator: warm starts, and what a failed fit leaves.

- A warm start goes on from the fitted network and the batch order (whatever random_state says),
  with S from the previous fit's S_ on the same rows and from zeros on other rows; after a dtype,
  device or optimizer change it trains the network that model_ reports.
- A warm start refuses another preprocessing than the one the network was trained with and keeps
  the fit; a network of another shape (layers, activations, tied weights, columns) is a fresh fit,
  the same as a cold one.
- A fit that raises mid-loop leaves no fitted state if it was the first, else the previous fit
  whole, and the next warm start goes on from that fit as if the failed one never was."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from helpers import SMALL, TINY, TINY_X as X, assert_same_model, planted

import rda_ext.solver.training
from rda_ext import RobustAutoencoder

# The network of the warm starts on planted data (TINY is the tiny fit on the 48 rows of X).
WARM = dict(hidden=(8, 3), outer_iter=2, inner_epochs=2, batch_size=16, lr=1e-2, device="cpu", precision="float32",
            lam=0.5, penalty="l1")


# ---------------------------------------------------------------- what a warm start continues, and what not
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


# ---------------------------------------------------------------- after another dtype, device, optimizer or network
def optimizer_trains_model(est: RobustAutoencoder) -> bool:
    """The optimizer kept for the next warm start updates exactly model_'s parameters."""
    in_optim = [p for group in est._optim.param_groups for p in group["params"]]
    return len(in_optim) == len(list(est.model_.parameters())) and all(
        a is b for a, b in zip(in_optim, est.model_.parameters())
    )


def weights(est: RobustAutoencoder) -> list[torch.Tensor]:
    return [p.detach().clone() for p in est.model_.parameters()]


def changed(before: list[torch.Tensor], est: RobustAutoencoder) -> bool:
    """Every parameter tensor of model_ differs from ``before`` (compared in float64)."""
    after = list(est.model_.parameters())
    return all(not torch.equal(a.double().cpu(), b.detach().double().cpu()) for a, b in zip(before, after))


@pytest.mark.parametrize("first, then", [(None, "float64"), ("float64", "float32"), ("float32", "float32")])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_warm_start_after_a_dtype_change(first, then, optimizer):
    est = RobustAutoencoder(**TINY, dtype=first, optimizer=optimizer).fit(X)
    before = weights(est)
    est.set_params(warm_start=True, dtype=then).fit(X)
    want = torch.float64 if then == "float64" else torch.float32
    assert all(p.dtype == want for p in est.model_.parameters())
    assert changed(before, est) and optimizer_trains_model(est)
    state = [t for s in est._optim.state.values() for k, t in s.items() if k != "step" and torch.is_tensor(t)]
    assert state and all(t.dtype == want for t in state)
    if optimizer == "adam":  # Adam's moments go on from the previous fit, cast to the new dtype
        steps = TINY["outer_iter"] * TINY["inner_epochs"] * math.ceil(len(X) / TINY["batch_size"])
        assert all(int(s["step"]) == 2 * steps for s in est._optim.state.values())
    # and once more in the same dtype, now with the optimizer's state of the previous fit
    before = weights(est)
    est.fit(X)
    assert changed(before, est) and optimizer_trains_model(est)


@requires_cuda
def test_warm_start_after_a_device_change():
    est = RobustAutoencoder(**TINY).fit(X)
    for device in ("cuda", "cpu", "cuda"):
        before = weights(est)
        est.set_params(warm_start=True, device=device).fit(X)
        assert next(est.model_.parameters()).device.type == device
        assert changed(before, est) and optimizer_trains_model(est)


def test_warm_start_after_an_optimizer_change():
    est = RobustAutoencoder(**TINY, optimizer="adam").fit(X)
    before = weights(est)
    est.set_params(warm_start=True, optimizer="sgd", lr=0.1).fit(X)
    assert isinstance(est._optim, torch.optim.SGD) and est._optim.param_groups[0]["lr"] == 0.1
    assert changed(before, est) and optimizer_trains_model(est)


@pytest.mark.parametrize("change", [dict(activation="relu"), dict(output_activation="linear"),
                                    dict(tied_weights=False), dict(hidden=(3,))])
def test_warm_start_after_an_architecture_change_trains_a_new_network(change):
    """The network a warm start would continue is a different one: the fit starts afresh, exactly as
    a cold fit with the new parameters."""
    est = RobustAutoencoder(**TINY, warm_start=True).fit(X)
    est.set_params(**change).fit(X)
    cold = RobustAutoencoder(**{**TINY, **change}).fit(X)
    assert est.model_.architecture == cold.model_.architecture
    np.testing.assert_array_equal(est.decision_scores_, cold.decision_scores_)


# ---------------------------------------------------------------- what a failed fit leaves
class Injected(RuntimeError):
    pass


@pytest.fixture
def fail_in_training(monkeypatch):
    """fail_in_training(k): the k-th training call from now on raises (after training), so that
    the fit stops mid-loop with the network already updated."""
    real = rda_ext.solver.training.Network.train
    calls = {"n": 0, "fail_at": None}

    def train(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise Injected("injected failure in the training step")
        return result

    monkeypatch.setattr(rda_ext.solver.training.Network, "train", train)

    def arm(k):
        calls["n"], calls["fail_at"] = 0, k

    return arm


def snapshot(est: RobustAutoencoder) -> dict:
    return dict(
        model=est.model_, weights=weights(est), optim=est._optim, batch_seed=est._batch_seed,
        history=list(est.history_), scores=est.decision_scores_.copy(), L=est.L_.copy(), S=est.S_.copy(),
    )


def assert_untouched(est: RobustAutoencoder, snap: dict) -> None:
    assert est.model_ is snap["model"] and est._optim is snap["optim"] and est._batch_seed == snap["batch_seed"]
    assert all(torch.equal(a, b) for a, b in zip(snap["weights"], est.model_.parameters()))
    assert est.history_ == snap["history"]
    np.testing.assert_array_equal(est.decision_scores_, snap["scores"])
    np.testing.assert_array_equal(est.L_, snap["L"])
    np.testing.assert_array_equal(est.S_, snap["S"])


def test_first_fit_that_fails_leaves_no_fitted_state(fail_in_training):
    est = RobustAutoencoder(**TINY)
    fail_in_training(2)
    with pytest.raises(Injected):
        est.fit(X)
    assert set(vars(est)) == set(est.get_params()), vars(est)  # no fitted state, nothing half-made
    fail_in_training(None)
    est.set_params(warm_start=True).fit(X)  # nothing to continue from: a fresh fit
    reference = RobustAutoencoder(**TINY).fit(X)
    assert_same_model(est, reference)


@pytest.mark.parametrize("warm", [False, True])
def test_failed_fit_keeps_the_previous_fit_and_warm_start_trains_model(fail_in_training, warm):
    est = RobustAutoencoder(**TINY).fit(X)
    twin = RobustAutoencoder(**TINY).fit(X)
    snap = snapshot(est)
    fail_in_training(2)
    with pytest.raises(Injected):
        est.set_params(warm_start=warm, random_state=1).fit(X)
    assert_untouched(est, snap)
    fail_in_training(None)
    # The next warm fit trains the network model_ reports, exactly as if the failed fit never was.
    before = weights(est)
    est.set_params(warm_start=True, random_state=0).fit(X)
    assert changed(before, est) and optimizer_trains_model(est)
    twin.set_params(warm_start=True).fit(X)
    assert_same_model(est, twin)
    assert len(est.history_) == 2 * TINY["outer_iter"]


def test_a_warm_start_warns_when_new_rows_leave_the_range_of_the_fitted_sigmoid(seed):
    """The "auto" output chose a sigmoid for X in [0, 1]; new rows beyond it, in the fitted scaling,
    cannot be reconstructed, which a fresh fit would have avoided by its choice."""
    est = RobustAutoencoder(**{**WARM, "preprocessing": "minmax"}).fit(X)
    assert est.model_.architecture[2] == "sigmoid"
    with pytest.warns(UserWarning, match=r"^X has values in \[.*, 3.\d*\] but the output activation is sigmoid"):
        est.set_params(warm_start=True).fit(X * 3)
