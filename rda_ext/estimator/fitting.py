"""``RobustAutoencoder.fit`` in three steps around the engine: ``prepare`` (check, scale, agree
across ranks, build or continue the network, resume a checkpoint), ``run`` (the outer iterations,
with the progress bar and the checkpoint), ``finalize`` (scores, threshold and the
``FittedState``). ``fit_together`` builds its K fits from the same pieces. Nothing of the
estimator changes before ``finalize``'s state is applied: a fit that raises (bad numbers, a
diverged loss, an interrupt) leaves the previous fit whole, or none."""

from __future__ import annotations

import copy
import os
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rda_ext.estimator import network_shape, scoring
from rda_ext.estimator.fitted_state import FittedState
from rda_ext.estimator.preprocessing import resolve_output_activation, scale_rows, scaled_range, scaling_for
from rda_ext.estimator.preprocessing import in_xs_units
from rda_ext.io.checkpoint import Checkpoint, data_identity
from rda_ext.io.fingerprint import Fingerprint
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.collectives import RowGroup, agree_on_parameters, agree_on_width, agreed, row_group
from rda_ext.solver.distributed import DistributedRDASolver
from rda_ext.solver.engine import Engine
from rda_ext.solver.loop import RDASolver
from rda_ext.solver.schedule import Schedule, converged
from rda_ext.solver.training import GraphedStep, Network, make_optimizer
from rda_ext.validation import (
    as_matrix,
    checked_matrix,
    check_params,
    is_int,
    resolve_device,
    resolve_dtype,
    resolve_precision,
    warn_if_outside_output_range,
)

# What a restarted job may change and still resume its checkpoint: it may run longer or stop at
# another tol, each rank has its own device, the restored state replaces what random_state draws,
# and the score is computed after the last iteration.
RESUMABLE_CHANGES = ("outer_iter", "tol", "verbose", "checkpoint", "device", "random_state", "outlier_score")


@dataclass
class Prepared:
    """A fit ready to run: its engine (one network, one solver), what came before it (the history
    of a warm start or a checkpoint) and what ``finalize`` needs."""

    est: object
    X: object  # the caller's X, whose type and dtype L_ and S_ take
    ranks: RowGroup
    engine: Engine
    scaling: tuple[Tensor, Tensor] | None
    batch_seed: int
    history: list[dict]
    warm_rows: int  # the history's rows from before this fit (a warm start)
    done: int  # outer iterations of this fit restored from the checkpoint
    store: Checkpoint | None
    data_print: str
    rows: int  # over all ranks
    shapes: list[tuple[tuple[int, ...], int]]  # network_shape.candidates: (hidden, outer_iter) of each
    candidate: int  # the one this fit trains

    @property
    def solver(self) -> RDASolver:
        return self.engine.fits[0]


def fit(est, X) -> FittedState:
    """``RobustAutoencoder.fit``: the fitted state of the network it keeps, of the candidate shapes
    of ``hidden`` (network_shape) the one ``network_shape.choose`` picks."""
    kept, candidate = None, 0
    while kept is None or candidate < len(kept.shapes):
        prepared = prepare(est, X, candidate)
        kept = kept or network_shape.Kept(prepared.shapes)
        kept.offer(finalize_prepared(prepared, run(prepared)), prepared.solver, float(est.contamination),
                   prepared.ranks)
        del prepared  # one candidate's data and network at a time, besides the state kept
        candidate += 1
    return kept.result()


def prepare(est, X, candidate: int = 0) -> Prepared:
    # Ranks of a process group that differ in a parameter or in X's width would wait in different
    # collectives: each is agreed on before the first collective that depends on it.
    ranks = row_group(est.distributed)
    agree_on_parameters(ranks, est.get_params(), lambda: check_params(est.get_params()))
    device, dtype = resolve_device(est.device), resolve_dtype(est.dtype)
    X_in, column_range = agreed(ranks, lambda: _check_input(est, X, device, dtype, ranks))
    agree_on_width(ranks, X_in.shape[1])
    previous = FittedState.of(est) if hasattr(est, "model_") else None
    _check_warm_preprocessing(est, previous)
    # What S and the c2 reference of a warm start belong to: the network's input, bytes and all.
    # The same shape is not enough: other rows, or the same rows in another order, have other S.
    Xt, scaling, output_activation, data_print = network_input(est, X_in, column_range, ranks)
    shapes = network_shape.candidates(est.hidden, est.outer_iter, Xt.shape[1])

    def architecture_of(hidden):
        return (Xt.shape[1], *hidden), est.activation, output_activation, bool(est.tied_weights)

    if est.warm_start and previous is not None:  # "auto" continues the network it kept, where it can
        shapes = [s for s in shapes if architecture_of(s[0]) == previous.model_.architecture] or shapes
    hidden = shapes[candidate][0]
    architecture = architecture_of(hidden)
    warm = previous if est.warm_start and previous is not None and previous.model_.architecture == architecture \
        else None
    if warm is not None:  # the network continues in the input space it was trained in
        scaling, digest = scaling_on(warm, device), Fingerprint(X_in.dtype, X_in.shape)
        Xt = agreed(ranks, lambda: scale_rows(X_in, scaling, how=fitted_scaling(warm), digest=digest))
        data_print = digest.hexdigest()
    # "auto" chose sigmoid only for data in [0, 1]; said once for the candidate networks of a fit.
    if (warm is not None or est.output_activation != "auto") and candidate == 0:
        warn_if_outside_output_range(Xt, output_activation, stacklevel=5)  # through the fits and prepare
    S, LS_prev = torch.zeros_like(Xt), torch.zeros_like(Xt)
    if warm is not None:
        model, optim = _continued(est, warm, device, dtype)
        batch_seed = warm._batch_seed
        if warm.S_ is not None and data_print == warm._fit_fingerprint:
            how = fitted_scaling(warm)
            S = scale_rows(as_matrix(warm.S_, "S_", device, dtype), scaling, center=False, name="S_", how=how).clone()
            if warm.L_ is not None:  # c2 of a warm start compares with where the previous fit ended
                LS_prev = scale_rows(as_matrix(warm.L_, "L_", device, dtype), scaling, name="L_", how=how) + S
    else:
        model, batch_seed = new_network(est, (Xt.shape[1], *hidden), device, dtype, output_activation, ranks)
        optim = make_optimizer(model, est.optimizer, float(est.lr))
    # Each rank draws its own batches (rank 0 those of a single-process fit).
    batches = torch.Generator(device=device).manual_seed(batch_seed + ranks.rank)
    rows_per_rank = ranks.rows_per_rank(Xt.shape[0])
    schedule = Schedule.of_fit(est.inner_epochs, est.batch_size, rows_per_rank, lockstep=ranks.distributed)
    amp = resolve_precision(est.precision, device, dtype)
    graphed = GraphedStep(Xt.new_empty(est.batch_size, Xt.shape[1])) if _graphs(est, device) else None
    network = Network(model, optim, schedule, batches, amp, graphed, share=ranks.shared_gradients)
    engine = Engine(network, [new_solver(est, Xt, S, LS_prev, ranks)])
    history = list(warm.history_) if warm is not None else []
    prepared = Prepared(est, X, ranks, engine, scaling, batch_seed, history, len(history), 0, None, data_print,
                        sum(rows_per_rank), shapes, candidate)
    if est.checkpoint is not None:
        _resume(prepared)
    return prepared


def run(fit: Prepared) -> list[dict]:
    """The outer iterations that remain; returns the whole history."""
    est, history, network = fit.est, fit.history, fit.engine.network
    outer_iter = fit.shapes[fit.candidate][1]
    remaining = outer_iter - fit.done
    if fit.done and converged(history[-1], est.tol):
        remaining = 0  # the restored fit had converged
    progress = tqdm(total=outer_iter, initial=fit.done, disable=not (est.verbose and fit.ranks.rank == 0),
                    desc="RDA outer iterations", unit="it")

    def record(rows: list[dict]) -> None:
        row = rows[0]
        history.append(dict(iteration=len(history) + 1, **row))
        if fit.store is not None:
            fit.store.save(fit.engine, history)
        progress.update(1)
        rate = network.schedule.rows_trained(fit.rows) / max(row["seconds"], 1e-9)
        progress.set_postfix({"c1": f"{row['c1']:.2e}", "c2": f"{row['c2']:.2e}", "lam": f"{row['lam']:.4g}",
                              "nonzero": row["n_nonzero"], "rows/s": f"{rate:.3g}"})

    try:
        fit.engine.run(remaining, est.tol, record)
    finally:
        progress.close()
    return history


def finalize(est, X, solver: RDASolver, model: DeepAutoencoder, optim, batch_seed: int, history: list[dict],
             n_iter: int, scaling, ranks: RowGroup, data_print: str, sample_seed: int) -> FittedState:
    """The fitted state of a finished solver (its L and S: the decomposition of X in the network's
    input space, which ``scaling`` maps back to X's units). ``sample_seed``: what draws the local
    term's neighbours (``sample_seed_of``)."""
    L_out, S_out = agreed(ranks, lambda: (in_xs_units(solver.L, X, "L_", scaling),
                                          in_xs_units(solver.S, X, "S_", scaling, center=False)))
    lam_ = history[-1]["lam"]
    amp = resolve_precision(est.precision, solver.X.device, solver.X.dtype)
    scores, threshold, labels, statistics, local = scoring.fitted_scores(
        est.outlier_score, est.penalty, est.contamination, solver, model, amp, lam_, sample_seed, ranks)
    return FittedState(
        model_=model.eval(), n_features_in_=solver.X.shape[1], n_iter_=n_iter, history_=history, lam_=lam_,
        L_=L_out, S_=S_out, decision_scores_=scores.cpu().numpy(), labels_=labels, threshold_=threshold,
        center_=None if scaling is None else scaling[0].cpu().numpy(),
        scale_=None if scaling is None else scaling[1].cpu().numpy(),
        **dict(zip(("residual_scale_", "code_center_", "code_precision_"),
                   (None,) * 3 if statistics is None else (t.cpu().numpy() for t in statistics))),
        neighbours_=None if local is None else local.neighbours.cpu().numpy(),
        term_spread_=None if local is None or local.spread is None else local.spread.cpu().numpy(),
        _optim=optim, _batch_seed=batch_seed + 1, _fit_precision=est.precision,
        _fit_preprocessing=est.preprocessing, _fit_fingerprint=data_print,
    )


def finalize_prepared(fit: Prepared, history: list[dict]) -> FittedState:
    network = fit.engine.network
    return finalize(fit.est, fit.X, fit.solver, network.model, network.optimizer, fit.batch_seed, history,
                    len(history) - fit.warm_rows, fit.scaling, fit.ranks, fit.data_print, sample_seed_of(network))


def sample_seed_of(network) -> int:
    """The seed of the local term's neighbour sample: the next draw of the fit's batch generator,
    whose state a checkpoint keeps, so that a resumed fit draws the sample the uninterrupted one
    would have drawn (random_state=None included)."""
    generator = network.generator
    return int(torch.randint(2**62, (), generator=generator, device=generator.device))


def _check_input(est, X, device: torch.device, dtype: torch.dtype,
                 ranks: RowGroup) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    # The two options that a row-sharded fit cannot honour.
    if ranks.distributed and est.preprocessing == "standardize":
        raise ValueError('preprocessing="standardize" is not available in a distributed fit (its column '
                         'quantiles span all ranks): use "minmax", or scale X beforehand')
    if ranks.distributed and est.cuda_graphs:
        raise ValueError("cuda_graphs is not available in a distributed fit (the gradient all-reduce runs "
                         "outside the captured step)")
    return checked_matrix(X, "X", device, dtype)


def network_input(est, X: Tensor, column_range: tuple[Tensor, Tensor],
                  ranks: RowGroup) -> tuple[Tensor, tuple[Tensor, Tensor] | None, str, str]:
    """What a fresh fit's network sees of X (scaled or not), the (center, scale) of the scaling
    (None without), the output activation that suits it (over all ranks' rows) and its fingerprint.
    ``column_range``: the (min, max) of X's columns, from the pass that checked X; with the pass
    that scales and hashes it, X is read twice before training."""
    how = f'preprocessing="{est.preprocessing}"'
    scaling = scaling_for(est.preprocessing, X, column_range, ranks)
    digest = Fingerprint(X.dtype, X.shape)
    Xs = scale_rows(X, scaling, how=how, digest=digest)
    output_activation = resolve_output_activation(est.output_activation, Xs,
                                                  scaled_range(column_range, scaling, how), ranks)
    return Xs, scaling, output_activation, digest.hexdigest()


def _check_warm_preprocessing(est, previous: FittedState | None) -> None:
    """A warm start continues the fitted network in the input space it was trained in, with the
    fitted scaling: another ``preprocessing`` cannot apply, and is refused rather than ignored."""
    if est.warm_start and previous is not None and est.preprocessing != previous._fit_preprocessing:
        fitted = previous._fit_preprocessing
        raise ValueError(f'warm_start continues the fitted network, which was trained on X scaled by '
                         f'preprocessing="{fitted}" (center_, scale_ stay with it), so preprocessing='
                         f'"{est.preprocessing}" cannot apply: set preprocessing="{fitted}", or refit with '
                         'warm_start=False')


def fitted_scaling(state: FittedState) -> str:
    """How errors name the scaling of a fitted state."""
    return f'the fitted scaling (preprocessing="{state._fit_preprocessing}")'


def scaling_on(state: FittedState, device: torch.device) -> tuple[Tensor, Tensor] | None:
    if state.center_ is None:
        return None
    return torch.from_numpy(state.center_).to(device), torch.from_numpy(state.scale_).to(device)


def _continued(est, warm: FittedState, device: torch.device, dtype: torch.dtype):
    """A copy of the fitted network in the requested dtype and on the requested device, with an
    optimizer of its own: the previous optimizer's state (Adam's moments, SGD's momentum) is
    carried over, cast to the copy's dtype and device, so that a dtype or device change never
    mixes them."""
    model = copy.deepcopy(warm.model_).to(device=device, dtype=dtype)
    optim = make_optimizer(model, est.optimizer, float(est.lr))
    if warm._optim is not None and type(warm._optim) is type(optim):
        optim.load_state_dict(copy.deepcopy(warm._optim.state_dict()))
        for group in optim.param_groups:  # not the previous fit's
            group["lr"] = float(est.lr)
    return model, optim


def new_network(est, sizes: tuple[int, ...], device: torch.device, dtype: torch.dtype, output_activation: str,
                ranks: RowGroup) -> tuple[DeepAutoencoder, int]:
    """The initial network of layer ``sizes`` (the features, then the encoder's), drawn from
    ``random_state``, and the seed of the batch orders (drawn after the weights, from the same
    generator). Every rank draws from rank 0's seed (a seed that is not given is drawn on each)."""
    seed = initial_seed(est.random_state)
    if not is_int(est.random_state):
        seed = ranks.broadcast_int(seed)
    init = torch.Generator().manual_seed(seed)
    model = DeepAutoencoder(sizes, est.activation, output_activation, est.tied_weights, init)
    return model.to(device=device, dtype=dtype), int(torch.randint(2**62, (), generator=init))


def new_solver(est, Xt: Tensor, S: Tensor, LS_prev: Tensor, ranks: RowGroup) -> RDASolver:
    """The proximal side of ``est``'s fit on Xt."""
    common = dict(penalty=est.penalty, lam=None if est.lam is None else float(est.lam),
                  contamination=float(est.contamination))
    # A single process takes its numbers from the kernels directly, without the exchanges of
    # partial norms that a row-sharded fit needs.
    if ranks.distributed:
        return DistributedRDASolver(Xt, S, LS_prev, ranks=ranks, **common)
    return RDASolver(Xt, S, LS_prev, **common)


def _graphs(est, device: torch.device) -> bool:
    return bool(est.cuda_graphs) and device.type == "cuda"


def _resume(fit: Prepared) -> None:
    """Opens ``est.checkpoint`` for the fit, and continues from its last complete iteration where
    it holds one of this fit. Everything but ``RESUMABLE_CHANGES`` must match."""
    est, ranks = fit.est, fit.ranks
    params = {k: repr(v) for k, v in est.get_params().items() if k not in RESUMABLE_CHANGES}
    identity = dict(params=params, rows=fit.rows, warm=fit.warm_rows, data=data_identity(fit.solver.X, fit.data_print))
    folder = est.checkpoint
    if len(fit.shapes) > 1:  # each candidate network's fit in a folder of its own
        folder = os.path.join(folder, "hidden-" + network_shape.sizes_text(fit.shapes[fit.candidate][0]))
    fit.store = Checkpoint(folder, ranks, identity)
    saved = agreed(ranks, lambda: fit.store.resume(fit.engine))
    found = torch.tensor(len(saved))
    if ranks.min(found) != ranks.max(found):
        raise ValueError(f"checkpoint {est.checkpoint}: the ranks found different states in it; it must "
                         "be one folder that every rank reads and writes (a shared file system)")
    if saved:
        fit.solver.norms = fit.solver.residual_norms()  # those of the restored last step
        fit.done, fit.history = len(saved) - fit.warm_rows, saved


def initial_seed(random_state) -> int:
    """The seed of the initial weights (and of the batch orders) for ``random_state``, as checked by
    ``check_params``: None draws a fresh one, a RandomState or Generator gives the next draw (as
    scikit-learn's ``check_random_state`` and its estimators do), an integer is the seed."""
    if random_state is None:
        return secrets.randbits(63)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int64).max, dtype=np.int64))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int64).max))
    return int(random_state)
