"""The local term of the "residual+code+knn" and "knn" scores (rda_ext.estimator.neighbours and
scoring.LocalTerm): the K-th neighbour distance against numpy's, the sample of reference rows, the
spreads, the score of a fit and of new rows by its definition, its model file, and a row that only
the local term finds."""

import numpy as np
import pytest
import torch
from conftest import DEVICES
from helpers import SMALL, planted

from rda_ext import RobustAutoencoder
from rda_ext.estimator import neighbours, scoring
from rda_ext.experiments.metrics import roc_auc
from rda_ext.solver.collectives import SINGLE_PROCESS


def kth_by_definition(X, N, k, own=None):
    """The k-th smallest distance of each row of X to the rows of N, leaving out N[own[i]]."""
    D = np.sqrt(((X[:, None, :] - N[None, :, :]) ** 2).sum(-1))
    if own is not None:
        for i, j in enumerate(own):
            if j >= 0:
                D[i, j] = np.inf
    return np.sort(D, axis=1)[:, k - 1]


@pytest.mark.parametrize("chunk", [1, 37, 1 << 20])
@pytest.mark.parametrize("device", DEVICES)
def test_kth_distance_matches_numpy_in_float64(gen, chunk, device, monkeypatch):
    monkeypatch.setattr(neighbours, "CHUNK_DISTANCES", chunk)
    X = (torch.rand(53, 7, generator=gen, dtype=torch.float64) * 3 + 100).to(device)  # far from 0: centred
    N = X[torch.randperm(53, generator=gen)[:23].to(device)]
    own = torch.full((53,), -1, dtype=torch.int64, device=device)
    picked = torch.randperm(23, generator=gen)[:11].to(device)
    own[torch.nonzero((X[:, None, :] == N[None, picked, :]).all(-1))[:, 0]] = picked[
        torch.nonzero((X[:, None, :] == N[None, picked, :]).all(-1))[:, 1]]
    for position in (None, own):
        got = neighbours.kth_distance(X, N, position)
        want = kth_by_definition(X.cpu().numpy(), N.cpu().numpy(), neighbours.K,
                                 None if position is None else position.cpu().numpy())
        assert got.dtype == torch.float64 and got.device.type == torch.device(device).type
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-12)


def test_a_row_of_the_set_does_not_count_itself_but_its_duplicate_counts():
    N = torch.tensor([[0.0], [1.0], [1.0], [5.0]], dtype=torch.float64)
    X = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    # K is 3 here (4 rows, one fewer for a row of the set): 1.0's neighbours 1.0 (its duplicate), 0.0, 5.0.
    assert neighbours.neighbours_used(N) == 3
    got = neighbours.kth_distance(X, N, torch.tensor([1, -1]))
    torch.testing.assert_close(got, torch.tensor([4.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("m, k", [(1, 0), (2, 1), (11, 10), (500, 10)])
def test_k_is_at_most_one_fewer_than_the_set(m, k):
    assert neighbours.neighbours_used(torch.zeros(m, 3)) == k


def test_no_neighbour_and_no_rows_give_zeros():
    got = neighbours.kth_distance(torch.rand(5, 3), torch.rand(1, 3))
    assert torch.equal(got, torch.zeros(5, dtype=torch.float64))
    assert neighbours.kth_distance(torch.rand(0, 3), torch.rand(20, 3)).shape == (0,)


def test_at_most_the_sample_size_every_reference_row_is_a_neighbour(gen):
    X = torch.rand(300, 4, generator=gen)
    reference = torch.rand(300, generator=gen) < 0.9
    rows, position = neighbours.sample(X, reference, 7, SINGLE_PROCESS)
    assert torch.equal(rows, X[reference])
    assert torch.equal(position[~reference], torch.full(((~reference).sum(),), -1))
    assert torch.equal(rows[position[reference]], X[reference])


@pytest.mark.parametrize("device", DEVICES)
def test_beyond_the_sample_size_reference_rows_are_drawn_from_the_seed(gen, monkeypatch, device):
    monkeypatch.setattr(neighbours, "SAMPLE_ROWS", 50)
    X = torch.rand(400, 3, generator=gen).to(device)
    reference = (torch.rand(400, generator=gen) < 0.8).to(device)
    rows, position = neighbours.sample(X, reference, 7, SINGLE_PROCESS)
    assert rows.shape == (50, 3)
    picked = torch.nonzero(position >= 0).squeeze(1)
    assert len(picked) == 50 and bool(reference[picked].all())
    assert torch.equal(rows[position[picked]], X[picked])
    again, _ = neighbours.sample(X, reference, 7, SINGLE_PROCESS)
    other, _ = neighbours.sample(X, reference, 8, SINGLE_PROCESS)
    assert torch.equal(again, rows) and not torch.equal(other, rows)


@pytest.mark.parametrize("counts, total, shares", [
    ([10, 10], 4, [2, 2]), ([3, 7], 5, [2, 3]), ([1, 1, 1], 2, [1, 1, 0]), ([0, 5], 5, [0, 5]),
    ([0, 0], 0, [0, 0]), ([2, 100], 100, [2, 98]),
])
def test_the_sample_is_shared_in_proportion_and_never_above_a_ranks_rows(counts, total, shares):
    assert neighbours._shares(counts, total) == shares


@pytest.mark.parametrize("values, want", [
    ([1.0, 2.0, 3.0, 4.0, 100.0], 1.0),  # median 3, deviations 2 1 0 1 97
    ([0.0, 0.0, 0.0, 0.0, 5.0], 1.0),  # more than half equal: the mean deviation, 5 / 5
    ([2.0, 2.0, 2.0], 1.0),  # all equal
    ([0.0, 0.0, 0.0, 3.0], 0.75),
])
def test_the_spread_is_the_median_absolute_deviation_else_the_mean_one_else_1(values, want):
    assert scoring.spread(torch.tensor(values, dtype=torch.float64), SINGLE_PROCESS) == want


def by_definition(est, X, fitted: bool):
    """The default score of rows X in numpy, from the "residual+code" score (of the training rows:
    that of the same fit scored so; of new rows: with the fitted statistics) and neighbours_."""
    rc = RobustAutoencoder(**{**est.get_params(), "outlier_score": "residual+code"})
    if fitted:
        base = rc.fit(X).decision_scores_
    else:
        rc.__dict__.update({k: v for k, v in est.__dict__.items() if k.endswith("_")})
        rc.neighbours_ = rc.term_spread_ = None
        base = rc.decision_function(X)
    N = est.neighbours_.astype(np.float64)
    own = None
    if fitted:
        own = np.array([next((j for j, n in enumerate(N) if np.array_equal(n, x)), -1) for x in X.astype(np.float64)])
    distance = kth_by_definition(X.astype(np.float64), N, min(neighbours.K, len(N) - 1), own)
    return base / est.term_spread_[0] + distance / est.term_spread_[1], base, distance


@pytest.mark.parametrize("device", DEVICES)
def test_the_default_fit_adds_the_local_term_to_residual_and_code(seed, device):
    X, is_out = planted(seed)  # in [0, 1]: the network sees X as it is
    est = RobustAutoencoder(contamination=0.05, random_state=seed, device=device, **SMALL).fit(X)
    assert est.outlier_score == "residual+code+knn"
    residual = np.linalg.norm(X.astype(np.float64) - est.L_, axis=1)
    reference = residual <= np.quantile(residual, 0.95)
    # Every reference row (fewer than the sample size) is a neighbour, in X's order.
    np.testing.assert_array_equal(est.neighbours_, X[reference])
    want, base, distance = by_definition(est, X, fitted=True)
    spreads = [np.median(np.abs(v - np.median(v))) for v in (base, distance)]
    np.testing.assert_allclose(est.term_spread_, spreads, rtol=1e-3)
    np.testing.assert_allclose(est.decision_scores_, want, rtol=1e-3)
    assert est.threshold_ == np.quantile(est.decision_scores_, 0.95)
    np.testing.assert_array_equal(est.labels_, (est.decision_scores_ > est.threshold_).astype(np.int64))
    assert roc_auc(is_out, est.decision_scores_) > 0.95
    # New rows count every neighbour, the training rows among them included.
    new = np.concatenate([planted(seed + 1, n=40)[0], X[:5]])
    np.testing.assert_allclose(est.decision_function(new), by_definition(est, new, fitted=False)[0], rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_score_knn_is_the_local_term_alone(seed, device):
    """The distance to the K-th neighbour, in the network's input space: a training row leaving
    itself out, a new row counting every neighbour; no statistics of the other terms; the same
    decomposition as the default fit, whose neighbours it shares."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 8))
    X[:12] += rng.choice([-4.0, 4.0], size=(12, 8))
    params = dict(contamination=0.03, random_state=seed, device=device, outer_iter=3)
    est = RobustAutoencoder(**params, outlier_score="knn").fit(X)
    assert est.residual_scale_ is None and est.code_precision_ is None and est.term_spread_ is None
    default = RobustAutoencoder(**params).fit(X)
    np.testing.assert_array_equal(est.S_, default.S_)
    np.testing.assert_array_equal(est.neighbours_, default.neighbours_)
    Xs = (X - est.center_) / est.scale_  # preprocessing "auto": min-max, the neighbours' space
    N = est.neighbours_.astype(np.float64)
    own = np.array([next((j for j, n in enumerate(N) if np.allclose(n, x, rtol=0, atol=1e-6)), -1) for x in Xs])
    k = min(neighbours.K, len(N) - 1)
    np.testing.assert_allclose(est.decision_scores_, kth_by_definition(Xs, N, k, own), rtol=1e-4, atol=1e-6)
    assert est.threshold_ == np.quantile(est.decision_scores_, 0.97)
    new = rng.normal(size=(30, 8))
    np.testing.assert_allclose(est.decision_function(new), kth_by_definition((new - est.center_) / est.scale_, N, k),
                               rtol=1e-4, atol=1e-6)
    assert roc_auc(np.r_[np.ones(12), np.zeros(388)], est.decision_scores_) > 0.95


def test_a_model_file_keeps_score_knn(seed, tmp_path):
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, outlier_score="knn", **SMALL).fit(X)
    est.save(tmp_path / "m.pt", data=False)
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.residual_scale_ is None and back.term_spread_ is None
    np.testing.assert_array_equal(back.neighbours_, est.neighbours_)
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**state, "fitted": {**state["fitted"], "term_spread_": torch.ones(2, dtype=torch.float64)}},
               tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="term_spread_ is saved without the statistics"):
        RobustAutoencoder.load(tmp_path / "bad.pt")


def test_a_row_in_the_gap_between_two_clusters_is_found_by_the_local_term_only():
    """Rows on a line, dense at both ends: a few in the middle lie on the line the network
    reconstructs and have a typical code, but no neighbours."""
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.uniform(0, 0.2, 280), rng.uniform(0.8, 1, 280), rng.uniform(0.45, 0.55, 10)])
    X = np.stack([t, 1 - t, 0.5 * t + 0.2], axis=1) + rng.normal(0, 0.01, (570, 3))
    is_out = np.r_[np.zeros(560), np.ones(10)]
    scores = {s: RobustAutoencoder(contamination=0.02, random_state=0, outlier_score=s).fit(X).decision_scores_
              for s in ("residual+code", "residual+code+knn")}
    assert roc_auc(is_out, scores["residual+code+knn"]) > 0.95 > roc_auc(is_out, scores["residual+code"]) + 0.1


def test_a_model_file_keeps_the_local_term_and_refuses_a_broken_one(seed, tmp_path):
    X, _ = planted(seed)
    est = RobustAutoencoder(contamination=0.05, random_state=seed, **SMALL).fit(X)
    est.save(tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    shape = "neighbours_ is not a float32 or float64 tensor of at least one row of 30 features"
    broken = [
        ("neighbours_ is saved with the statistics of the residual\\+code score but without the term_spread_",
         {"term_spread_": None}),
        ("term_spread_ is saved without the neighbours_", {"neighbours_": None}),
        (shape, {"neighbours_": torch.zeros(0, 30)}),
        (shape, {"neighbours_": torch.zeros(4, 29)}),
        (shape, {"neighbours_": torch.zeros(4, 30, dtype=torch.int64)}),
        ("neighbours_ holds NaN or infinite values", {"neighbours_": torch.full((4, 30), float("nan"))}),
        ("term_spread_ is not two finite float64 numbers > 0", {"term_spread_": torch.tensor([1.0, 0.0],
                                                                                            dtype=torch.float64)}),
        ("term_spread_ is not two finite float64", {"term_spread_": torch.ones(2)}),
        ("term_spread_ is saved without the statistics",
         {"residual_scale_": None, "code_center_": None, "code_precision_": None}),
    ]
    for message, change in broken:
        bad = {**state, "fitted": {**state["fitted"], **change}}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=message):
            RobustAutoencoder.load(tmp_path / "bad.pt")


def test_a_resumed_fit_draws_the_neighbours_the_uninterrupted_one_would(tmp_path, monkeypatch):
    """The sample is drawn from the fit's batch generator, which a checkpoint keeps: two restarts of
    one job (random_state=None, so each draws a fresh seed of its own) end with the same sample."""
    import shutil

    monkeypatch.setattr(neighbours, "SAMPLE_ROWS", 20)
    X, _ = planted(0)
    params = dict(SMALL, contamination=0.05, random_state=None)
    RobustAutoencoder(**{**params, "outer_iter": 2}, checkpoint=tmp_path / "a").fit(X)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    first, second = (RobustAutoencoder(**{**params, "outer_iter": 3}, checkpoint=tmp_path / c).fit(X) for c in "ab")
    assert first.neighbours_.shape == (20, X.shape[1])
    np.testing.assert_array_equal(first.neighbours_, second.neighbours_)
    np.testing.assert_array_equal(first.decision_scores_, second.decision_scores_)
