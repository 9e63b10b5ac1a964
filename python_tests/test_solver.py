"""The RDA iteration over tensors (rda_ext.solver): every number it reports after a proximal step
is checked against the reference computed from scratch on the same L."""

import math
import re
import time

import numpy as np
import pytest
import torch
from conftest import DEVICES

from rda_ext import RobustAutoencoder, ops, reference
from rda_ext.solver import RDASolver, TrainingDiverged, survival_threshold
from rda_ext.solver.engine import Engine
from rda_ext.solver.schedule import STEP_BUDGET, Schedule
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.training import Network, make_optimizer

CONTAMINATION = 0.1


def make_fit(gen, device, penalty, lam, n=97, d=23) -> Engine:
    """One fit: its engine, whose ``fits[0]`` is the solver."""
    X = torch.rand(n, d, generator=gen, dtype=torch.float64).to(device)
    model = DeepAutoencoder((d, 5), "elu", "linear", generator=gen).to(device=device, dtype=torch.float64)
    network = Network(model, make_optimizer(model, "adam", 1e-2), Schedule(epochs=2, batch_size=16),
                      torch.Generator(device=device).manual_seed(int(gen.initial_seed())))
    solver = RDASolver(X, torch.zeros_like(X), torch.zeros_like(X), penalty=penalty, lam=lam,
                       contamination=CONTAMINATION)
    return Engine(network, [solver])


def make_solver(gen, device, penalty, lam, n=97, d=23) -> RDASolver:
    return make_fit(gen, device, penalty, lam, n, d).fits[0]


def groups_of(T, penalty):
    dim = ops.GROUP_DIM[penalty]
    return T.abs().flatten() if dim is None else reference.group_norms(T, dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("penalty", ops.PENALTIES)
@pytest.mark.parametrize("lam_given", [True, False], ids=["lam", "contamination"])
def test_iteration_reports_what_the_reference_computes(gen, device, penalty, lam_given):
    fit = make_fit(gen, device, penalty, 0.3 if lam_given else None)
    solver = fit.fits[0]
    fit.iterate()  # S and LS_prev leave zero
    S_prev, LS_prev = solver.S.clone(), solver.LS_prev.clone()
    (row,) = fit.iterate()
    X, L, S = solver.X, solver.L, solver.S
    R = X - L
    lam = row["lam"]
    if not lam_given:
        groups = groups_of(R, penalty)
        survivors = round(CONTAMINATION * groups.numel())
        assert int((groups > lam).sum()) == survivors
        assert lam == pytest.approx(survival_threshold(groups, CONTAMINATION), rel=1e-12)
    else:
        assert lam == 0.3
    torch.testing.assert_close(S, reference.shrink_residual(X, L, lam, penalty), rtol=1e-12, atol=1e-14)
    s_groups = groups_of(S, penalty)
    assert row["n_nonzero"] == int((s_groups > 0).sum())
    recon = (X - S_prev - L).norm().item()
    assert row["recon_error"] == pytest.approx(recon, rel=1e-9)
    assert row["objective"] == pytest.approx(recon + lam * s_groups.sum().item(), rel=1e-9)
    c1, c2 = reference.convergence(X, L, S, LS_prev).tolist()
    assert (row["c1"], row["c2"]) == (pytest.approx(c1, rel=1e-12), pytest.approx(c2, rel=1e-12))
    torch.testing.assert_close(solver.LS_prev, L + S, rtol=0, atol=0)
    torch.testing.assert_close(solver.row_scores(), reference.group_norms(X, 1, L), rtol=1e-12, atol=0)


@pytest.mark.parametrize("penalty", ops.PENALTIES)
def test_run_stops_at_tol_and_reports_each_iteration(gen, penalty):
    seen = []
    ((rows, _, _),) = make_fit(gen, "cpu", penalty, 0.3).run(6, tol=0.0, on_iteration=seen.append)
    assert len(rows) == 6 and seen == [[row] for row in rows]
    # A tolerance every iteration meets stops after the first.
    ((rows, _, _),) = make_fit(gen, "cpu", penalty, 0.3).run(6, tol=1e9)
    assert len(rows) == 1


@pytest.mark.parametrize("fraction, n", [(0.1, 97), (0.05, 20), (0.3, 10), (0.01, 30)])
def test_survival_threshold_lets_exactly_the_fraction_survive(gen, fraction, n):
    norms = torch.rand(n, generator=gen, dtype=torch.float64)
    lam = survival_threshold(norms, fraction)
    survivors = round(fraction * n)
    assert int((norms > lam).sum()) == survivors
    if survivors:  # halfway between the smallest survivor and the largest shrunk norm
        top = norms.sort(descending=True).values
        assert lam == pytest.approx((top[survivors - 1] + top[survivors]).item() / 2, rel=1e-15)


@pytest.mark.parametrize("penalty", ops.PENALTIES)
@pytest.mark.parametrize("lam", [0.3, None], ids=["lam", "contamination"])
def test_divergence_stops_with_a_clear_error(gen, penalty, lam):
    """SGD with a huge step makes the weights, then L, non-finite: the iteration that sees it raises
    TrainingDiverged naming itself, instead of a NaN decomposition or a kernel's lam error."""
    fit = make_fit(gen, "cpu", penalty, lam)
    solver = fit.fits[0]
    fit.network.optimizer = make_optimizer(fit.network.model, "sgd", 1e6)
    with pytest.raises(TrainingDiverged) as e:
        fit.run(5, tol=0.0)
    assert 1 <= solver.iterations <= 5
    message = str(e.value)
    assert re.fullmatch(
        rf"training diverged at outer iteration {solver.iterations}: .+ is not finite \(last training loss \S+, "
        r"reconstruction error \S+\); lower lr, use optimizer='adam', or scale X \(e\.g\. to \[0, 1\] with "
        r"output_activation='sigmoid', or to unit variance with 'linear'\)", message), message


def test_a_finite_run_is_not_reported_as_diverged(gen):
    fit = make_fit(gen, "cpu", "l21_rows", None)
    ((rows, solver, _),) = fit.run(3, tol=0.0)
    assert len(rows) == 3 and solver.iterations == 3


@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
def test_nonzero_groups_counted_as_the_kernel_decides_for_a_lam_float32_rounds(gen, penalty):
    """float32 data, lam just below a group's float32 norm but rounding to it in float32: the kernel
    keeps the group (it compares in float64), and so must the count of non-zero groups."""
    solver = make_solver(gen, "cpu", penalty, None)
    for name in ("X", "S", "LS_prev"):
        setattr(solver, name, getattr(solver, name).float())
    solver.L = (solver.X + 0.1 * torch.randn(solver.X.shape, generator=gen)).float()
    norms = ops.group_norms(solver.X, ops.GROUP_DIM[penalty], minus=solver.L)
    k = int(norms.argsort()[norms.numel() // 2])
    solver.lam = float(norms[k]) * (1 - 1e-9)
    assert torch.tensor(solver.lam, dtype=torch.float32) == norms[k]  # lam rounds to the norm in float32
    _, (pen, nnz, _, _) = solver.proximal_step()
    s_groups = groups_of(solver.S, penalty)
    assert s_groups[k] > 0
    assert int(nnz) == int((s_groups > 0).sum())


class Scripted(Network):
    """A network whose training gives ``loss`` and whose reconstruction writes ``L`` (default
    0.9 X) and gives ``recon_sq``."""

    def __init__(self, X, loss, L, recon_sq):
        self.X, self.loss, self.L, self.recon_sq = X, loss, L, recon_sq

    def train(self, L):
        return torch.tensor([self.loss], dtype=torch.float64)

    def reconstruct(self, L):
        L.copy_(0.9 * self.X if self.L is None else self.L)
        return torch.tensor([self.recon_sq], dtype=torch.float64)


def scripted(solver, loss=0.5, L=None, recon_sq=1.0) -> Engine:
    """The solver's fit with a ``Scripted`` network."""
    return Engine(Scripted(solver.X, loss, L, recon_sq), [solver])


def _with_inf(T):
    T = T.clone()
    T[3, 2] = math.inf
    return T


# What each case makes non-finite, and the name the error gives it (the first non-finite number
# in the order loss, reconstruction, c1, c2, penalty).
DIVERGED = {
    "loss": (dict(loss=math.nan), "the training loss"),
    "recon": (dict(recon_sq=math.nan), "the reconstruction AE(X - S)"),
    "c1": (dict(L=lambda X: _with_inf(0.9 * X)), "L + S"),
}


@pytest.mark.parametrize("case", list(DIVERGED))
def test_the_error_names_the_number_that_is_not_finite(gen, monkeypatch, case):
    solver = make_solver(gen, "cpu", "l21_rows", 0.3)
    kwargs, what = DIVERGED[case]
    kwargs = {k: v(solver.X) if callable(v) else v for k, v in kwargs.items()}
    with pytest.raises(TrainingDiverged) as e:
        scripted(solver, **kwargs).iterate()[0]
    assert str(e.value).startswith(f"training diverged at outer iteration 1: {what} is not finite (last training loss ")


def test_the_error_names_L_plus_S_for_a_non_finite_c2(gen, monkeypatch):
    """Only LS_prev (the previous L + S) is infinite: c1 and the penalty are finite, c2 is not."""
    solver = make_solver(gen, "cpu", "l21_rows", 0.3)
    solver.LS_prev = _with_inf(solver.LS_prev)
    with pytest.raises(TrainingDiverged) as e:
        scripted(solver).iterate()[0]
    assert str(e.value).startswith("training diverged at outer iteration 1: L + S is not finite (last training loss 0.5, ")


def test_the_error_names_S_for_a_penalty_that_overflows(gen, monkeypatch):
    """float32 entries near the largest float32: each row's l1 norm overflows, while c1 (0) and
    c2 (1) are computed overflow-safe and stay finite."""
    solver = make_solver(gen, "cpu", "l1", 0.0, n=4, d=3)
    solver.X = torch.full((4, 3), 3e38)
    solver.S, solver.LS_prev, solver.L = (torch.zeros_like(solver.X) for _ in range(3))
    with pytest.raises(TrainingDiverged) as e:
        scripted(solver, L=torch.zeros(4, 3)).iterate()[0]
    assert str(e.value).startswith("training diverged at outer iteration 1: S is not finite (last training loss 0.5, ")


@pytest.mark.parametrize("penalty", ops.PENALTIES)
def test_the_error_names_the_residual_when_it_gives_lam(gen, monkeypatch, penalty):
    solver = make_solver(gen, "cpu", penalty, None)
    with pytest.raises(TrainingDiverged) as e:
        scripted(solver, L=torch.full_like(solver.X, math.nan)).iterate()[0]
    assert str(e.value).startswith(
        "training diverged at outer iteration 1: the residual X - AE(X - S), whose quantile gives lam, is not finite "
        "(last training loss nan, reconstruction error nan)"
    )


def test_the_l1_penalty_is_summed_in_float64(gen, monkeypatch):
    """float32 S whose entries a float32 sum would round away (1 beside 1e8): the penalty of S, hence
    the objective, is the exact sum."""
    solver = make_solver(gen, "cpu", "l1", 0.0, n=4, d=3)
    solver.X = torch.tensor([[1e8], [1.0]] * 500)
    solver.S, solver.LS_prev, solver.L = (torch.zeros_like(solver.X) for _ in range(3))
    row = scripted(solver, L=torch.zeros_like(solver.X), recon_sq=0.0).iterate()[0]
    assert row["objective"] == 0.0  # lam = 0
    pen, nnz = solver.penalty_stats(1.0)
    assert float(pen) == 500 * 1e8 + 500 and int(nnz) == 1000
    assert solver.nonzero_groups(0.0) is None  # every entry is a group: no per-group norms kept


@pytest.mark.parametrize("penalty", ["l21_rows", "l21_cols"])
def test_a_group_whose_norm_equals_lam_is_shrunk_to_zero_and_not_counted(gen, penalty):
    solver = make_solver(gen, "cpu", penalty, None)
    solver.L = solver.X + 0.1 * torch.randn(solver.X.shape, generator=gen, dtype=torch.float64)
    norms = ops.group_norms(solver.X, ops.GROUP_DIM[penalty], minus=solver.L)
    k = int(norms.argsort()[norms.numel() // 2])
    solver.lam = float(norms[k])
    _, (pen, nnz, _, _) = solver.proximal_step()
    s_groups = groups_of(solver.S, penalty)
    assert s_groups[k] == 0
    assert int(nnz) == int((s_groups > 0).sum()) == norms.numel() // 2
    assert torch.equal(solver.nonzero_groups(solver.lam), s_groups > 0)


def test_seconds_are_the_time_the_iteration_took(gen):
    fit = make_fit(gen, "cpu", "l21_rows", 0.3)
    t0 = time.perf_counter()
    (row,) = fit.iterate()
    assert 0 < row["seconds"] <= time.perf_counter() - t0


def test_a_budget_trains_a_fresh_sample_of_distinct_rows_in_every_epoch():
    gen = torch.Generator().manual_seed(0)
    plain, lockstep = Schedule(1, 4, budget=3), Schedule(1, 4, steps=25, budget=3)
    for schedule in (plain, lockstep):
        first, second = schedule.batches(100, gen, torch.device("cpu")), schedule.batches(100, gen, torch.device("cpu"))
        assert [len(b) for b in first] == [len(b) for b in second] == [4, 4, 4]
        assert len(torch.cat(first).unique()) == 12 and not torch.equal(torch.cat(first), torch.cat(second))
    assert [len(b) for b in Schedule(1, 4, budget=3).batches(9, gen, torch.device("cpu"))] == [4, 4, 1]
    assert plain.rows_trained(100) == lockstep.rows_trained(100) == 12 and plain.rows_trained(9) == 9
    assert Schedule(2, 4, steps=25, budget=30).rows_trained(100) == 200 and Schedule(3, 4).rows_trained(10) == 30


@pytest.mark.parametrize("n", [1, 9, 25, 100, 101])
@pytest.mark.parametrize("schedule", [Schedule(2, 4), Schedule(1, 4, budget=3), Schedule(3, 4, steps=7),
                                      Schedule(1, 4, steps=7, budget=3), Schedule(2, 4, steps=25, budget=30)],
                         ids=repr)
def test_the_rows_trained_are_those_of_the_batches(schedule, n):
    gen = torch.Generator().manual_seed(n)
    rows = sum(len(b) for _ in range(schedule.epochs) for b in schedule.batches(n, gen, torch.device("cpu")))
    assert schedule.rows_trained(n) == rows and isinstance(schedule.rows_trained(n), int)


def test_auto_epochs_of_many_rows_take_the_step_budget_and_numbers_of_epochs_take_every_batch(monkeypatch):
    from rda_ext.solver import schedule
    from rda_ext.solver.fused_step import FusedStep

    monkeypatch.setattr(schedule, "STEP_BUDGET", 5)
    steps = []
    real = FusedStep.__call__
    monkeypatch.setattr(FusedStep, "__call__", lambda self, batch: (steps.append(len(batch)), real(self, batch))[1])
    X = np.random.default_rng(0).random((1000, 4)).astype(np.float32)
    params = dict(hidden=(3,), outer_iter=2, batch_size=16, device="cpu", random_state=0)
    RobustAutoencoder(**params).fit(X)
    assert steps == [16] * 10  # 5 per outer iteration, not the epoch's 63
    steps.clear()
    RobustAutoencoder(**params, inner_epochs=1).fit(X)
    assert steps == ([16] * 62 + [8]) * 2


def test_the_schedule_of_a_fit_follows_its_largest_shard():
    # "auto": the fewest epochs of the largest shard (100 rows, 4 batches of 32) that make 50 steps,
    # each epoch cut to the step budget.
    assert Schedule.of_fit("auto", 32, [100, 70], lockstep=True) == Schedule(13, 32, steps=4, budget=STEP_BUDGET)
    assert Schedule.of_fit("auto", 32, [100, 70], lockstep=False) == Schedule(13, 32, budget=STEP_BUDGET)
    assert Schedule.of_fit(3, 32, [5], lockstep=False) == Schedule(3, 32)
    assert Schedule.of_fit("auto", np.int16(32), [10**6], lockstep=False) == Schedule(1, 32, budget=STEP_BUDGET)


@pytest.mark.parametrize("n, batch_size, sizes", [(70, 32, [32, 32, 6]), (64, 32, [32, 32]), (5, 32, [5])])
def test_an_epoch_is_a_permutation_cut_into_batches(gen, n, batch_size, sizes):
    batches = Schedule(1, batch_size).batches(n, gen, torch.device("cpu"))
    assert [len(b) for b in batches] == sizes
    assert sorted(torch.cat(batches).tolist()) == list(range(n))


@pytest.mark.parametrize("n, steps, sizes", [(70, 4, [18, 18, 17, 17]), (3, 5, [2, 1, 1, 1, 1]), (2, 7, [2, 1, 1, 1, 1, 1, 1])])
def test_a_lockstep_epoch_takes_its_steps_whatever_the_rows(gen, n, steps, sizes):
    """Every row once where there are enough of them; where there are fewer rows than steps, each
    is drawn again (as a whole permutation) until every step has one."""
    batches = Schedule(1, 32, steps=steps).batches(n, gen, torch.device("cpu"))
    assert [len(b) for b in batches] == sizes
    rows = torch.cat(batches)
    assert set(rows.tolist()) == set(range(n))
    assert rows.dtype == torch.int64


@pytest.mark.parametrize("epochs, n, batch_size, mean", [(2, 70, 32, 70 / 3), (1, 70, 100, 70.0), (3, 4, 1, 1.0)])
def test_training_reports_the_mean_loss_of_the_last_epoch(gen, epochs, n, batch_size, mean):
    calls = []

    def step(rows):
        calls.append(len(rows))
        return torch.tensor([float(len(rows)), 1.0])

    got = Schedule(epochs, batch_size).train(step, n, gen, torch.device("cpu"), shape=(2,))
    assert sum(calls) == epochs * n
    assert got.dtype == torch.float64 and got.shape == (2,)
    assert got[0].item() == pytest.approx(mean, rel=1e-15)  # were every epoch summed, epochs times this
    assert got[1].item() == 1.0
    assert Schedule(0, batch_size).train(step, n, gen, torch.device("cpu")).item() == 0
