"""The training step captured in a CUDA graph (``cuda_graphs=True``): full batches go through a
static buffer and one replayed step, a last partial batch is trained eagerly, and the numbers are
those of the step without a graph.

A CPU cannot capture a graph; there the capture is replaced by a replay that runs the step eagerly
(zeroing the gradients first, as a replayed backward overwrites them), which checks everything but
the capture itself: the gathering into the static buffer, the warm-up steps, the partial batch and
the gradients kept in place once captured. The CUDA tests capture for real."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import requires_cuda
from helpers import planted

from rda_ext import RobustAutoencoder
from rda_ext.solver import RDASolver
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.engine import Engine
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.training import GraphedStep, Network, make_optimizer, train_epochs


def eager_capture(calls: list):
    """A stand-in for capture_cuda_graph that replays by running the step. A graph writes the
    gradients into the tensors it captured: every replay checks that they are still the ones the
    first replay made (an eager step between replays must zero them in place, not replace them)."""

    def capture(step):
        calls.append("capture")
        model = step.__self__.model
        captured = []

        def replay():
            calls.append("replay")
            if captured:
                assert all(p.grad is g for p, g in zip(model.parameters(), captured))
            model.zero_grad(set_to_none=False)
            loss = step()
            captured[:] = captured or [p.grad for p in model.parameters()]
            return loss

        return replay

    return capture


def network(seed: int, d: int, dtype=torch.float64, device="cpu", optimizer="adam"):
    model = DeepAutoencoder((d, 8, 3), "sigmoid", generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    return model, make_optimizer(model, optimizer, 1e-2, capturable=torch.device(device).type == "cuda")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("n", [100, 96, 20])  # a partial last batch, none, fewer full batches than the warm-up
def test_the_graphed_path_trains_as_the_eager_step(gen, n, optimizer):
    seed = int(gen.initial_seed())
    data = torch.rand(n, 7, dtype=torch.float64, generator=gen)
    (m1, o1), (m2, o2) = network(seed, 7, optimizer=optimizer), network(seed, 7, optimizer=optimizer)
    calls = []
    graphed = GraphedStep(m2, o2, data.new_empty(16, 7), capture=eager_capture(calls))
    losses = []
    for epochs in (3, 2):  # the step outlives a call: captured once, replayed in the next one
        a = train_epochs(m1, o1, data, Schedule(epochs, 16), torch.Generator().manual_seed(seed))
        b = train_epochs(m2, o2, data, Schedule(epochs, 16), torch.Generator().manual_seed(seed), graphed=graphed)
        losses.append((a, b))
    for a, b in losses:
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-12, atol=0)
    full = n // 16 * 5  # full batches over the 5 epochs
    assert graphed.warmed == min(GraphedStep.WARMUP, full)
    assert calls.count("capture") == (full > GraphedStep.WARMUP)
    assert calls.count("replay") == max(0, full - GraphedStep.WARMUP)


def test_the_batch_buffer_holds_the_last_full_batch_gathered(gen):
    data = torch.rand(40, 5, dtype=torch.float64, generator=gen)
    model, optim = network(1, 5)
    graphed = GraphedStep(model, optim, data.new_empty(8, 5), capture=eager_capture([]))
    train_epochs(model, optim, data, Schedule(1, 8), torch.Generator().manual_seed(3), graphed=graphed)
    last_rows = torch.randperm(40, generator=torch.Generator().manual_seed(3))[32:40]
    assert torch.equal(graphed.batch, data[last_rows])


def test_a_solver_with_a_graphed_step_iterates_as_without(gen):
    seed = int(gen.initial_seed())
    X = torch.rand(90, 6, dtype=torch.float64, generator=gen)
    rows = []
    for graphed in (False, True):
        model, optim = network(seed, 6)
        step = GraphedStep(model, optim, X.new_empty(16, 6), capture=eager_capture([])) if graphed else None
        solver = RDASolver(X, torch.zeros_like(X), torch.zeros_like(X), penalty="l21_rows", lam=None,
                           contamination=0.1)
        engine = Engine(Network(model, optim, Schedule(2, 16), torch.Generator().manual_seed(seed), graphed=step),
                        [solver])
        rows.append([{k: v for k, v in engine.iterate()[0].items() if k != "seconds"} for _ in range(3)])
        rows[-1].append(solver.S.clone())
        assert step is None or step.captured  # the network trained through it
    for a, b in zip(rows[0][:3], rows[1][:3]):
        assert b == pytest.approx(a, rel=1e-10)
    torch.testing.assert_close(rows[1][3], rows[0][3], rtol=1e-10, atol=1e-12)


def test_cuda_graphs_are_ignored_on_a_cpu(gen):
    seed = int(gen.initial_seed())
    X, _ = planted(seed, n=80, d=12)
    kw = dict(hidden=(8, 3), outer_iter=2, inner_epochs=2, batch_size=16, device="cpu", random_state=seed)
    a = RobustAutoencoder(**kw).fit(X)
    b = RobustAutoencoder(cuda_graphs=True, **kw).fit(X)
    assert (b.S_ == a.S_).all() and (b.L_ == a.L_).all()
    assert not b._optim.param_groups[0]["capturable"]


@requires_cuda
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_captured_step_trains_as_the_eager_step_on_cuda(gen, precision):
    seed = int(gen.initial_seed())
    amp = torch.bfloat16 if precision == "bfloat16" else None
    data = torch.rand(200, 30, generator=gen).cuda()
    (m1, o1), (m2, o2) = network(seed, 30, torch.float32, "cuda"), network(seed, 30, torch.float32, "cuda")
    graphed = GraphedStep(m2, o2, data.new_empty(32, 30), amp)
    a = train_epochs(m1, o1, data, Schedule(4, 32), torch.Generator("cuda").manual_seed(seed), amp=amp)
    b = train_epochs(m2, o2, data, Schedule(4, 32), torch.Generator("cuda").manual_seed(seed), amp=amp, graphed=graphed)
    assert graphed.captured
    tol = 1e-5 if amp is None else 2e-2
    torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p2, p1, rtol=tol, atol=tol)


@requires_cuda
def test_an_estimator_with_cuda_graphs_fits_as_without_and_warm_starts(gen):
    seed = int(gen.initial_seed())
    X, _ = planted(seed, n=300, d=20)
    kw = dict(hidden=(12, 4), outer_iter=3, inner_epochs=2, batch_size=32, device="cuda", random_state=seed,
              precision="float32", tol=0)
    a = RobustAutoencoder(**kw).fit(X)
    b = RobustAutoencoder(cuda_graphs=True, **kw).fit(X)
    assert b._optim.param_groups[0]["capturable"]
    torch.testing.assert_close(torch.as_tensor(b.L_), torch.as_tensor(a.L_), rtol=1e-4, atol=1e-5)
    warm = copy.deepcopy(b).set_params(warm_start=True, cuda_graphs=False).fit(X)
    assert not warm._optim.param_groups[0]["capturable"]


def test_a_graphed_step_refuses_a_target_or_a_loss(gen):
    data = torch.rand(40, 5, dtype=torch.float64, generator=gen)
    model, optim = network(1, 5)
    graphed = GraphedStep(model, optim, data.new_empty(8, 5), capture=eager_capture([]))
    for extra in (dict(target=data), dict(loss_fn=lambda batch: model(batch).sum())):
        with pytest.raises(ValueError) as info:
            train_epochs(model, optim, data, Schedule(1, 8), torch.Generator().manual_seed(0), graphed=graphed, **extra)
        assert str(info.value) == "a graphed step trains an autoencoder's own loss: no target or loss_fn with it"
    with pytest.raises(ValueError) as info:
        train_epochs(model, optim, data, Schedule(1, 8, steps=5), torch.Generator().manual_seed(0), graphed=graphed)
    assert str(info.value) == "a graphed step trains full batches: not with a schedule of lockstep batches"


@pytest.mark.parametrize("graphed", [False, True])
def test_every_step_runs_in_the_fits_precision(gen, graphed):
    """A network with amp=bfloat16 trains, eagerly or through its graphed step, bit for bit as a
    hand-written loop of steps under bfloat16 autocast, and not as the float32 steps."""
    seed = int(gen.initial_seed())
    data = torch.rand(64, 7, generator=gen)

    def fresh():
        return network(seed, 7, torch.float32)

    def trained(amp):
        model, optim = fresh()
        step = GraphedStep(model, optim, data.new_empty(16, 7), amp, capture=eager_capture([])) if graphed else None
        Network(model, optim, Schedule(2, 16), torch.Generator().manual_seed(seed), amp=amp, graphed=step).train(data)
        assert step is None or step.captured
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    model, optim = fresh()
    order = torch.Generator().manual_seed(seed)
    for _ in range(2):
        for rows in torch.randperm(64, generator=order).split(16):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(data[rows]), data[rows])
            optim.zero_grad()
            loss.backward()
            optim.step()
    by_hand = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(trained(torch.bfloat16), by_hand)
    assert not torch.equal(trained(None), by_hand)
