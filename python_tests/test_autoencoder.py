"""The network and its training loop (rda_ext.solver.autoencoder, rda_ext.solver.training) against
the formulas written out: the layers, tied and untied decoders, the Glorot initialisation, the
optimizers, the chunked passes over the data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rda_ext.solver import training
from rda_ext.solver.autoencoder import ACTIVATIONS, DeepAutoencoder
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.training import make_optimizer, map_chunks, reconstruct_into, train_epochs

FORMULAS = {
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "relu": lambda x: x.clamp_min(0),
    "elu": lambda x: torch.where(x > 0, x, torch.expm1(x)),
    "tanh": torch.tanh,
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "linear": lambda x: x,
}


def test_every_activation_is_its_formula(gen):
    x = torch.randn(50, generator=gen, dtype=torch.float64) * 3
    assert set(ACTIVATIONS) == set(FORMULAS)
    for name, f in FORMULAS.items():
        torch.testing.assert_close(ACTIVATIONS[name](x), f(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tied", [True, False])
def test_forward_is_the_layers_written_out(gen, tied):
    model = DeepAutoencoder((6, 4, 2), "tanh", "sigmoid", tied, gen).double()
    with torch.no_grad():
        for p in (*model.enc_bias, *model.dec_bias):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    W1, W2 = model.enc_weight
    b1, b2 = model.enc_bias
    c1, c2 = model.dec_bias
    assert W1.shape == (4, 6) and W2.shape == (2, 4) and c1.shape == (4,) and c2.shape == (6,)
    code = torch.tanh(torch.tanh(x @ W1.T + b1) @ W2.T + b2)
    D1, D2 = (W2.T, W1.T) if tied else tuple(model.dec_weight)
    assert D1.shape == (4, 2) and D2.shape == (6, 4)
    out = torch.sigmoid(torch.tanh(code @ D1.T + c1) @ D2.T + c2)
    torch.testing.assert_close(model.encode(x), code, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), out, rtol=1e-12, atol=1e-12)
    assert len(model.dec_weight) == (0 if tied else 2)
    assert model.sizes == (6, 4, 2) and model.architecture == ((6, 4, 2), "tanh", "sigmoid", tied)


def test_a_single_layer_applies_the_output_activation_last(gen):
    model = DeepAutoencoder((3, 2), "relu", "linear", True, gen).double()
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    (W,), (b,), (c,) = model.enc_weight, model.enc_bias, model.dec_bias
    torch.testing.assert_close(model(x), torch.relu(x @ W.T + b) @ W + c, rtol=1e-12, atol=1e-12)


def test_glorot_uniform_initialisation(gen):
    seed = int(gen.initial_seed())
    model = DeepAutoencoder((300, 100), "sigmoid", "sigmoid", False, torch.Generator().manual_seed(seed))
    bound = math.sqrt(6.0 / (300 + 100))
    for w in (*model.enc_weight, *model.dec_weight):
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(w.mean().item()) < 0.01 and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(torch.count_nonzero(b) == 0 for b in (*model.enc_bias, *model.dec_bias))
    again = DeepAutoencoder((300, 100), "sigmoid", "sigmoid", False, torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert not torch.equal(model.enc_weight[0], model.dec_weight[0].T)  # drawn separately


def test_optimizers():
    model = DeepAutoencoder((4, 2), generator=torch.Generator().manual_seed(0))
    adam = make_optimizer(model, "adam", 0.01)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 0.01 and adam.defaults["fused"]
    sgd = make_optimizer(model, "sgd", 0.5, weight_decay=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9 and sgd.defaults["fused"]
    assert sgd.defaults["lr"] == 0.5 and sgd.defaults["weight_decay"] == 0.1 and adam.defaults["weight_decay"] == 0
    assert make_optimizer(model, "adam", 0.01, weight_decay=0.2).defaults["weight_decay"] == 0.2
    assert [p for g in sgd.param_groups for p in g["params"]] == list(model.parameters())
    with pytest.raises(ValueError) as e:
        make_optimizer(model, "rmsprop", 0.1)
    assert str(e.value) == "optimizer must be one of ('adam', 'sgd'), got 'rmsprop'"


def test_training_with_a_target_or_a_loss_and_the_returned_loss(gen):
    data = torch.rand(10, 4, generator=gen, dtype=torch.float64)
    target = torch.rand(10, 4, generator=gen, dtype=torch.float64)
    model = DeepAutoencoder((4, 2), "tanh", "linear", True, gen).double()
    twin = DeepAutoencoder((4, 2), "tanh", "linear", True).double()
    twin.load_state_dict(model.state_dict())
    optim, twin_optim = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    order, twin_order = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    loss = train_epochs(model, optim, data, Schedule(2, 4), order, target=target)
    for _ in range(2):
        perm = torch.randperm(10, generator=twin_order)
        losses = []
        for start in (0, 4, 8):  # the last batch holds the 2 remaining rows
            rows = perm[start : start + 4]
            step = F.mse_loss(twin(data[rows]), target[rows])
            twin_optim.zero_grad()
            step.backward()
            twin_optim.step()
            losses.append(step.item())
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(sum(losses) / 3, rel=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(model.parameters(), twin.parameters()))
    # A loss of the batch alone (as the VAE's): its mean over the last epoch's batches.
    calls = []
    got = train_epochs(model, optim, data, Schedule(1, 5), order, loss_fn=lambda b: calls.append(len(b)) or (model(b) ** 2).mean())
    assert calls == [5, 5] and got.item() > 0
    assert train_epochs(model, optim, data, Schedule(0, 5), order).item() == 0
    assert model.training


@pytest.mark.parametrize("amp", [torch.bfloat16, None])
def test_training_runs_the_forward_pass_in_the_given_precision(gen, amp):
    data = torch.rand(12, 4, generator=gen)
    model = DeepAutoencoder((4, 2), "tanh", "linear", True, gen)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def loss(batch):
        out = model(batch)
        seen.append(out.dtype)
        return F.mse_loss(out.float(), batch)

    train_epochs(model, optim, data, Schedule(1, 6), torch.Generator().manual_seed(0), loss_fn=loss, amp=amp)
    assert seen == [amp or torch.float32] * 2
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_chunked_passes_equal_one_pass(gen, monkeypatch):
    monkeypatch.setattr(training, "CHUNK_ROWS", 4)
    model = DeepAutoencoder((3, 2), "elu", "linear", True, gen).double()
    data = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        full = model(data)
    out = torch.empty_like(data)
    err = reconstruct_into(model, data, out)
    # Equal to rounding: a matrix product of 4 rows may sum in another order than one of 10.
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-14)
    assert not model.training
    assert err.dtype == torch.float64 and err.item() == pytest.approx(((data - full) ** 2).sum().item(), rel=1e-12)
    copy = data.clone()
    reconstruct_into(model, copy, copy)  # in place: each chunk read before it is written
    assert torch.equal(copy, out)
    torch.testing.assert_close(map_chunks(model.encode, data), model.encode(data).detach(), rtol=1e-12, atol=1e-14)
    assert map_chunks(model.encode, data[:0]).shape == (0, 2)


def test_the_decoder_is_tied_by_default():
    model = DeepAutoencoder((6, 4, 2))
    assert model.tied and len(model.dec_weight) == 0 and model.architecture[-1] is True
