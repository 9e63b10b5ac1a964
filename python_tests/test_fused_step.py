"""The fused training step (rda_ext.solver.fused_step): the optimizer's own update on the
operator's gradients, bit for bit as ``optimizer.step()``; steps that follow autograd's training to
rounding; the optimizer's state as torch keeps it (a state_dict that another optimizer continues
from); the gradients averaged over ranks in one flat buffer; what it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from rda_ext import ops
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.fused_step import FusedStep
from rda_ext.solver.training import make_optimizer


def network(seed, tied=True, dtype=torch.float64, sizes=(9, 5, 3)):
    return DeepAutoencoder(sizes, "elu", "sigmoid", tied, torch.Generator().manual_seed(seed)).to(dtype)


def batches(gen, n=6, rows=10, d=9, dtype=torch.float64):
    return [torch.rand(rows, d, generator=gen, dtype=dtype) for _ in range(n)]


def states_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(
        sa[k].keys() == sb[k].keys() and all(torch.equal(sa[k][n], sb[k][n]) for n in sa[k]) for k in sa)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("tied", [True, False])
def test_the_update_is_the_optimizers_own_step_bit_for_bit(gen, optimizer, tied):
    seed = int(gen.initial_seed())
    a, b = network(seed, tied, torch.float32), network(seed, tied, torch.float32)
    oa, ob = make_optimizer(a, optimizer, 1e-2), make_optimizer(b, optimizer, 1e-2)
    step = FusedStep(a, oa)
    for batch in batches(gen, dtype=torch.float32):
        loss = step(batch)
        grads = [torch.empty_like(p) for p in b.parameters()]
        with torch.no_grad():
            assert torch.equal(loss, ops.autoencoder_grads(batch, list(b.parameters()), grads, 2, "elu", "sigmoid"))
        for p, g in zip(b.parameters(), grads):
            p.grad = g
        ob.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert states_equal(oa, ob)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_steps_follow_autograds_training_to_rounding_in_float64(gen, optimizer):
    seed = int(gen.initial_seed())
    a, b = network(seed), network(seed)
    oa, ob = make_optimizer(a, optimizer, 1e-2), make_optimizer(b, optimizer, 1e-2)
    step = FusedStep(a, oa)
    for batch in batches(gen):
        fused = step(batch)
        loss = F.mse_loss(b(batch), batch)
        ob.zero_grad()
        loss.backward()
        ob.step()
        assert fused.item() == pytest.approx(loss.item(), rel=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_a_state_dict_of_fused_steps_continues_in_another_optimizer(gen):
    """What a warm start and a checkpoint rely on: the state is torch's, under torch's keys."""
    seed = int(gen.initial_seed())
    data = batches(gen, n=8)
    a = network(seed)
    oa = make_optimizer(a, "adam", 1e-2)
    step = FusedStep(a, oa)
    for batch in data[:4]:
        step(batch)
    assert [sorted(s) for s in oa.state_dict()["state"].values()] == [["exp_avg", "exp_avg_sq", "step"]] * 6
    assert all(s["step"].item() == 4 and s["step"].dtype == torch.float32 for s in oa.state.values())
    b = copy.deepcopy(a)
    ob = make_optimizer(b, "adam", 1e-2)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    other = FusedStep(b, ob)
    for batch in data[4:]:
        step(batch)
        other(batch)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())) and states_equal(oa, ob)


def test_a_new_lr_in_the_group_takes_effect_at_the_next_step(gen):
    seed = int(gen.initial_seed())
    a, b = network(seed), network(seed)
    oa, ob = make_optimizer(a, "sgd", 1e-2), make_optimizer(b, "sgd", 1e-2)
    fa, fb = FusedStep(a, oa), FusedStep(b, ob)
    data = batches(gen, n=2)
    fa(data[0]), fb(data[0])
    ob.param_groups[0]["lr"] = 0.0
    before = [p.clone() for p in b.parameters()]
    fa(data[1]), fb(data[1])
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before))
    assert not any(torch.equal(p, q) for p, q in zip(a.parameters(), before))


def test_the_gradients_are_views_of_one_buffer_that_the_ranks_average(gen):
    seed = int(gen.initial_seed())
    a, b = network(seed), network(seed)
    seen = []

    def halve(flat):
        seen.append(flat)
        flat.mul_(0.5)

    step = FusedStep(a, make_optimizer(a, "sgd", 1e-2), average=halve)
    alone = FusedStep(b, make_optimizer(b, "sgd", 5e-3))  # the same update as half the gradient
    for batch in batches(gen, n=1):
        step(batch)
        alone(batch)
    (flat,) = seen
    assert flat.numel() == sum(p.numel() for p in a.parameters())
    assert all(p.grad.data_ptr() >= flat.data_ptr() and p.grad._base is flat for p in a.parameters())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_what_it_cannot_update_is_refused(gen):
    model = network(1)
    params = list(model.parameters())
    for optimizer, name in ((torch.optim.RMSprop(params), "RMSprop"), (torch.optim.Adam(params), "Adam")):
        with pytest.raises(ValueError) as e:
            FusedStep(model, optimizer)
        assert str(e.value) == f"a fused step updates with fused Adam or SGD, not {name}"
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    for wrong in (params[::-1], params[:-1], groups):
        with pytest.raises(ValueError) as e:
            FusedStep(model, torch.optim.SGD(wrong, lr=0.1, fused=True))
        assert str(e.value) == "the optimizer must hold the model's parameters, in their order, in one group"


def test_the_adam_state_is_the_one_torch_makes_whatever_the_default_dtype(gen):
    """Adam's fused step keeps its step count in float32, also where a program has made float64
    torch's default dtype; a checkpoint or another optimizer then sees the same state."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        own, fused = network(2, dtype=torch.float32), network(2, dtype=torch.float32)
        own_optim, fused_optim = make_optimizer(own, "adam", 1e-2), make_optimizer(fused, "adam", 1e-2)
        (batch,) = batches(gen, n=1, dtype=torch.float32)
        F.mse_loss(own(batch), batch).backward()
        own_optim.step()
        FusedStep(fused, fused_optim)(batch)
    finally:
        torch.set_default_dtype(default)
    for p, q in zip(own.parameters(), fused.parameters()):
        assert {k: v.dtype for k, v in own_optim.state[p].items()} == {k: v.dtype for k, v in fused_optim.state[q].items()}
