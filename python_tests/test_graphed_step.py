"""The training step captured in a CUDA graph (``cuda_graphs=True``): full batches go through a
static buffer and one replayed step, a last partial batch is trained eagerly, and the numbers are
those of the step without a graph.

A CPU cannot capture a graph; there the capture is replaced by a replay that runs the step eagerly,
which checks everything but the capture itself: the gathering into the static buffer, the warm-up
steps, the partial batch and the gradients kept in place (a graph writes them into the tensors it
captured). The CUDA tests capture for real."""

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
from rda_ext.solver.fused_step import FusedStep
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.training import GraphedStep, Network, make_optimizer


def eager_capture(calls: list):
    """A stand-in for capture_cuda_graph whose replay runs the step."""

    def capture(step):
        calls.append("capture")

        def replay():
            calls.append("replay")
            return step()

        return replay

    return capture


def network(seed: int, d: int, dtype=torch.float64, device="cpu", optimizer="adam"):
    model = DeepAutoencoder((d, 8, 3), "sigmoid", generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    return model, make_optimizer(model, optimizer, 1e-2)


def trainer(model, optim, data, seed, graphed=None, amp=None, epochs=2, batch=16) -> Network:
    return Network(model, optim, Schedule(epochs, batch), torch.Generator(device=data.device).manual_seed(seed),
                   amp=amp, graphed=graphed)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("n", [100, 96, 20])  # a partial last batch, none, fewer full batches than the warm-up
def test_the_graphed_path_trains_as_the_eager_step(gen, n, optimizer):
    seed = int(gen.initial_seed())
    data = torch.rand(n, 7, dtype=torch.float64, generator=gen)
    (m1, o1), (m2, o2) = network(seed, 7, optimizer=optimizer), network(seed, 7, optimizer=optimizer)
    calls = []
    graphed = GraphedStep(data.new_empty(16, 7), capture=eager_capture(calls))
    eager, replayed = trainer(m1, o1, data, seed), trainer(m2, o2, data, seed, graphed)
    grads = None
    for _ in range(2):  # the step outlives a call: captured once, replayed in the next one
        assert torch.equal(replayed.train(data), eager.train(data))
        grads = grads or [p.grad for p in m2.parameters()]
        assert all(p.grad is g for p, g in zip(m2.parameters(), grads))  # written in place, as a graph does
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p2, p1)
    for s1, s2 in zip(o1.state_dict()["state"].values(), o2.state_dict()["state"].values()):
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    full = n // 16 * 4  # full batches over the 4 epochs
    assert graphed.warmed == min(GraphedStep.WARMUP, full)
    assert calls.count("capture") == (full > GraphedStep.WARMUP)
    assert calls.count("replay") == max(0, full - GraphedStep.WARMUP)


def test_the_batch_buffer_holds_the_last_full_batch_gathered(gen):
    data = torch.rand(40, 5, dtype=torch.float64, generator=gen)
    model, optim = network(1, 5)
    graphed = GraphedStep(data.new_empty(8, 5), capture=eager_capture([]))
    trainer(model, optim, data, 3, graphed, epochs=1, batch=8).train(data)
    last_rows = torch.randperm(40, generator=torch.Generator().manual_seed(3))[32:40]
    assert torch.equal(graphed.batch, data[last_rows])


def test_a_solver_with_a_graphed_step_iterates_as_without(gen):
    seed = int(gen.initial_seed())
    X = torch.rand(90, 6, dtype=torch.float64, generator=gen)
    rows = []
    for graphed in (False, True):
        model, optim = network(seed, 6)
        step = GraphedStep(X.new_empty(16, 6), capture=eager_capture([])) if graphed else None
        solver = RDASolver(X, torch.zeros_like(X), torch.zeros_like(X), penalty="l21_rows", lam=None,
                           contamination=0.1)
        engine = Engine(trainer(model, optim, X, seed, step), [solver])
        rows.append([{k: v for k, v in engine.iterate()[0].items() if k != "seconds"} for _ in range(3)])
        rows[-1].append(solver.S.clone())
        assert step is None or step.captured  # the network trained through it
    assert rows[1][:3] == rows[0][:3]
    assert torch.equal(rows[1][3], rows[0][3])


def test_cuda_graphs_are_ignored_on_a_cpu(gen, monkeypatch):
    seed = int(gen.initial_seed())
    X, _ = planted(seed, n=80, d=12)
    kw = dict(hidden=(8, 3), outer_iter=2, inner_epochs=2, batch_size=16, device="cpu", random_state=seed)
    a = RobustAutoencoder(**kw).fit(X)
    monkeypatch.setattr(GraphedStep, "__init__", lambda *args, **kwargs: pytest.fail("a graphed step on a CPU"))
    b = RobustAutoencoder(cuda_graphs=True, **kw).fit(X)
    assert (b.S_ == a.S_).all() and (b.L_ == a.L_).all()


@requires_cuda
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_captured_step_trains_as_the_eager_step_on_cuda(gen, precision):
    seed = int(gen.initial_seed())
    amp = torch.bfloat16 if precision == "bfloat16" else None
    data = torch.rand(200, 30, generator=gen).cuda()
    (m1, o1), (m2, o2) = network(seed, 30, torch.float32, "cuda"), network(seed, 30, torch.float32, "cuda")
    graphed = GraphedStep(data.new_empty(32, 30))
    a = trainer(m1, o1, data, seed, amp=amp, epochs=4, batch=32).train(data)
    b = trainer(m2, o2, data, seed, graphed, amp=amp, epochs=4, batch=32).train(data)
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
    torch.testing.assert_close(torch.as_tensor(b.L_), torch.as_tensor(a.L_), rtol=1e-4, atol=1e-5)
    warm = copy.deepcopy(b).set_params(warm_start=True, cuda_graphs=False).fit(X)
    assert warm.n_iter_ == 3


@pytest.mark.parametrize("graphed", [False, True])
def test_every_step_runs_in_the_fits_precision(gen, graphed, monkeypatch):
    """A network with amp=bfloat16 takes every step, eagerly or through its graphed step, with its
    products in bfloat16, and ends where a hand-written loop of steps under bfloat16 autocast does
    (to bfloat16's rounding), not where float32 steps do."""
    seed = int(gen.initial_seed())
    data = torch.rand(64, 7, generator=gen)
    seen = []
    real = FusedStep.__call__
    monkeypatch.setattr(FusedStep, "__call__", lambda self, batch: (seen.append(self.amp), real(self, batch))[1])

    def weights(amp):
        model, optim = network(seed, 7, torch.float32)
        step = GraphedStep(data.new_empty(16, 7), capture=eager_capture([])) if graphed else None
        trainer(model, optim, data, seed, step, amp=amp).train(data)
        assert step is None or step.captured
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    model, optim = network(seed, 7, torch.float32)
    order = torch.Generator().manual_seed(seed)
    for _ in range(2):
        for rows in torch.randperm(64, generator=order).split(16):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(data[rows]), data[rows])
            optim.zero_grad()
            loss.backward()
            optim.step()
    by_hand = torch.cat([p.detach().flatten() for p in model.parameters()])
    in_bfloat16, in_float32 = weights(torch.bfloat16), weights(None)
    assert seen == [torch.bfloat16] * 8 + [None] * 8
    assert (in_bfloat16 - by_hand).abs().mean() < 0.5 * (in_float32 - by_hand).abs().mean()
