"""K networks in one batched step (rda_ext.solver.stacked, fit_together, lambda_path(parallel=True)):
network k computes and learns exactly what it would alone. Everything in float64, so that "to
rounding" means 1e-10 after many Adam steps."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers import planted

from rda_ext import RobustAutoencoder, fit_together, lambda_path
from rda_ext.estimator.fitting import new_solver
from rda_ext.solver import training
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.collectives import SINGLE_PROCESS
from rda_ext.solver.engine import Engine
from rda_ext.solver.fused_step import FusedStep
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.stacked import StackedAutoencoder, StackedNetworks
from rda_ext.solver.training import make_optimizer, reconstruct_into, train_epochs
from rda_ext.validation import resolve_device

EXACT = dict(hidden=(8, 3), outer_iter=3, inner_epochs=2, batch_size=32, lr=1e-2, activation="elu", dtype="float64",
             tol=0, device="cpu")


def nets(seed, k, tied, sizes=(12, 6, 3)):
    return [DeepAutoencoder(sizes, "elu", "sigmoid", tied, torch.Generator().manual_seed(seed + i)).double()
            for i in range(k)]


@pytest.mark.parametrize("tied", [True, False])
def test_the_stack_computes_each_network(gen, seed, tied):
    singles = nets(seed, 3, tied)
    stack = StackedAutoencoder(singles)
    x = torch.rand(3, 10, 12, generator=gen, dtype=torch.float64)
    out = stack(x)
    for k, net in enumerate(singles):
        torch.testing.assert_close(out[k], net(x[k]), rtol=1e-12, atol=1e-14)
        back = stack.network(k)
        assert back.architecture == net.architecture
        for a, b in zip(back.parameters(), net.parameters()):
            assert torch.equal(a, b)
    assert len(stack) == 3


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_each_network_learns_what_it_learns_alone(gen, seed, tied, optimizer):
    singles = nets(seed, 3, tied)
    stack = StackedAutoencoder(singles)
    data = torch.rand(3, 50, 12, generator=gen, dtype=torch.float64)
    losses = StackedNetworks(stack, make_optimizer(stack, optimizer, 1e-2), Schedule(3, 16),
                             torch.Generator().manual_seed(seed)).train(data)
    recon = torch.empty_like(data)
    err = reconstruct_into(stack, data, recon)
    for k, net in enumerate(singles):
        loss = train_epochs(net, make_optimizer(net, optimizer, 1e-2), data[k], Schedule(3, 16), torch.Generator().manual_seed(seed))
        assert losses[k].item() == pytest.approx(loss.item(), rel=1e-10)
        for a, b in zip(stack.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        alone = torch.empty_like(data[k])
        assert err[k].item() == pytest.approx(reconstruct_into(net, data[k], alone).item(), rel=1e-10)
        torch.testing.assert_close(recon[k], alone, rtol=1e-10, atol=1e-12)


def test_the_reconstruction_in_chunks_is_the_reconstruction_at_once(gen, seed, monkeypatch):
    stack = StackedAutoencoder(nets(seed, 2, True))
    data = torch.rand(2, 25, 12, generator=gen, dtype=torch.float64)
    whole, parts = torch.empty_like(data), torch.empty_like(data)
    err = reconstruct_into(stack, data, whole)
    monkeypatch.setattr(training, "CHUNK_ROWS", 8)  # 4 rows per network and chunk: 7 chunks
    torch.testing.assert_close(reconstruct_into(stack, data, parts), err, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-14)


def test_networks_of_different_shapes_are_refused(seed):
    with pytest.raises(ValueError, match="one architecture"):
        StackedAutoencoder([*nets(seed, 1, True), *nets(seed, 1, True, sizes=(12, 5, 3))])


@pytest.mark.parametrize("penalty", ["l1", "l21_rows", "l21_cols"])
def test_fit_together_ends_where_each_fit_ends(seed, penalty):
    """Same random_state: each estimator's fit, lam given or from contamination, is its own fit's."""
    X, _ = planted(seed, n=90, d=12)
    X = X.astype(np.float64)
    settings = [dict(lam=0.9 if penalty == "l21_rows" else 0.2), dict(contamination=0.1), dict(lam=0.5)]
    together = fit_together([RobustAutoencoder(penalty=penalty, random_state=seed, **s, **EXACT) for s in settings], X)
    for est, s in zip(together, settings):
        alone = RobustAutoencoder(penalty=penalty, random_state=seed, **s, **EXACT).fit(X)
        np.testing.assert_allclose(est.L_, alone.L_, rtol=0, atol=1e-9)
        np.testing.assert_allclose(est.S_, alone.S_, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(est.labels_, alone.labels_)
        assert est.lam_ == pytest.approx(alone.lam_, rel=1e-9) and est.n_iter_ == alone.n_iter_ == 3
        for a, b in zip(est.history_, alone.history_):
            assert a["iteration"] == b["iteration"]
            for key in ("lam", "train_loss", "recon_error", "objective", "c1", "c2"):
                assert a[key] == pytest.approx(b[key], rel=1e-8, abs=1e-12), key
        np.testing.assert_allclose(est.decision_function(X), alone.decision_function(X), rtol=1e-9)
        assert est._optim is None  # a warm start from here begins a fresh optimizer


def test_auto_epochs_of_a_joint_fit_count_its_rows_as_a_fit_does(seed):
    """90 rows in batches of 32 make 17 epochs of 3 steps under "auto" (12 columns would make 50)."""
    X, _ = planted(seed, n=90, d=12)
    X = X.astype(np.float64)
    params = {**EXACT, "inner_epochs": "auto", "outer_iter": 1}
    (together,) = fit_together([RobustAutoencoder(random_state=seed, **params)], X)
    alone = RobustAutoencoder(random_state=seed, **params).fit(X)
    assert together.history_[0]["train_loss"] == pytest.approx(alone.history_[0]["train_loss"], rel=1e-9)
    np.testing.assert_allclose(together.L_, alone.L_, rtol=0, atol=1e-9)


@pytest.mark.parametrize("penalty, outlier_score", [("l21_rows", "residual+code"), ("l21_rows", "residual"),
                                                    ("l1", "residual+code")])
def test_a_fit_that_converges_stops_there_as_it_would_alone(seed, penalty, outlier_score):
    """lam = 0: S takes all of X - L, so c1 = 0 at once and c2 = 0 from the second iteration; the
    fit with lam 0.9 goes on. Each ends where its own fit ends, with the group norms of its own
    last step (the "residual" labels of "l21_rows" are the rows those norms put above lam)."""
    X, _ = planted(seed, n=60, d=12)
    X = X.astype(np.float64)
    params = {**EXACT, "outer_iter": 4, "tol": 1e-9, "penalty": penalty, "outlier_score": outlier_score}
    together = fit_together([RobustAutoencoder(lam=lam, random_state=seed, **params) for lam in (0.0, 0.9)], X)
    assert [est.n_iter_ for est in together] == [2, 4]
    for est, lam in zip(together, (0.0, 0.9)):
        alone = RobustAutoencoder(lam=lam, random_state=seed, **params).fit(X)
        assert est.n_iter_ == alone.n_iter_
        np.testing.assert_allclose(est.L_, alone.L_, rtol=0, atol=1e-9)
        np.testing.assert_allclose(est.decision_function(X), alone.decision_function(X), rtol=1e-9)
        np.testing.assert_array_equal(est.labels_, alone.labels_)


def test_fit_together_starts_each_network_from_its_random_state(seed):
    X, _ = planted(seed, n=60, d=12)
    ests = fit_together([RobustAutoencoder(lam=0.9, random_state=seed + i, **{**EXACT, "outer_iter": 1})
                         for i in range(2)], X.astype(np.float64))
    assert not np.allclose(ests[0].L_, ests[1].L_)
    # The first shares its batch order with its own fit, the second draws the first's orders.
    alone = RobustAutoencoder(lam=0.9, random_state=seed, **{**EXACT, "outer_iter": 1}).fit(X.astype(np.float64))
    np.testing.assert_allclose(ests[0].L_, alone.L_, rtol=0, atol=1e-9)


def test_fit_together_needs_the_shape_and_schedule_shared():
    X = np.random.default_rng(0).random((20, 4))
    for name, value in (("hidden", (5,)), ("lr", 0.5), ("precision", "float32"), ("dtype", "float32")):
        ests = [RobustAutoencoder(**EXACT), RobustAutoencoder(**{**EXACT, name: value})]
        with pytest.raises(ValueError) as e:
            fit_together(ests, X)
        assert str(e.value) == (f"{name} differs between the estimators ({EXACT.get(name, 'auto')!r} and "
                                f"{value!r}): fit_together trains them in one step, which needs it shared")
    with pytest.raises(ValueError) as e:
        fit_together([], X)
    assert str(e.value) == "estimators must hold at least one RobustAutoencoder"
    # What acts the same is the same: a list for a tuple, None for "float32", the device "auto" picks.
    same = [RobustAutoencoder(**{**EXACT, "dtype": None, "hidden": [8, 3], "device": "auto"}),
            RobustAutoencoder(**{**EXACT, "dtype": "float32", "device": str(resolve_device("auto"))})]
    assert len(fit_together(same, X.astype(np.float32))) == 2
    with pytest.raises(ValueError, match="^lr must be"):
        fit_together([RobustAutoencoder(**{**EXACT, "lr": -1.0})], X)


def test_the_parallel_path_fits_each_lam_as_its_own_fit(seed):
    X, _ = planted(seed, n=90, d=12)
    X = X.astype(np.float64)
    lams = [0.5, 1.2, 0.8]
    path = lambda_path(X, lams, parallel=True, random_state=seed, **EXACT)
    assert [r["lam"] for r in path] == sorted(lams, reverse=True)
    for r in path:
        alone = RobustAutoencoder(lam=r["lam"], random_state=seed, **EXACT).fit(X)
        np.testing.assert_allclose(r["decision_scores"], alone.decision_scores_, rtol=1e-9)
        np.testing.assert_array_equal(r["labels"], alone.labels_)
        assert r["n_flagged"] == alone.labels_.sum() and len(r["history"]) == 3
        np.testing.assert_array_equal(r["nonzero_groups"], np.abs(alone.S_).sum(1) > 0)
    # Without a random_state one seed is drawn for all lam values: the same initial network.
    free = lambda_path(X, [0.9, 0.9001], parallel=True, **{**EXACT, "outer_iter": 1})
    np.testing.assert_allclose(free[0]["decision_scores"], free[1]["decision_scores"], rtol=1e-3)


def test_one_network_and_one_layer_stack_too(gen, seed):
    single = nets(seed, 1, False, sizes=(12, 4))
    stack = StackedAutoencoder(single)
    assert len(stack) == 1
    x = torch.rand(1, 5, 12, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(stack(x)[0], single[0](x[0]), rtol=1e-12, atol=1e-14)
    back = stack.network(0)
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), single[0].parameters()))


def test_copying_a_network_out_leaves_torchs_global_generator_alone(seed):
    stack = StackedAutoencoder(nets(seed, 2, True))
    state = torch.get_rng_state()
    stack.network(1)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_stack_must_match_the_fits(seed):
    X = torch.rand(10, 12, dtype=torch.float64)
    solver = new_solver(RobustAutoencoder(**EXACT), X, torch.zeros_like(X), torch.zeros_like(X), SINGLE_PROCESS)
    with pytest.raises(ValueError) as e:
        Engine(StackedNetworks(StackedAutoencoder(nets(seed, 2, True)), None, Schedule(1, 4), torch.Generator()),
               [solver])
    assert str(e.value) == "2 networks for 1 fits"
    with pytest.raises(ValueError) as e:
        StackedAutoencoder([*nets(seed, 1, True), *nets(seed, 1, True, sizes=(12, 5, 3))])
    assert str(e.value) == "stacked networks must share one architecture"


def test_each_fit_counts_its_iterations_and_the_joint_time(seed):
    X = torch.rand(30, 12, dtype=torch.float64)
    est = RobustAutoencoder(lam=0.5, **EXACT)
    solvers = [new_solver(est, X, torch.zeros_like(X), torch.zeros_like(X), SINGLE_PROCESS) for _ in range(2)]
    stack = StackedAutoencoder(nets(seed, 2, True))
    joint = Engine(StackedNetworks(stack, make_optimizer(stack, "adam", 1e-2), Schedule(1, 8),
                                   torch.Generator().manual_seed(seed)), solvers)
    for i in range(3):
        t0 = time.perf_counter()
        rows = joint.iterate()
        assert [s.iterations for s in solvers] == [i + 1, i + 1]
        assert rows[0]["seconds"] == rows[1]["seconds"] and 0 < rows[0]["seconds"] <= time.perf_counter() - t0


def test_the_precision_reaches_every_batched_product(seed, monkeypatch):
    """bfloat16: every training step and every reconstruction chunk of the stack runs under autocast
    to bfloat16 (as fit's own loop does), while X, L and S stay float32."""
    seen = []
    real_step, real_autocast = FusedStep.__call__, training.autocast

    def spy(device, dtype):
        seen.append(dtype)
        return real_autocast(device, dtype)

    monkeypatch.setattr(FusedStep, "__call__", lambda self, batch: (seen.append(self.amp), real_step(self, batch))[1])
    monkeypatch.setattr(training, "autocast", spy)  # the reconstruction
    X, _ = planted(seed, n=64, d=12)
    params = {**EXACT, "dtype": None, "precision": "bfloat16", "outer_iter": 2}
    ests = fit_together([RobustAutoencoder(lam=lam, random_state=seed, **params) for lam in (0.5, 0.9)], X)
    steps = params["outer_iter"] * params["inner_epochs"] * 2  # 64 rows in batches of 32
    # Plus one reconstruction chunk per outer iteration, and one chunk of training scores per estimator.
    assert seen == [torch.bfloat16] * (steps + params["outer_iter"] + len(ests))
    assert ests[0].L_.dtype == np.float32 and next(ests[0].model_.parameters()).dtype == torch.float32


def test_fit_together_scales_tables_as_fit_does(seed):
    X, _ = planted(seed, n=60, d=12)
    X = X.astype(np.float64) * 40 - 3  # outside [0, 1]: "auto" scales each column by its range
    together = fit_together([RobustAutoencoder(lam=0.3, random_state=seed, **EXACT)], X)[0]
    alone = RobustAutoencoder(lam=0.3, random_state=seed, **EXACT).fit(X)
    np.testing.assert_array_equal(together.center_, alone.center_)
    np.testing.assert_allclose(together.L_, alone.L_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(together.S_, alone.S_, rtol=0, atol=1e-8)
    with pytest.warns(UserWarning, match="output activation is sigmoid"):
        fit_together([RobustAutoencoder(lam=0.3, output_activation="sigmoid", preprocessing="none", **EXACT)], X)


def test_fit_together_converts_x_as_fit_does(seed):
    X, _ = planted(seed, n=40, d=12)
    bad = X.astype(np.float64)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"^X contains NaN or infinite values$"):
        fit_together([RobustAutoencoder(**EXACT)], bad)
    # float64 data in a float32 fit: converted, as fit converts it.
    params = {**EXACT, "dtype": None, "precision": "float32"}
    together = fit_together([RobustAutoencoder(lam=0.9, random_state=seed, **params)], X.astype(np.float64))[0]
    alone = RobustAutoencoder(lam=0.9, random_state=seed, **params).fit(X.astype(np.float64))
    np.testing.assert_allclose(together.L_, alone.L_, rtol=0, atol=1e-5)
    # Every fit draws its batch orders from the first one's seed, and a warm start from the next.
    ests = fit_together([RobustAutoencoder(lam=0.9, random_state=seed + i, **params) for i in range(2)], X)
    assert ests[0]._batch_seed == ests[1]._batch_seed == alone._batch_seed


def test_fit_together_stops_at_tol_exactly_as_fit_does(seed):
    """tol equal to a c1 or c2 of the joint run itself: not below it, so not a stop (fit's rule)."""
    X, _ = planted(seed, n=60, d=12)
    X = X.astype(np.float64)
    params = dict(lam=0.9, random_state=seed, **{**EXACT, "outer_iter": 5})
    c = np.array([[h["c1"], h["c2"]] for h in fit_together([RobustAutoencoder(**params)], X)[0].history_])
    both = c.max(axis=1)
    for tol in np.unique(c):
        expected = int(np.argmax(both < tol)) + 1 if (both < tol).any() else len(c)
        assert fit_together([RobustAutoencoder(**{**params, "tol": float(tol)})], X)[0].n_iter_ == expected
    # Every fit converged before outer_iter: the joint run ends there.
    ests = fit_together([RobustAutoencoder(lam=0.0, random_state=seed, **{**EXACT, "outer_iter": 4, "tol": 1e-9})], X)
    assert ests[0].n_iter_ == 2


@pytest.mark.parametrize("bad", ["x", None, 3, {"lam": 0.5}, RobustAutoencoder, torch.nn.Linear(2, 2)],
                         ids=["str", "None", "int", "dict", "the-class", "module"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_fit_together_names_an_entry_that_is_not_an_estimator(bad, position):
    ests = [RobustAutoencoder(**EXACT), RobustAutoencoder(**EXACT)]
    ests.insert(position, bad)
    with pytest.raises(TypeError) as e:
        fit_together(ests, np.random.default_rng(0).random((20, 4)))
    assert str(e.value) == f"estimators[{position}] is a {type(bad).__name__}, not a RobustAutoencoder"
    assert not any(hasattr(est, "model_") for est in ests if isinstance(est, RobustAutoencoder))


@pytest.mark.parametrize("estimators", [RobustAutoencoder(**EXACT), 3, None], ids=["an-estimator", "int", "None"])
def test_fit_together_needs_a_list(estimators):
    with pytest.raises(TypeError) as e:
        fit_together(estimators, np.random.default_rng(0).random((20, 4)))
    assert str(e.value) == f"estimators must be a list of RobustAutoencoders, got {type(estimators).__name__}"


def test_fit_together_refuses_one_estimator_twice():
    est = RobustAutoencoder(**EXACT)
    with pytest.raises(ValueError) as e:
        fit_together((RobustAutoencoder(**EXACT), est, est), np.random.default_rng(0).random((20, 4)))
    assert str(e.value) == ("estimators[2] is estimators[1] again: pass separate estimators (e.g. sklearn.base.clone "
                            "of one)")


def test_fit_together_records_what_a_warm_start_and_new_data_depend_on(seed):
    X, _ = planted(seed, n=60, d=10)
    together = fit_together([RobustAutoencoder(lam=lam, random_state=seed, **EXACT) for lam in (0.3, 0.6)], X)
    alone = RobustAutoencoder(lam=0.6, random_state=seed, **EXACT).fit(X)
    est = together[1]
    assert est._fit_fingerprint == alone._fit_fingerprint
    assert est._fit_precision == alone._fit_precision and est._fit_preprocessing == alone._fit_preprocessing
    # a warm start on the same X goes on from its S, as from the fit's
    warm = dict(warm_start=True, inner_epochs=0, outer_iter=1)
    est.set_params(**warm).fit(X)
    np.testing.assert_allclose(est.history_[-1]["c2"], alone.set_params(**warm).fit(X).history_[-1]["c2"],
                               rtol=1e-6)
    assert est.history_[-1]["c2"] < 0.1
