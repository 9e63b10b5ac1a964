"""RDA on row shards over torch.distributed (gloo on CPU, 2-3 spawned processes of one thread):
the distributed steps against the single-process ones, a whole fit, checkpoints."""

from __future__ import annotations

import math
import os
import random
import re

import numpy as np
import pytest
import torch
from distributed_ranks import run_ranks, run_threads

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import load_mnist_5k, make_outlier_set
from rda_ext.io.readers import read_matrix, row_range
from rda_ext.ops import PENALTIES
from rda_ext.solver.collectives import RowGroup
from rda_ext.solver.distributed import DistributedRDASolver
from rda_ext.solver.loop import RDASolver
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.training import train_epochs

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


@pytest.fixture(params=[pytest.param(run_ranks, id="processes", marks=pytest.mark.child_process),
                        pytest.param(run_threads, id="threads")])
def run(request):
    """How the ranks run: spawned gloo processes, or threads of the test's process."""
    return request.param


def _seed() -> int:
    seed = random.SystemRandom().randrange(2**31)
    print(f"seed={seed}")
    return seed


def _problem(seed: int, dtype: torch.dtype, ties: bool):
    """X, L and LS_prev of 37 x 11, and uneven row cuts for 3 ranks. With ``ties`` the residual is
    on a grid of 0.25, so that many entries and rows tie at the contamination boundary."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    R = torch.randn(37, 11, generator=gen, dtype=torch.float64) * 0.5
    if ties:
        R = (R * 4).round() / 4
        R[5:9] = R[20]  # whole rows alike: equal row norms
    P = torch.randn(37, 11, generator=gen, dtype=torch.float64)
    return X.to(dtype), (X - R).to(dtype), P.to(dtype), [0, 4, 21, 37]


def _solver(cls, X, L, P, penalty, lam, **kw):
    s = cls(X, torch.zeros_like(X), P.clone(), penalty=penalty, lam=lam, contamination=0.1, **kw)
    s.L = L.clone()
    return s


def _proximal_steps(rank, world, seed, dtype, ties):
    X, L, P, cuts = _problem(seed, dtype, ties)
    rows = slice(cuts[rank], cuts[rank + 1])
    out = {}
    for penalty in PENALTIES:
        for lam in (None, 0.8):
            s = _solver(DistributedRDASolver, X[rows], L[rows], P[rows], penalty, lam, ranks=RowGroup())
            chosen, stats = s.proximal_step()
            out[penalty, lam] = chosen, s.S, [float(v) for v in stats], s.LS_prev, s.row_scores()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_the_distributed_proximal_step_is_the_single_process_one(run, dtype, ties):
    seed = _seed()
    ranks = run(_proximal_steps, 3, seed, dtype, ties)
    X, L, P, _ = _problem(seed, dtype, ties)
    for penalty in PENALTIES:
        for lam in (None, 0.8):
            s = _solver(RDASolver, X, L, P, penalty, lam)
            chosen, stats = s.proximal_step()
            got_lam, _, got_stats, _, _ = ranks[0][penalty, lam]
            S = torch.cat([r[penalty, lam][1] for r in ranks])
            if penalty == "l21_cols":  # column norms summed over ranks in another order
                assert math.isclose(got_lam, chosen, rel_tol=4 * torch.finfo(dtype).eps)
                # A factor 1 - lam / norm rounds relative to 1, not to itself: close relative to X - L.
                scale = float((X - L).abs().max())
                torch.testing.assert_close(S, s.S, rtol=0, atol=8 * torch.finfo(dtype).eps * scale)
                assert torch.equal(S == 0, s.S == 0)
            else:
                assert got_lam == chosen, (penalty, lam)
                assert torch.equal(S, s.S), (penalty, lam)
            # The penalty, the non-zero groups, c1 and c2: the same numbers on every rank.
            for r in ranks:
                assert r[penalty, lam][2] == got_stats
            # Sums in float64 in another order; for "l21_cols" of an S that agrees to rounding. Its
            # penalty sums norm - lam over the survivors: close relative to the norms.
            want = [float(v) for v in stats]
            eps = torch.finfo(dtype).eps
            if penalty == "l21_cols":
                norms = float(torch.linalg.vector_norm((X - L).double(), dim=0).sum())
                assert got_stats[0] == pytest.approx(want[0], rel=0, abs=16 * eps * norms)
                assert got_stats[2:] == pytest.approx(want[2:], rel=16 * eps, abs=0)
            else:
                assert got_stats == pytest.approx(want, rel=1e-12, abs=0)
            assert got_stats[1] == want[1]  # the non-zero count, exactly
            LS_prev = torch.cat([r[penalty, lam][3] for r in ranks])  # L + S
            if penalty == "l21_cols":
                # S to rounding, added to L: close relative to the operands' magnitude.
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(LS_prev, s.LS_prev, rtol=0, atol=8 * eps * float(s.L.abs().max()))
            else:
                assert torch.equal(LS_prev, s.LS_prev)
            assert torch.equal(torch.cat([r[penalty, lam][4] for r in ranks]), s.row_scores())


FRACTIONS = (1e-4, 0.001, 0.05, 0.1, 0.3)  # 1e-4 of the 1300 values: none survives


def _selections(rank, world, seed):
    gen = torch.Generator().manual_seed(seed + rank)
    ranks = RowGroup()
    out = []
    for dtype in (torch.float32, torch.float64):
        size = (0, 300, 1000)[rank]  # one rank without values
        v = torch.rand(size, generator=gen, dtype=torch.float64)
        v = torch.where(v < 0.3, (v * 8).round() / 8, v).to(dtype)  # ties and zeros
        v[: size // 10] = 0.5  # a value shared by every rank
        total = ranks.count(v.numel())
        ks = [1, 2, total // 2, total - 1, total]
        out.append((dtype, v, [ranks.kth_largest(v, k) for k in ks], ks,
                    [ranks.quantile(v.double(), q) for q in (0.0, 0.1, 0.9, 0.95, 1.0)],
                    [ranks.survival_threshold(v, f) for f in FRACTIONS]))
    return out


def test_the_distributed_selection_is_exact(run):
    _check_selections(run(_selections, 3, _seed()))


def test_the_selection_in_chunks_is_the_selection_at_once(monkeypatch):
    from rda_ext.solver import collectives

    monkeypatch.setattr(collectives, "SELECT_CHUNK", 7)  # bounds the temporaries of a large shard
    _check_selections(run_threads(_selections, 3, _seed()))


def _check_selections(ranks):
    from rda_ext.solver.loop import survival_threshold

    for i, (dtype, _, kth, ks, quantiles, thresholds) in enumerate(ranks[0]):
        allv = torch.cat([r[i][1] for r in ranks])
        desc = allv.sort(descending=True).values
        for k, got in zip(ks, kth):
            assert got.dtype == dtype and got == desc[k - 1]
        expected = [float(np.quantile(allv.double().numpy(), q)) for q in (0.0, 0.1, 0.9, 0.95, 1.0)]
        assert quantiles == pytest.approx(expected, rel=1e-15, abs=0)
        assert thresholds == [survival_threshold(allv, f) for f in FRACTIONS]
        assert all(r[i][2:] == ranks[0][i][2:] for r in ranks)


def _score_data(seed):
    gen = torch.Generator().manual_seed(seed)
    X, L = (torch.rand(53, 11, generator=gen, dtype=torch.float64) for _ in range(2))
    return X, L, torch.randn(11, 3, generator=gen, dtype=torch.float64), torch.rand(53, generator=gen) < 0.8


_SCORE_SHARDS = ((0, 25), (25, 25), (25, 53))  # rank 1 holds no rows


def _score_statistics(rank, world, seed):
    from rda_ext.estimator import scoring

    X, L, W, reference = _score_data(seed)
    lo, hi = _SCORE_SHARDS[rank]
    return scoring.fit_statistics(X[lo:hi], L[lo:hi], torch.sigmoid(X[lo:hi] @ W), reference[lo:hi], RowGroup())


def test_the_score_statistics_of_the_ranks_rows_are_those_of_all_rows(run):
    from rda_ext.estimator import scoring

    seed = _seed()
    X, L, W, reference = _score_data(seed)
    want = scoring.fit_statistics(X, L, torch.sigmoid(X @ W), reference)
    for got in run(_score_statistics, 3, seed):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def _local_term(rank, world, seed):
    from rda_ext.estimator import neighbours, scoring

    X, L, W, reference = _score_data(seed)
    lo, hi = _SCORE_SHARDS[rank]
    shard = (X[lo:hi], L[lo:hi], torch.sigmoid(X[lo:hi] @ W), reference[lo:hi])
    scores, _, local = scoring.reference_scores("residual+code+knn", *shard, seed, RowGroup())
    drawn, position = neighbours.sample(X[lo:hi], reference[lo:hi], seed, RowGroup(), size=10)
    return scores, local.neighbours, local.spread, drawn, position


def test_the_local_term_of_the_ranks_rows_is_that_of_all_rows(run):
    """Every reference row of every rank is a neighbour (in rank order: the rows' order) where there
    are few; beyond the sample size each rank gives its share, and every rank has the same sample."""
    from rda_ext.estimator import scoring

    seed = _seed()
    X, L, W, reference = _score_data(seed)
    want, _, local = scoring.reference_scores("residual+code+knn", X, L, torch.sigmoid(X @ W), reference, seed)
    ranks = run(_local_term, 3, seed)
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), want, rtol=1e-10, atol=0)
    drawn = ranks[0][3]
    assert drawn.shape == (10, 11)
    for rank, (_, neighbours, spread, theirs, position) in enumerate(ranks):
        assert torch.equal(neighbours, local.neighbours)
        torch.testing.assert_close(spread, local.spread, rtol=1e-10, atol=0)  # of scores summed in another order
        assert torch.equal(theirs, drawn)
        lo, hi = _SCORE_SHARDS[rank]
        own = torch.nonzero(position >= 0).squeeze(1)
        assert bool(reference[lo:hi][own].all()) and torch.equal(drawn[position[own]], X[lo:hi][own])
    assert sum(int((r[4] >= 0).sum()) for r in ranks) == 10


def _knn_term(rank, world, seed):
    from rda_ext.estimator import scoring

    X, _, _, reference = _score_data(seed)
    lo, hi = _SCORE_SHARDS[rank]
    scores, statistics, local = scoring.reference_scores("knn", X[lo:hi], None, None, reference[lo:hi], seed, RowGroup())
    return scores, local.neighbours, statistics is None and local.spread is None


def test_score_knn_of_the_ranks_rows_is_that_of_all_rows(run):
    """The local term alone: every rank holds the sample of all ranks' reference rows, and each
    row's distance is the one a single process gives it."""
    from rda_ext.estimator import scoring

    seed = _seed()
    X, _, _, reference = _score_data(seed)
    want, _, local = scoring.reference_scores("knn", X, None, None, reference, seed)
    ranks = run(_knn_term, 3, seed)
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), want, rtol=1e-10, atol=0)
    for _, neighbours, alone in ranks:
        assert alone and torch.equal(neighbours, local.neighbours)


def _contrast_norms(seed):
    """53 row residual norms on a grid of 0.25, so that many tie at the quantiles."""
    gen = torch.Generator().manual_seed(seed)
    return ((torch.rand(53, generator=gen, dtype=torch.float64) * 12).round() / 4 + 0.25)


def _shape_contrast(rank, world, seed):
    from rda_ext.estimator import network_shape

    lo, hi = _SCORE_SHARDS[rank]
    return [network_shape.contrast(_contrast_norms(seed)[lo:hi], c, RowGroup()) for c in (0.05, 0.3)]


def test_the_shape_contrast_of_the_ranks_rows_is_that_of_all_rows(run):
    from rda_ext.estimator import network_shape
    from rda_ext.solver.collectives import SINGLE_PROCESS

    seed = _seed()
    want = [network_shape.contrast(_contrast_norms(seed), c, SINGLE_PROCESS) for c in (0.05, 0.3)]
    for got in run(_shape_contrast, 3, seed):
        assert got == pytest.approx(want, rel=1e-12)


def _mnist_subset():
    X, y = load_mnist_5k()
    return make_outlier_set(X, y, nominal=4, fraction=0.05, seed=0)


_FIT = dict(device="cpu", random_state=0)
# One network on the MNIST rows (hidden="auto" would train a second, wide one on their 784
# features: test_an_auto_fit_on_ranks_measures_the_contrast_of_all_rows).
_NARROW = dict(_FIT, hidden=(128, 32))


def _fit_shard(rank, world, params, checkpoint=None):
    X, _, _ = _mnist_subset()
    rows = np.array_split(np.arange(len(X)), world)[rank]
    est = RobustAutoencoder(**{**_NARROW, **params}, checkpoint=checkpoint).fit(X[rows])
    return dict(labels=est.labels_, scores=est.decision_scores_, lam=est.lam_, threshold=est.threshold_,
                history=est.history_, S=est.S_, L=est.L_,
                weights={k: v.clone() for k, v in est.model_.state_dict().items()})


@pytest.mark.parametrize("penalty", ["l21_rows", "l1"])
def test_a_distributed_fit_flags_nearly_the_rows_of_a_single_process_fit(run, penalty):
    """The batches differ (each rank draws from its rows), so the fits are not bit-equal: on the
    MNIST subset (digit 4 + 5% others, 527 rows) 2 ranks flag nearly the same rows as 1 process."""
    X, outlier, _ = _mnist_subset()
    single = RobustAutoencoder(**_NARROW, penalty=penalty, contamination=0.05).fit(X)
    ranks = run(_fit_shard, 2, dict(penalty=penalty, contamination=0.05))
    labels = np.concatenate([r["labels"] for r in ranks])
    scores = np.concatenate([r["scores"] for r in ranks])
    # Every rank holds the same global numbers and the same network.
    for r in ranks[1:]:
        assert r["lam"] == ranks[0]["lam"] and r["threshold"] == ranks[0]["threshold"]
        assert [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] == \
               [{k: v for k, v in h.items() if k != "seconds"} for h in ranks[0]["history"]]
        assert all(torch.equal(v, ranks[0]["weights"][k]) for k, v in r["weights"].items())
    flagged, single_flagged = set(np.flatnonzero(labels)), set(np.flatnonzero(single.labels_))
    assert len(flagged) == len(single_flagged) > 0
    assert len(flagged & single_flagged) >= 0.8 * len(flagged)
    assert np.corrcoef(scores, single.decision_scores_)[0, 1] > 0.95
    # And it detects: the flagged rows are mostly the outliers, as the single fit's are.
    assert outlier[labels == 1].mean() >= outlier[single.labels_ == 1].mean() - 0.15


def _auto_fit(rank, world, seed):
    from helpers import planted

    X = planted(seed, n=96, d=300, n_out=5)[0]
    rows = np.array_split(np.arange(len(X)), world)[rank]
    est = RobustAutoencoder(**_FIT, outer_iter=2, inner_epochs=1, batch_size=16).fit(X[rows])
    return est.hidden_, est.shape_contrast_, np.linalg.norm(X[rows] - est.L_, axis=1)


def test_an_auto_fit_on_ranks_measures_the_contrast_of_all_rows(run):
    """hidden="auto" on 300 features: every rank trains both shapes and keeps the same one, by the
    contrast of the residual norms of all ranks' rows."""
    from rda_ext.estimator import network_shape
    from rda_ext.solver.collectives import SINGLE_PROCESS

    ranks = run(_auto_fit, 2, _seed())
    hidden, contrasts, _ = ranks[0]
    assert list(contrasts) == [(128, 32), (150, 75)]
    assert hidden == list(contrasts)[network_shape.choose(list(contrasts.values()))]
    for r in ranks[1:]:
        assert r[0] == hidden and r[1] == contrasts
    norms = torch.from_numpy(np.concatenate([r[2] for r in ranks]).astype(np.float64))
    assert contrasts[hidden] == pytest.approx(network_shape.contrast(norms, 0.1, SINGLE_PROCESS), rel=1e-5)


def _resumed(rank, world, tmp):
    whole = _fit_shard(rank, world, dict(outer_iter=4, inner_epochs=2), checkpoint=f"{tmp}/whole")
    _fit_shard(rank, world, dict(outer_iter=2, inner_epochs=2), checkpoint=f"{tmp}/cut")
    resumed = _fit_shard(rank, world, dict(outer_iter=4, inner_epochs=2), checkpoint=f"{tmp}/cut")
    return whole, resumed


@pytest.mark.parametrize("world", [1, 2])
def test_a_fit_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(run, world, tmp_path):
    for whole, resumed in run(_resumed, world, str(tmp_path)):
        assert len(resumed["history"]) == 4
        for key in ("labels", "scores", "S", "L"):
            assert np.array_equal(whole[key], resumed[key]), key
        assert all(torch.equal(v, resumed["weights"][k]) for k, v in whole["weights"].items())
        strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole["history"]]
        assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]


def _one_rank_elsewhere(rank, world, tmp):
    """A checkpoint of the job's 2 iterations, then a resume where rank 1 looks in an empty folder."""
    _fit_shard(rank, world, dict(outer_iter=2, inner_epochs=1), checkpoint=f"{tmp}/shared")
    try:
        _fit_shard(rank, world, dict(outer_iter=3, inner_epochs=1), checkpoint=f"{tmp}/{'shared' if rank == 0 else 'own'}")
    except ValueError as e:
        return str(e)


def test_ranks_that_find_different_states_in_their_checkpoint_are_refused_alike(run, tmp_path):
    messages = run(_one_rank_elsewhere, 2, str(tmp_path))
    assert messages == [f"checkpoint {tmp_path}/shared: the ranks found different states in it; it must be one "
                        "folder that every rank reads and writes (a shared file system)",
                        f"checkpoint {tmp_path}/own: the ranks found different states in it; it must be one "
                        "folder that every rank reads and writes (a shared file system)"]


def _shard_beyond_the_unit_interval(rank, world, case):
    """Rank 0's rows lie in [0, 1], rank 1's do not: what "auto" chooses must hold for the job."""
    X = np.random.default_rng(rank).random((12, 3))
    if case == "overflow":  # column 0 spans float64 over the two ranks, not on either
        X[:, 0] = 1.7e308 * (1 if rank else -1)
    elif rank == 1:
        X[:, 1] += 1.5
    params = dict(_TINY, outer_iter=1, dtype="float64",
                  preprocessing="none" if case == "output" else ("minmax" if case == "overflow" else "auto"))
    try:
        est = RobustAutoencoder(**params).fit(X)
    except ValueError as e:
        return str(e)
    return est.model_.architecture, est.center_, est.scale_


def test_the_ranks_choose_the_scaling_and_the_output_for_the_rows_of_all(run):
    (arch0, center0, scale0), (arch1, center1, scale1) = run(_shard_beyond_the_unit_interval, 2, "scaling")
    assert arch0 == arch1 and arch0[2] == "sigmoid"  # the rows scaled by minmax lie in [0, 1]
    assert center0 is not None and np.array_equal(center0, center1) and np.array_equal(scale0, scale1)
    assert 2 < scale0[1] + center0[1] <= 2.5  # the largest value of column 1 is rank 1's
    (arch0, center0, _), (arch1, center1, _) = run(_shard_beyond_the_unit_interval, 2, "output")
    assert center0 is center1 is None and arch0 == arch1 and arch0[2] == "linear"
    assert run(_shard_beyond_the_unit_interval, 2, "overflow") == [
        'preprocessing="minmax" cannot scale column 0 of X: its range is beyond float64 (the column spans '
        '[-1.7e+308, 1.7e+308]); divide X by a constant first'] * 2


# ---- without a process group: checkpoints, shards, the batches of equal steps --------------------

def _small():
    return np.random.default_rng(0).random((60, 5)).astype(np.float32)


def test_a_checkpoint_is_refused_by_another_fit_and_kept_whole(tmp_path):
    ck = tmp_path / "ck"
    RobustAutoencoder(**_FIT, hidden=(3,), outer_iter=2, checkpoint=ck).fit(_small())
    assert sorted(os.listdir(ck)) == ["iter-000002", "latest.json"]  # only the last complete state
    for other in (dict(X=_small() + 0.5), dict(lr=0.01), dict(penalty="l1")):
        X = other.pop("X", _small())
        with pytest.raises(ValueError, match="holds the state of another fit"):
            RobustAutoencoder(**{**_FIT, "hidden": (3,), "outer_iter": 3, **other}, checkpoint=ck).fit(X)
    # More outer iterations continue it; a finished fit's checkpoint gives its result at once.
    longer = RobustAutoencoder(**_FIT, hidden=(3,), outer_iter=3, checkpoint=ck).fit(_small())
    again = RobustAutoencoder(**_FIT, hidden=(3,), outer_iter=3, checkpoint=ck).fit(_small())
    assert longer.n_iter_ == again.n_iter_ == 3 and np.array_equal(longer.S_, again.S_)
    (ck / "latest.json").write_text("{")
    with pytest.raises(ValueError, match=r"not a valid checkpoint \(latest.json: not JSON"):
        RobustAutoencoder(**_FIT, hidden=(3,), checkpoint=ck).fit(_small())
    (ck / "latest.json").write_text('{"iteration": 3, "world_size": 4}')
    with pytest.raises(ValueError, match="written by 4 processes, this fit runs on 1"):
        RobustAutoencoder(**_FIT, hidden=(3,), checkpoint=ck).fit(_small())


def test_distributed_true_needs_a_process_group():
    with pytest.raises(ValueError) as e:
        RobustAutoencoder(**_FIT, distributed=True).fit(_small())
    assert str(e.value) == ("distributed=True needs an initialised torch.distributed process group "
                            "(torch.distributed.init_process_group, or a launch with torchrun)")


@pytest.mark.parametrize("ext", [".npy", ".csv"])
def test_each_rank_reads_its_rows(tmp_path, ext):
    X = _small()
    path = tmp_path / f"x{ext}"
    np.save(path, X) if ext == ".npy" else np.savetxt(path, X, delimiter=",")
    for world in (1, 2, 7):
        parts = [read_matrix(path, shard=(r, world)) for r in range(world)]
        assert [len(p) for p in parts] == [row_range(60, r, world)[1] - row_range(60, r, world)[0]
                                           for r in range(world)]
        np.testing.assert_allclose(np.concatenate(parts), X, rtol=1e-7)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


@pytest.mark.parametrize("n, steps", [(10, 3), (10, 10), (3, 7)])
def test_equal_steps_visit_every_row_each_epoch(n, steps):
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(x[:, 0].tolist())
            return x * self.w

    model = Recorder()
    data = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    train_epochs(model, torch.optim.SGD(model.parameters(), lr=0.0), data, Schedule(2, 4, steps),
                 torch.Generator().manual_seed(0))
    assert len(seen) == 2 * steps
    for epoch in (seen[:steps], seen[steps:]):
        rows = sorted(v for batch in epoch for v in batch)
        assert set(rows) == set(range(n)) and all(batch for batch in epoch)
        if n >= steps:
            assert len(rows) == n


def test_a_warm_start_into_a_new_checkpoint_runs_its_own_iterations(tmp_path):
    est = RobustAutoencoder(**_FIT, hidden=(3,), outer_iter=2, tol=0, warm_start=True, checkpoint=tmp_path / "a")
    est.fit(_small())
    est.set_params(checkpoint=tmp_path / "b", outer_iter=3).fit(_small())
    assert est.n_iter_ == 3 and len(est.history_) == 5
    assert [h["iteration"] for h in est.history_] == [1, 2, 3, 4, 5]


def _stacked_refused(rank, world):
    from rda_ext import fit_together

    message = ("fit_together (and lambda_path) runs on one process: with a torch.distributed process group "
               "initialised, pass distributed=False to fit each rank's rows alone")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fit_together([RobustAutoencoder(**_FIT)], _small())
    return fit_together([RobustAutoencoder(**_FIT, hidden=(3,), outer_iter=1, distributed=False)], _small())[0].n_iter_


def test_fit_together_refuses_a_process_group_unless_told_to_fit_alone(run):
    assert run(_stacked_refused, 2) == [1, 1]


def _options_refused(rank, world):
    refusals = {"preprocessing": ('preprocessing="standardize" is not available in a distributed fit (its column '
                                  'quantiles span all ranks): use "minmax", or scale X beforehand', "standardize"),
                "cuda_graphs": ("cuda_graphs is not available in a distributed fit (the gradient all-reduce runs "
                                "outside the captured step)", True)}
    for name, (message, value) in refusals.items():
        with pytest.raises(ValueError) as e:
            RobustAutoencoder(**_FIT, hidden=(3,), outer_iter=1, **{name: value}).fit(_small())
        assert str(e.value) == message
    return True


def test_the_options_a_row_sharded_fit_cannot_honour_are_refused_on_every_rank(run):
    assert run(_options_refused, 2) == [True, True]


def _seeded(rank, world, rank_1_state):
    state = np.random.RandomState(3) if rank == 0 else rank_1_state
    X = np.random.default_rng(rank).random((30, 5)).astype(np.float32)
    est = RobustAutoencoder(**{**_TINY, "outer_iter": 2, "inner_epochs": 2, "random_state": state}).fit(X)
    return [{k: v for k, v in h.items() if k != "seconds"} for h in est.history_], est.model_.state_dict()


def test_the_job_is_seeded_by_rank_0s_random_state_alone(run):
    """The weights and every rank's batch order come from rank 0's seed: a seed drawn on another
    rank (None, its own RandomState) changes nothing."""
    reference = run(_seeded, 2, np.random.RandomState(3))
    for other in (None, np.random.RandomState(5)):
        for (history, weights), (ref_history, ref_weights) in zip(run(_seeded, 2, other), reference):
            assert history == ref_history
            assert all(torch.equal(v, ref_weights[k]) for k, v in weights.items())


def _batch_seeds(rank, world):
    from rda_ext.estimator import fitting

    fit = fitting.prepare(RobustAutoencoder(**_TINY), _small())
    return fit.batch_seed, fit.engine.network.generator.initial_seed()


def test_rank_r_draws_its_batches_from_the_fits_batch_seed_plus_r():
    """Rank 0 draws the batches of a single-process fit, rank r those of seed + r."""
    from rda_ext.estimator import fitting

    single = fitting.prepare(RobustAutoencoder(**_TINY), _small())
    assert single.engine.network.generator.initial_seed() == single.batch_seed
    ranks = run_threads(_batch_seeds, 3)
    assert ranks == [(single.batch_seed, single.batch_seed + r) for r in range(3)]


def test_an_explicit_gpu_index_is_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    from rda_ext.cli import main

    np.save(tmp_path / "x.npy", _small())
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r.npz"), "--device", "cuda:1"]) == 2
    assert "each rank takes the GPU of its LOCAL_RANK" in capsys.readouterr().err


# ---- ranks that disagree: the same error on every rank instead of a hang --------------------------

_TINY = dict(hidden=(3,), outer_iter=1, inner_epochs=1, batch_size=8, device="cpu", random_state=0)

# (what rank 0 and rank 1 change of _TINY, what the error names, rank 0's value, rank 1's value).
# "X" changes the rows a rank passes; everything else is a parameter.
_DISAGREEMENTS = [
    ({}, {"X": "narrow"}, "the width of X (columns)", "5", "4"),
    ({"hidden": (8, 3)}, {"hidden": [4]}, "hidden", "(8, 3)", "(4,)"),
    ({}, {"outlier_score": "residual"}, "outlier_score", "'residual+code+knn'", "'residual'"),
    ({}, {"penalty": "l1"}, "penalty", "'l21_rows'", "'l1'"),
    ({}, {"outer_iter": 2}, "outer_iter", "1", "2"),
    ({}, {"outer_iter": 0}, "outer_iter", "1", "0"),  # invalid on one rank only: no rank checks alone
    ({"dtype": None}, {"dtype": "float64"}, "dtype", "None", "'float64'"),
    ({}, {"lam": 0.5}, "lam", "None", "0.5"),
    ({}, {"contamination": 0.2}, "contamination", "0.1", "0.2"),
    ({"preprocessing": "none"}, {"preprocessing": "minmax"}, "preprocessing", "'none'", "'minmax'"),
    ({}, {"batch_size": 16}, "batch_size", "8", "16"),
    ({}, {"lr": 0.01}, "lr", "0.001", "0.01"),
    ({}, {"tol": 0}, "tol", "1e-07", "0"),
    ({}, {"random_state": 1}, "random_state", "0", "1"),
    ({}, {"random_state": None}, "random_state", "0", "None"),  # only rank 1 would join a broadcast
    ({"checkpoint": "ck"}, {}, "checkpoint", "'ck'", "None"),
    ({}, {"distributed": True}, "distributed", "'auto'", "True"),
]


def _disagreeing(rank, world):
    X = np.random.default_rng(rank).random((30, 5)).astype(np.float32)
    out = []
    cases = [c[rank] for c in _DISAGREEMENTS]
    cases += [{"device": "tpu"} if rank else {},  # may differ, but fails its check on rank 1 alone
              {"X": "empty"} if rank else {},
              {"hidden": (4,), "penalty": "l1"} if rank else {}]
    for change in cases:
        params = {**_TINY, **change}
        rows = {"narrow": X[:, :4], "empty": X[:0]}.get(params.pop("X", None), X)
        try:
            RobustAutoencoder(**params).fit(rows)
            out.append(None)
        except ValueError as e:
            out.append(str(e))
    return out


def test_ranks_that_disagree_all_raise_the_same_error_naming_it(run):
    ranks = run(_disagreeing, 2)
    assert ranks[0] == ranks[1]  # the same message on both ranks, case by case
    messages = ranks[0]
    for (_, _, name, mine, theirs), message in zip(_DISAGREEMENTS, messages):
        assert message is not None and message.startswith(
            f"the ranks disagree on {name}: rank 0 has {mine}, rank 1 has {theirs} ("), message
    assert messages[0].endswith(" (every rank passes its rows of the same columns)")
    assert messages[1].endswith(" (every rank's estimator must have the same parameters but device, verbose, "
                                "checkpoint's path and a random_state that is not an integer)")
    device, empty, several = messages[len(_DISAGREEMENTS):]
    assert device.startswith("device must be")
    assert "0 sample(s)" in empty
    assert "disagree on hidden: rank 0 has (3,), rank 1 has (4,); on penalty: rank 0 has 'l21_rows'" in several


def _differing_but_allowed(rank, world, tmp):
    if rank == 0:
        os.mkdir(f"{tmp}/ck")
    else:
        os.symlink(f"{tmp}/ck", f"{tmp}/link")  # the same folder at another path
    torch.distributed.barrier()
    X = np.random.default_rng(rank).random((30 + rank, 5))
    allowed = [dict(verbose=False, random_state=None, checkpoint=f"{tmp}/ck", dtype="float32"),
               dict(verbose=True, random_state=np.random.default_rng(7), checkpoint=f"{tmp}/link", dtype=None,
                    device="auto" if not torch.cuda.is_available() else "cpu")][rank]
    est = RobustAutoencoder(**{**_TINY, "outer_iter": 2, **allowed}).fit(X if rank else X.astype(np.float32))
    return dict(n_iter=est.n_iter_, history=[{k: v for k, v in h.items() if k != "seconds"} for h in est.history_],
                weights=est.model_.state_dict(), rows=len(est.labels_))


def test_ranks_may_differ_in_device_verbose_checkpoint_path_and_a_drawn_seed(run, tmp_path):
    first, second = run(_differing_but_allowed, 2, str(tmp_path))
    assert first["n_iter"] == second["n_iter"] == 2 and (first["rows"], second["rows"]) == (30, 31)
    assert first["history"] == second["history"]
    assert all(torch.equal(v, second["weights"][k]) for k, v in first["weights"].items())
    assert "latest.json" in os.listdir(tmp_path / "ck")


def test_what_the_ranks_compare_of_a_parameter():
    from rda_ext.solver.collectives import _parameter_description, _ranks_text

    def same(name, a, b):
        return _parameter_description(name, a)[0] == _parameter_description(name, b)[0]

    # Values that act alike pass; values that the checks tell apart, or that take other steps, do not.
    assert same("hidden", (8, 3), [8, np.int64(3)]) and not same("hidden", (8, 3), (8, 4))
    assert same("dtype", None, "float32") and same("dtype", torch.float64, "float64")
    assert not same("dtype", None, "float64")
    assert not same("outer_iter", 3, 3.0) and not same("tied_weights", True, 1)
    assert same("lr", np.float64(0.01), 0.01) and not same("lr", np.float32(0.01), 0.01)
    assert same("random_state", None, np.random.default_rng(1)) and same("random_state", np.int64(4), 4)
    assert not same("random_state", 0, None) and not same("random_state", 0, 1)
    assert same("checkpoint", "/a/ck", os.path.join("b", "ck")) and not same("checkpoint", "/a/ck", None)
    assert _parameter_description("hidden", [8, np.int64(3)])[1] == "(8, 3)"
    assert [_ranks_text(r) for r in ([1], [0, 1], [0, 2], [0, 1, 2, 3, 5, 7, 8])] == \
        ["rank 1", "ranks 0, 1", "ranks 0, 2", "ranks 0-3, 5, 7, 8"]


# ---- what the ranks write: rda_ext.io.results --------------------------------------------------

def _written(rank, world, tmp, model):
    from rda_ext.io.results import write_fit

    X = np.random.default_rng(rank).random((20 + 7 * rank, 5)).astype(np.float32)
    X[rank] += 3  # one outlying row per rank
    est = RobustAutoencoder(**{**_TINY, "outer_iter": 2}, contamination=0.1).fit(X)
    flagged = [write_fit(est, f"{tmp}/r.npz", f"{tmp}/m.pt" if model else None, False, RowGroup()),
               write_fit(est, f"{tmp}/folder", f"{tmp}/f.pt" if model else None, True, RowGroup())]
    return dict(flagged=flagged, L=est.L_, S=est.S_, scores=est.decision_scores_, labels=est.labels_,
                lam=est.lam_, threshold=est.threshold_, history=est.history_, backend=torch.distributed.get_backend())


@pytest.mark.parametrize("model", [False, True])
def test_the_ranks_write_their_rows_into_one_npz_or_one_folder(run, tmp_path, model):
    import json

    from rda_ext.solver.loop import HISTORY_KEYS

    ranks = run(_written, 2, str(tmp_path), model)
    total = int(sum(r["labels"].sum() for r in ranks))
    assert total > 0
    assert ranks[0]["flagged"] == [total, total] and ranks[1]["flagged"] == [0, total]
    npz = np.load(tmp_path / "r.npz")
    folder = tmp_path / "folder"
    meta = json.loads((folder / "result.json").read_text())
    assert list(npz.files) == ["L", "S", "scores", "labels", "lam", "threshold", "history", "history_columns"]
    assert sorted(os.listdir(folder)) == ["L.npy", "S.npy", "labels.npy", "result.json", "scores.npy"]
    for key in ("L", "S", "scores", "labels"):
        whole = np.concatenate([r[key] for r in ranks])
        assert np.array_equal(npz[key], whole) and npz[key].dtype == whole.dtype, key
        assert np.array_equal(np.load(folder / f"{key}.npy"), whole), key
    history = [[h[k] for k in HISTORY_KEYS] for h in ranks[0]["history"]]
    assert float(npz["lam"]) == meta["lam"] == ranks[0]["lam"]
    assert float(npz["threshold"]) == meta["threshold"] == ranks[0]["threshold"]
    assert npz["history"].tolist() == meta["history"] == history
    assert npz["history_columns"].tolist() == meta["history_columns"] == list(HISTORY_KEYS)
    assert (meta["rows"], meta["world_size"], meta["backend"]) == (27 + 20, 2, ranks[0]["backend"])
    expected = ["f.pt", "folder", "m.pt", "r.npz"] if model else ["folder", "r.npz"]
    assert sorted(os.listdir(tmp_path)) == expected  # and no temporary left
    for name in ("m.pt", "f.pt") if model else ():
        loaded = RobustAutoencoder.load(tmp_path / name)
        # The model file holds the training scores and labels of all rows, of rank 0's network.
        assert np.array_equal(loaded.decision_scores_, npz["scores"])
        assert np.array_equal(loaded.labels_, npz["labels"])
        assert loaded.threshold_ == ranks[0]["threshold"]


# ---- the row group's exchanges, rank by rank ----------------------------------------------------

def _exchanges(rank, world):
    from rda_ext.solver.collectives import agreed

    ranks = RowGroup()
    t = torch.tensor([float(rank), -float(rank), 2.0 ** rank])

    def fails_on_ranks_1_and_2():
        if rank:
            raise ValueError(f"rank {rank} failed")

    try:
        agreed(ranks, fails_on_ranks_1_and_2)
        failure = None
    except ValueError as e:
        failure = str(e)
    disagreements = []
    for values, note in (({"a": ("1", "one")} if rank < 2 else {"a": ("2", "two")}, None),
                         ({"a": ("1", "one")} if rank == 0 else {}, "a note")):
        try:
            ranks.agree(values) if note is None else ranks.agree(values, note=note)
        except ValueError as e:
            disagreements.append(str(e))
    v = torch.tensor([0.5, 0.25, 1.0][rank:rank + 1] + [0.125] * rank, dtype=torch.float64)  # 6 values in all
    return dict(rank=ranks.rank, size=ranks.size, seed=ranks.broadcast_int(rank + 7), disagreements=disagreements,
                quantiles=[ranks.quantile(v, q) for q in (0.5, 0.9, 0.99)],
                norms=[ranks.norms(torch.full((2,), x, dtype=torch.float64)).tolist() for x in (0.0, 1e-200, 1e200)],
                sum=ranks.sum(t).tolist(), max=ranks.max(t).tolist(), min=ranks.min(t).tolist(),
                count=ranks.count(rank + 1), rows=ranks.rows_per_rank(10 * rank), parts=ranks.gather_to_first(rank * "x"),
                first_error=ranks.first_error(None if rank == 0 else RuntimeError(f"at {rank}")),
                no_error=ranks.first_error(None), failure=failure, shard=ranks.shard)


def test_each_exchange_of_the_ranks(run):
    got = run(_exchanges, 3)
    for rank, g in enumerate(got):
        assert (g["rank"], g["size"], g["shard"]) == (rank, 3, (rank, 3))
        assert g["seed"] == 7  # rank 0's value
        assert g["sum"] == [3.0, -3.0, 7.0] and g["max"] == [2.0, 0.0, 4.0] and g["min"] == [0.0, -2.0, 1.0]
        assert g["count"] == 6 and g["rows"] == [0, 10, 20]
        assert g["parts"] == (["", "x", "xx"] if rank == 0 else None)
        assert g["first_error"] == "at 1" and g["no_error"] is None
        # The failing ranks raise their own error, the others the lowest failing rank's message.
        assert g["failure"] == ("rank 1 failed" if rank < 2 else "rank 2 failed")
        assert g["disagreements"] == ["the ranks disagree on a: ranks 0, 1 have one, rank 2 has two",
                                      "the ranks disagree on a: rank 0 has one, ranks 1, 2 have nothing (a note)"]
        values = np.array([0.5, 0.25, 0.125, 1.0, 0.125, 0.125])
        assert g["quantiles"] == [float(np.quantile(values, q)) for q in (0.5, 0.9, 0.99)]
        # Summed as squares relative to the largest part: neither 1e-200 nor 1e200 under- or overflows.
        assert g["norms"][0] == [0.0, 0.0]
        np.testing.assert_allclose(g["norms"][1:], [[math.sqrt(3) * 1e-200] * 2, [math.sqrt(3) * 1e200] * 2],
                                   rtol=1e-15)


def test_only_rank_0_allocates_the_folder_and_puts_it_in_place(tmp_path, monkeypatch):
    from rda_ext.io import result_folder

    calls = []
    for name in ("create", "finish"):
        original = getattr(result_folder, name)
        monkeypatch.setattr(result_folder, name, lambda *a, _name=name, _original=original: (
            calls.append((_name, torch.distributed.get_rank())), _original(*a))[1])
    run_threads(_written, 2, str(tmp_path), False)
    assert sorted(calls) == [("create", 0), ("finish", 0)]


def _training_stats(rank, world):
    X = torch.rand(5 + rank, 3, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    s = _solver(DistributedRDASolver, X, X.clone(), X.clone(), "l1", 0.5, ranks=RowGroup())
    loss, recon = s.training_stats(torch.tensor(float(rank + 1)), torch.tensor(10.0 * (rank + 1)))
    return loss.item(), recon.item()


def test_the_training_loss_is_the_mean_of_the_ranks_and_the_reconstruction_their_sum(run):
    assert run(_training_stats, 2) == [(1.5, 30.0), (1.5, 30.0)]


def _convergence_problem(seed, scale, exact):
    X, L, P, cuts = _problem(seed, torch.float64, False)
    return X * scale, (X if exact else L) * scale, P * scale, cuts


def _convergence(rank, world, seed, scale, exact):
    X, L, P, cuts = _convergence_problem(seed, scale, exact)
    rows = slice(cuts[rank], cuts[rank + 1])
    s = _solver(DistributedRDASolver, X[rows], L[rows], P[rows], "l1", 0.1, ranks=RowGroup())
    return s.convergence()


@pytest.mark.parametrize("scale, exact", [(0.0, False), (1e-3, False), (1.0, False), (1e-3, True)])
def test_the_convergence_numbers_of_the_ranks_are_those_of_all_rows(run, scale, exact):
    """c1 and c2 relative to ||X||, also where ||X|| < 1 and where L is X (c1 = 0); the plain norms
    where X is 0."""
    seed = _seed()
    X, L, P, _ = _convergence_problem(seed, scale, exact)
    want = _solver(RDASolver, X, L, P, "l1", 0.1).convergence()
    assert (want[0] == 0) == (exact or scale == 0)
    for got in run(_convergence, 3, seed, scale, exact):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def _resumed_with_other_rows_on_rank_1(rank, world, tmp):
    X = np.random.default_rng(rank).random((20, 4)).astype(np.float32)
    params = dict(**{**_TINY, "outer_iter": 2}, checkpoint=f"{tmp}/ck")
    RobustAutoencoder(**params).fit(X)
    try:
        RobustAutoencoder(**params).fit(X[::-1].copy() if rank == 1 else X)
    except ValueError as e:
        return str(e)


def test_a_checkpoint_names_the_rank_whose_rows_are_not_those_it_was_written_for(run, tmp_path):
    message = (f"checkpoint {tmp_path}/ck holds the state of another fit, which differs in its data of rank 1 "
               "(other values, or the same in another order of rows or columns): remove it, or choose another "
               "directory")
    assert run(_resumed_with_other_rows_on_rank_1, 2, str(tmp_path)) == [message, message]
