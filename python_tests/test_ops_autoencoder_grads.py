"""``autoencoder_grads``: one call's loss and gradients of RDA's autoencoder against autograd (the
reference), for every activation, tied and untied weights, one to three layers, one network and
K stacked ones, float32 and float64, bfloat16 products, odd shapes, strided inputs, an empty batch,
and its argument checks."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from conftest import DEVICES, TOL, rand

from rda_ext import ops, reference
from rda_ext.solver.autoencoder import ACTIVATIONS, DeepAutoencoder
from rda_ext.solver.stacked import StackedAutoencoder


def params_of(sizes, activation, output_activation, tied, k, dtype, device, gen):
    """The parameters (in model.parameters() order) of one network, or of k stacked ones, with
    random biases (a fresh network's are 0)."""
    nets = [DeepAutoencoder(sizes, activation, output_activation, tied, gen) for _ in range(k or 1)]
    for net in nets:
        with torch.no_grad():
            for b in [*net.enc_bias, *net.dec_bias]:
                b.uniform_(-0.5, 0.5, generator=gen)
    model = StackedAutoencoder(nets) if k else nets[0]
    return [p.detach().to(device, dtype) for p in model.parameters()]


def check(x, params, depth, activation, output_activation, compute_dtype=None, tol=None):
    grads = [torch.full_like(p, float("nan")) for p in params]  # every entry must be written
    loss = ops.autoencoder_grads(x, params, grads, depth, activation, output_activation, compute_dtype)
    want_loss, want = reference.autoencoder_grads(x, params, depth, activation, output_activation, compute_dtype)
    tol = tol or TOL[x.dtype]
    assert loss.dtype == x.dtype and loss.shape == want_loss.shape
    torch.testing.assert_close(loss, want_loss, rtol=tol, atol=0)
    for i, (g, w) in enumerate(zip(grads, want)):
        assert g.shape == w.shape, i
        scale = w.abs().max().clamp(min=1e-30)
        assert ((g - w).abs().max() / scale).item() <= tol, (i, ((g - w).abs().max() / scale).item())
    return loss, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation, output_activation", list(itertools.product(ACTIVATIONS, ["sigmoid", "linear"])))
@pytest.mark.parametrize("tied", [True, False])
def test_every_activation_matches_autograd(gen, device, dtype, activation, output_activation, tied):
    sizes = (7, 5, 3)
    params = params_of(sizes, activation, output_activation, tied, 0, dtype, device, gen)
    x = rand((13, 7), dtype, device, gen)
    # float32: a gradient is a sum over the batch in another order than autograd's.
    check(x, params, 2, activation, output_activation, tol=1e-12 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", [(3, 1), (11, 4, 2), (9, 17, 6, 2)])  # a wide middle, one unit codes
@pytest.mark.parametrize("k", [0, 1, 3])  # one network, a stack of one, of three
@pytest.mark.parametrize("tied", [True, False])
def test_depths_widths_and_stacks_match_autograd_in_float64(gen, device, sizes, k, tied):
    params = params_of(sizes, "elu", "sigmoid", tied, k, torch.float64, device, gen)
    x = rand(((k,) if k else ()) + (10, sizes[0]), torch.float64, device, gen)
    loss, _ = check(x, params, len(sizes) - 1, "elu", "sigmoid", tol=1e-12)
    assert loss.shape == ((k,) if k else ())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "padded"])
def test_strided_batches_and_parameters(gen, device, layout):
    params = params_of((8, 5, 3), "tanh", "linear", False, 0, torch.float64, device, gen)
    strided = [rand(tuple(p.shape), torch.float64, device, gen, layout=layout if p.dim() == 2 else "contiguous")
               for p in params]
    x = rand((12, 8), torch.float64, device, gen, layout=layout)
    check(x, strided, 2, "tanh", "linear", tol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tied", [True, False])
def test_bfloat16_products_match_autocast(gen, device, tied):
    params = params_of((16, 8, 4), "sigmoid", "sigmoid", tied, 2, torch.float32, device, gen)
    x = rand((2, 32, 16), torch.float32, device, gen)
    check(x, params, 2, "sigmoid", "sigmoid", torch.bfloat16, tol=TOL[torch.bfloat16] * 2)


def test_an_empty_batch_has_a_nan_loss_and_zero_gradients(gen):
    params = params_of((6, 3), "sigmoid", "linear", True, 0, torch.float64, "cpu", gen)
    grads = [torch.full_like(p, float("nan")) for p in params]
    loss = ops.autoencoder_grads(torch.empty(0, 6, dtype=torch.float64), params, grads, 1, "sigmoid", "linear")
    want_loss, want = reference.autoencoder_grads(torch.empty(0, 6, dtype=torch.float64), params, 1, "sigmoid",
                                                  "linear")
    assert torch.isnan(loss) and torch.isnan(want_loss)
    for g, w in zip(grads, want):
        assert torch.equal(g, torch.zeros_like(g)) and torch.equal(w, torch.zeros_like(w))


def test_opcheck(gen):
    params = params_of((6, 4, 2), "elu", "linear", False, 2, torch.float32, "cpu", gen)
    args = (rand((2, 9, 6), torch.float32, "cpu", gen), params, [torch.empty_like(p) for p in params], 2, "elu",
            "linear", None)
    torch.library.opcheck(torch.ops.rda_ext.autoencoder_grads, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "depth": 0}, "depth must be >= 1, got 0"),
    (lambda a: {**a, "params": a["params"][:-1]}, "params must hold 3 * depth tensors (tied weights) or 4 * depth"),
    (lambda a: {**a, "grads": a["grads"][:-1]}, "grads must hold one tensor per parameter (6), got 5"),
    (lambda a: {**a, "x": a["x"][0]}, "x must be a batch (rows, features) or K batches (K, rows, features), got 1"),
    (lambda a: {**a, "x": a["x"].long()}, "x must be a floating tensor"),
    (lambda a: {**a, "params": [a["params"][0].double(), *a["params"][1:]]}, "params[0] must have x's dtype"),
    (lambda a: {**a, "params": [a["params"][0][None], *a["params"][1:]]}, "params[0] must have 2 dimensions"),
    (lambda a: {**a, "grads": [a["grads"][0][:1], *a["grads"][1:]]}, "each of grads must have the shape of"),
    (lambda a: {**a, "activation": "swish"}, "activation must be one of sigmoid, relu, elu, tanh, leaky_relu, gelu, "
                                             "linear, got 'swish'"),
    (lambda a: {**a, "output_activation": "soft"}, "output_activation must be one of"),
    (lambda a: {**a, "compute_dtype": torch.int32}, "compute_dtype must be None, bfloat16 or float16"),
])
def test_bad_arguments_are_named(gen, change, message):
    params = params_of((6, 4, 2), "elu", "linear", True, 0, torch.float32, "cpu", gen)
    args = dict(x=rand((5, 6), torch.float32, "cpu", gen), params=params, grads=[torch.zeros_like(p) for p in params],
                depth=2, activation="elu", output_activation="linear", compute_dtype=None)
    with pytest.raises(RuntimeError, match=re.escape("rda_ext: " + message)):
        ops.autoencoder_grads(**change(args))


def test_gradients_that_require_grad_are_refused_in_grad_mode(gen):
    params = params_of((6, 2), "elu", "linear", True, 0, torch.float32, "cpu", gen)
    grads = [torch.zeros_like(p, requires_grad=True) for p in params]
    x = rand((5, 6), torch.float32, "cpu", gen)
    with pytest.raises(RuntimeError, match="autoencoder_grads: out=... arguments don't support automatic"):
        ops.autoencoder_grads(x, params, grads, 1, "elu", "linear")
    with pytest.raises(RuntimeError, match="autoencoder_grads: out=... arguments don't support automatic"):
        torch.ops.rda_ext.autoencoder_grads(x, params, grads, 1, "elu", "linear", None)
    with torch.no_grad():
        ops.autoencoder_grads(x, params, grads, 1, "elu", "linear")
