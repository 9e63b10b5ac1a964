"""``fit_together``: several RobustAutoencoders fitted on one X at once, their networks stacked and
trained in one batched step per minibatch (``rda_ext.solver.stacked``), each with its own L and S."""

from __future__ import annotations

import torch

from rda_ext.estimator import fitting, network_shape
from rda_ext.estimator.robust_autoencoder import RobustAutoencoder
from rda_ext.solver.collectives import SINGLE_PROCESS, row_group
from rda_ext.solver.engine import Engine
from rda_ext.solver.schedule import Schedule
from rda_ext.solver.stacked import StackedAutoencoder, StackedNetworks
from rda_ext.solver.training import make_optimizer
from rda_ext.validation import (
    checked_matrix,
    check_params,
    resolve_device,
    resolve_dtype,
    resolve_precision,
    warn_if_outside_output_range,
)

# What one batched step needs the estimators to share: the network's shape, the training schedule,
# the device and the arithmetic. They may differ in penalty, lam, contamination and random_state.
SHARED = ("hidden", "activation", "output_activation", "tied_weights", "preprocessing", "optimizer", "lr",
          "batch_size", "inner_epochs", "outer_iter", "tol", "device", "dtype", "precision")


def fit_together(estimators: list[RobustAutoencoder], X) -> list[RobustAutoencoder]:
    """Fits every estimator on X as ``fit`` would, from its own initial network (drawn from its
    random_state), all on the minibatches of the first one's batch order. Network k receives
    exactly the updates it would receive alone on those minibatches (to the rounding of the
    batched products), so an estimator sharing the first one's random_state ends where its own
    ``fit`` ends, early stopping at ``tol`` included. Returns the estimators, fitted. Each fit
    starts afresh (``warm_start``, ``verbose``, ``cuda_graphs`` and ``checkpoint`` are not used) and keeps no optimizer state: a
    later warm start of one begins a fresh optimizer, as after ``load``. A fit whose training
    diverges stops them all."""
    if isinstance(estimators, RobustAutoencoder) or not hasattr(estimators, "__iter__"):
        raise TypeError(f"estimators must be a list of RobustAutoencoders, got {type(estimators).__name__}")
    estimators = list(estimators)
    if not estimators:
        raise ValueError("estimators must hold at least one RobustAutoencoder")
    seen: dict[int, int] = {}
    for i, est in enumerate(estimators):
        if not isinstance(est, RobustAutoencoder):
            raise TypeError(f"estimators[{i}] is a {type(est).__name__}, not a RobustAutoencoder")
        # One object twice would be fitted twice into the same attributes, the first fit lost.
        if id(est) in seen:
            raise ValueError(f"estimators[{i}] is estimators[{seen[id(est)]}] again: pass separate estimators "
                             "(e.g. sklearn.base.clone of one)")
        seen[id(est)] = i
    for est in estimators:
        check_params(est.get_params())
        if row_group(est.distributed).distributed:
            raise ValueError("fit_together (and lambda_path) runs on one process: with a torch.distributed process "
                             "group initialised, pass distributed=False to fit each rank's rows alone")
    first = estimators[0]
    for name in SHARED:
        for est in estimators[1:]:
            a, b = first.get_params()[name], est.get_params()[name]
            if _resolved(name, a) != _resolved(name, b):
                raise ValueError(f"{name} differs between the estimators ({a!r} and {b!r}): fit_together trains "
                                 "them in one step, which needs it shared")
    device, dtype = resolve_device(first.device), resolve_dtype(first.dtype)
    # The shared parameters decide the standardisation and the output activation alike for all.
    Xt, scaling, output_activation, data_print = fitting.network_input(first, *checked_matrix(X, "X", device, dtype),
                                                                       SINGLE_PROCESS)
    if first.output_activation != "auto":  # "auto" chose sigmoid only for data in [0, 1]
        warn_if_outside_output_range(Xt, output_activation)
    # hidden="auto": every candidate shape trains all K networks in one step; each estimator keeps
    # the shape its own fit would keep (network_shape.choose).
    shapes = network_shape.candidates(first.hidden, first.outer_iter, Xt.shape[1])
    kept = [network_shape.Kept(shapes) for _ in estimators]
    for hidden, outer_iter in shapes:
        nets, batch_seeds = zip(*(fitting.new_network(est, (Xt.shape[1], *hidden), device, dtype, output_activation,
                                                      SINGLE_PROCESS) for est in estimators))
        model = StackedAutoencoder(list(nets))
        schedule = Schedule.of_fit(first.inner_epochs, first.batch_size, [Xt.shape[0]], lockstep=False)
        network = StackedNetworks(model, make_optimizer(model, first.optimizer, float(first.lr)), schedule,
                                  torch.Generator(device=device).manual_seed(batch_seeds[0]),
                                  resolve_precision(first.precision, device, dtype))
        solvers = [fitting.new_solver(est, Xt, torch.zeros_like(Xt), torch.zeros_like(Xt), SINGLE_PROCESS)
                   for est in estimators]
        finished = Engine(network, solvers).run(outer_iter, first.tol)
        sample_seed = fitting.sample_seed_of(network)  # one draw for all, as the first one's own fit draws it
        for est, own, (rows, solver, net) in zip(estimators, kept, finished):
            history = [dict(iteration=i + 1, **row) for i, row in enumerate(rows)]
            own.offer(fitting.finalize(est, X, solver, net, None, batch_seeds[0], history, len(history), scaling,
                                       SINGLE_PROCESS, data_print, sample_seed),
                      solver, float(est.contamination), SINGLE_PROCESS)
    for est, own in zip(estimators, kept):
        own.result().apply(est)
    return estimators


def _resolved(name: str, value):
    """A shared parameter as it acts: (8, 3) and [8, 3], None and "float32", "auto" and the
    device it picks are the same."""
    if name == "hidden":
        return value if value == "auto" else tuple(value)
    if name == "dtype":
        return resolve_dtype(value)
    if name == "device":
        return resolve_device(value)
    return value
