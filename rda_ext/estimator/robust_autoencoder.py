"""``RobustAutoencoder``: the Robust Deep Autoencoder of Zhou & Paffenroth (KDD 2017) as a
scikit-learn/PyOD-style estimator, trained with the fused proximal kernels."""

from __future__ import annotations

import copy
import secrets

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rda_ext import ops
from rda_ext.data.fingerprint import fingerprint
from rda_ext.estimator import scoring
from rda_ext.estimator.persistence import load_model, save_model
from rda_ext.estimator.preprocessing import (
    in_unit_interval,
    resolve_output_activation,
    scale_rows,
    scaling_for,
    unscale_rows,
)
from rda_ext.estimator.sklearn_protocol import SklearnProtocol
from rda_ext.solver import RDASolver
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.solver.checkpoint import Checkpoint, data_identity
from rda_ext.solver.collectives import RowGroup, agreed, row_group
from rda_ext.solver.collectives import agree_on_parameters, agree_on_width
from rda_ext.solver.distributed import DistributedRDASolver
from rda_ext.solver.training import autocast, make_optimizer, map_chunks
from rda_ext.validation import (
    as_matrix,
    check_params,
    is_int,
    like_input,
    output_dtype,
    resolve_device,
    resolve_dtype,
    resolve_inner_epochs,
    resolve_precision,
    vector_like_input,
    warn_if_outside_output_range,
)


class RobustAutoencoder(SklearnProtocol):
    """Robust Deep Autoencoder: X = L + S, L reconstructed by a deep autoencoder, S sparse.

    Each outer iteration trains the autoencoder on L = X - S for ``inner_epochs``, sets
    L = AE(L), then S = prox(X - L) for the ``penalty`` with threshold ``lam`` (the fused
    ``shrink_residual`` kernel), and measures c1 = ||X - L - S|| / ||X||, c2 = ||(L + S)_prev -
    L - S|| / ||X||. Training stops after ``outer_iter`` iterations, or once both c1 and c2 are
    below ``tol``.

    Parameters (stored as given; checked by ``fit``; the command line's ``fit`` options and their
    help are read from this list; the switches tied_weights, warm_start, cuda_graphs and verbose take
    True or False, a numpy bool, 0 or 1, and nothing else)
    ----------
    hidden : encoder layer sizes after the input, e.g. (400, 200); the decoder mirrors them. The
        default (128, 32), with 10 outer iterations and inner_epochs "auto", was chosen from a
        label-free sweep of widths and schedules (benchmarks/RESULTS.md): a narrow code and short
        training keep the network from learning the outliers too.
    penalty : "l1" (noisy entries), "l21_rows" (outlying rows), "l21_cols" (corrupted columns).
    lam : the proximal threshold, exactly as the kernels take it. If None, it is chosen at every
        outer iteration from ``contamination``.
    contamination : fraction of groups (rows, columns or entries) expected to be anomalous, in
        (0, 0.5). Without ``lam``, lam is set at every outer iteration to the quantile of the
        residual group norms that lets about this fraction of groups survive the shrinkage. With
        or without ``lam``, it also sets ``threshold_`` (the quantile of the training scores that
        flags this fraction of the rows; with outlier_score="residual", "l21_rows" takes lam) and
        the reference rows of the "residual+code" score.
    outer_iter : the most outer iterations (autoencoder training, then the proximal step).
    inner_epochs : epochs of autoencoder training per outer iteration, or "auto" (default): the
        fewest whole epochs that make at least 50 minibatch steps (1 epoch from 6,400 rows at batch
        128, 10 for 527 rows), so that small data gets as many steps as large.
    batch_size : rows per minibatch.
    lr : learning rate.
    optimizer : "adam" or "sgd" (with momentum 0.9).
    activation : of every hidden layer ("sigmoid" as in the paper, "relu", "elu", "tanh", ...).
    output_activation : of the reconstruction: "auto" (default) is "sigmoid" when the data the
        network sees (after ``preprocessing``) lies in [0, 1], as images do, else "linear".
    tied_weights : decoder weights are the transposed encoder weights (the authors' code).
    preprocessing : "auto" (default: "minmax" when X has values outside [0, 1], else "none"),
        "none", "minmax" (each column mapped to [0, 1] by its minimum and maximum in the training
        X) or "standardize" (each column centred on its median and divided by its interquartile
        range / 1.349; the standard deviation where that is 0; 1 for a constant column). The
        scaling is learned by ``fit`` and applied to new data, so that columns in different units
        weigh alike; the decomposition is computed on the scaled data and returned in X's units
        (``L_``, ``S_``), while scores, lam and thresholds are in scaled units.
    tol : convergence tolerance on c1 and c2 (0 runs all outer iterations).
    warm_start : a new ``fit`` continues from the fitted autoencoder, its optimizer state (for the
        same optimizer) and its batch order (random_state is not drawn from again), in the input
        space the network was trained in: the fitted scaling applies to the new X, and a changed
        ``preprocessing`` is refused. S and the reference of the first c2 continue from the
        previous fit only when the network's input is the same (the same values, rows in the same
        order, dtype; told by a fingerprint of its bytes), else S starts from zeros. A network of
        another shape (hidden, activation, output_activation, tied_weights or the number of
        features changed) cannot be continued: such a fit starts afresh, as with warm_start=False.
    device : "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    dtype : "float32" (default, whatever the input dtype) or "float64".
    precision : how the autoencoder computes in a float32 fit: "float32", "bfloat16" (its forward
        and backward under bfloat16 autocast; the weights, the optimizer state, X, L, S, the
        proximal step and the convergence numbers stay float32) or "auto" (bfloat16 where the
        device multiplies bfloat16 in hardware: AVX-512 BF16 or AMX, a GPU's tensor cores; else
        float32). New data goes through the network in the precision the fit ran with, not the
        parameter's value now: set_params(precision=...) takes effect at the next fit, and a model
        file keeps the fit's. It is resolved on the model's device ("auto" of a model loaded onto
        other hardware resolves there). A float64 fit computes in float64 ("auto" included;
        "bfloat16" is refused there).
    cuda_graphs : on a CUDA device, capture the autoencoder's training step (forward, backward,
        Adam or SGD update) of full batches in a CUDA graph and replay it: a step of a small
        network at a small batch is bound by kernel launches, which a replay issues at once. The
        batch order and the numbers are those of the step without it; ignored on a CPU.
    distributed : "auto" (default), True or False. With a ``torch.distributed`` process group
        initialised (e.g. under torchrun), "auto" and True fit the rows that each rank passes to
        ``fit`` as one data set: each rank holds only its rows of X, L and S, the autoencoder is
        replicated and trained with DistributedDataParallel, and lam, the threshold, the history
        (but its seconds) and the network are global and the same on every rank, while ``L_``, ``S_``,
        ``decision_scores_`` and ``labels_`` hold the rank's rows. False fits each rank's rows
        alone. Not with ``cuda_graphs`` or ``preprocessing="standardize"``.
    checkpoint : a directory, or None (default). After every outer iteration the state of the fit
        (weights, optimizer, S and L of every rank, the batch generators, the history) is written
        there, whole or not at all; a fit started again with the same data and parameters (e.g. a
        job that torchrun --max-restarts restarts) resumes from the last complete iteration.
    outlier_score : the outlier score of a row (rda_ext.estimator.scoring): "residual+code" (default)
        adds, each scaled to at most about 1 on a typical row, the mean squared residual x - L with every
        feature divided by its residual scale, and the squared Mahalanobis distance of the row's
        hidden code, both measured on the rows whose residual norm is at most the (1 -
        contamination) quantile; "residual" is the norm of x - L, the paper's detector. The
        default was chosen from the label-free sweep (benchmarks/RESULTS.md).
    random_state : seed of the initial weights and of the batch order: an integer >= 0, or a numpy
        RandomState or Generator to draw it from; None draws a fresh one.
    verbose : show a progress bar over the outer iterations, with c1, c2, lam, the non-zero groups
        and the throughput (rows trained per second: rows x inner epochs over the iteration's time).

    Fitted attributes
    -----------------
    L_, S_ : the decomposition of the training X, of X's type (numpy array or tensor), dtype and
        device.
    decision_scores_ : numpy, the ``outlier_score`` of each training row (its residual is its row of X - L).
    threshold_, labels_ : rows scoring above ``threshold_`` have label 1. ``threshold_`` is the (1 -
        contamination) quantile of the training scores; with outlier_score="residual" and "l21_rows" it is
        ``lam_``, so that ``labels_`` marks exactly the rows where S is non-zero.
    residual_scale_, code_center_, code_precision_ : numpy float64, the statistics of the
        "residual+code" score (sigma per feature, mu and the pseudo-inverse covariance of the
        code), in the network's input space; None with outlier_score="residual".
    lam_ : the lam of the last proximal step.  n_iter_ : outer iterations run.
    history_ : one dict per outer iteration with ``HISTORY_KEYS``: lam, mean training loss of the
        last inner epoch, recon_error ||L_in - AE(L_in)||_F, objective recon_error + lam *
        penalty(S), c1, c2, the number of non-zero groups of S and the seconds taken.
    model_ : the trained ``DeepAutoencoder``.  n_features_in_ : columns of X.
    """

    def __init__(
        self,
        hidden=(128, 32),
        penalty="l21_rows",
        lam=None,
        contamination=0.1,
        outer_iter=10,
        inner_epochs="auto",
        batch_size=128,
        lr=1e-3,
        optimizer="adam",
        activation="sigmoid",
        output_activation="auto",
        tied_weights=True,
        preprocessing="auto",
        tol=1e-7,
        warm_start=False,
        device="auto",
        dtype=None,
        precision="auto",
        cuda_graphs=False,
        distributed="auto",
        checkpoint=None,
        outlier_score="residual+code",
        random_state=None,
        verbose=False,
    ):
        self.hidden = hidden
        self.penalty = penalty
        self.lam = lam
        self.contamination = contamination
        self.outer_iter = outer_iter
        self.inner_epochs = inner_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.activation = activation
        self.output_activation = output_activation
        self.tied_weights = tied_weights
        self.preprocessing = preprocessing
        self.tol = tol
        self.warm_start = warm_start
        self.device = device
        self.dtype = dtype
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.distributed = distributed
        self.checkpoint = checkpoint
        self.outlier_score = outlier_score
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None) -> RobustAutoencoder:
        """Decomposes X (rows = instances) into L + S. ``y`` is ignored. Returns self."""
        # Ranks of a process group that differ in a parameter or in X's width would wait in
        # different collectives: each is agreed on before the first collective that depends on it.
        agree_on_parameters(row_group(self.distributed), self.get_params(), self._check_params)
        self._check_params()
        ranks = row_group(self.distributed)
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        X_in = agreed(ranks, lambda: self._check_input(X, device, dtype, ranks))
        agree_on_width(ranks, X_in.shape[1])
        self._check_warm_preprocessing()
        Xt, scaling, output_activation = self._network_input(X_in, ranks)
        n, d = Xt.shape
        n_all = n if ranks is None else ranks.count(n)
        architecture = ((d, *self.hidden), self.activation, output_activation, bool(self.tied_weights))
        warm = self.warm_start and hasattr(self, "model_") and self.model_.architecture == architecture
        if warm:  # the network continues in the input space it was trained in
            scaling = self._scaling_on(device)
            Xt = agreed(ranks, lambda: scale_rows(X_in, scaling, how=self._fitted_scaling()))
        # What S and the c2 reference of a warm start belong to: the network's input, bytes and all.
        # The same shape is not enough: other rows, or the same rows in another order, have other S.
        data_print = fingerprint(Xt)
        if warm or self.output_activation != "auto":  # "auto" chose sigmoid only for data in [0, 1]
            warn_if_outside_output_range(Xt, output_activation)
        # Nothing of the fitted state changes before the fit succeeds: a fit that raises (bad
        # numbers, a diverged loss, an interrupt) leaves the previous fit whole, or none.
        if warm:
            # A copy in the requested dtype and on the requested device, with an optimizer of its own:
            # the previous optimizer's state (Adam's moments, SGD's momentum) is carried over, cast to
            # the copy's dtype and device, so that a dtype or device change never mixes them.
            model = copy.deepcopy(self.model_).to(device=device, dtype=dtype)
            optim = make_optimizer(model, self.optimizer, float(self.lr), capturable=self._graphs(device))
            previous = getattr(self, "_optim", None)
            if previous is not None and type(previous) is type(optim):
                fresh = [{k: g[k] for k in ("lr", "capturable") if k in g} for g in optim.param_groups]
                optim.load_state_dict(copy.deepcopy(previous.state_dict()))
                for group, own in zip(optim.param_groups, fresh):  # not the previous fit's lr, capturable
                    group.update(own)
            same_rows = getattr(self, "S_", None) is not None and data_print == getattr(self, "_fit_fingerprint", None)
            S = scale_rows(as_matrix(self.S_, "S_", device, dtype), scaling, center=False, name="S_",
                           how=self._fitted_scaling()).clone() if same_rows else torch.zeros_like(Xt)
            batch_seed = self._batch_seed
        else:
            model, batch_seed = self._new_network(d, device, dtype, output_activation, ranks)
            optim = make_optimizer(model, self.optimizer, float(self.lr), capturable=self._graphs(device))
            S = torch.zeros_like(Xt)
            same_rows = False
        # Each rank draws its own batches (rank 0 those of a single-process fit).
        batches = torch.Generator(device=device).manual_seed(batch_seed + (ranks.rank if ranks else 0))

        # c2 of a warm start compares with where the previous fit ended.
        resumed = same_rows and getattr(self, "L_", None) is not None
        LS_prev = scale_rows(as_matrix(self.L_, "L_", device, dtype), scaling, name="L_", how=self._fitted_scaling()) \
            + S if resumed else torch.zeros_like(Xt)
        solver = self._solver(model, optim, Xt, S, LS_prev, batches, ranks)
        history = list(self.history_) if warm else []
        done = 0  # outer iterations of this fit restored from the checkpoint
        store = None
        if self.checkpoint is not None:
            # A restarted job may run longer or stop at another tol, and each rank has its own device;
            # the restored state replaces what random_state draws; the score is computed after the
            # last iteration. Anything else must match.
            params = {k: repr(v) for k, v in self.get_params().items()
                      if k not in ("outer_iter", "tol", "verbose", "checkpoint", "device", "random_state",
                                   "outlier_score")}
            identity = dict(params=params, rows=n_all, warm=len(history), data=data_identity(Xt, data_print))
            store = Checkpoint(self.checkpoint, ranks, identity)
            saved = agreed(ranks, lambda: store.resume(solver, batches))
            if ranks is not None:
                found = torch.tensor(len(saved))
                if ranks.min(found) != ranks.max(found):
                    raise ValueError(f"checkpoint {self.checkpoint}: the ranks found different states in it; it must "
                                     "be one folder that every rank reads and writes (a shared file system)")
            if saved:
                solver.norms = solver.residual_norms()  # those of the restored last step
                done, history = len(saved) - len(history), saved
        remaining = self.outer_iter - done
        if done and history[-1]["c1"] < self.tol and history[-1]["c2"] < self.tol:
            remaining = 0  # the restored fit had converged
        show = self.verbose and (ranks is None or ranks.rank == 0)
        progress = tqdm(total=self.outer_iter, initial=done, disable=not show, desc="RDA outer iterations", unit="it")

        def record(row: dict) -> None:
            history.append(dict(iteration=len(history) + 1, **row))
            if store is not None:
                store.save(solver, batches, history)
            progress.update(1)
            progress.set_postfix({"c1": f"{row['c1']:.2e}", "c2": f"{row['c2']:.2e}", "lam": f"{row['lam']:.4g}",
                                  "nonzero": row["n_nonzero"],
                                  "rows/s": f"{n_all * solver.inner_epochs / max(row['seconds'], 1e-9):.3g}"})

        try:
            run = solver.run(remaining, self.tol, record)
        finally:
            progress.close()

        return self._store(X, solver, model, optim, batch_seed, history, done + len(run), scaling, ranks,
                           data_print=data_print)

    def _check_input(self, X, device: torch.device, dtype: torch.dtype, ranks: RowGroup | None) -> Tensor:
        if ranks is not None and self.preprocessing == "standardize":
            raise ValueError('preprocessing="standardize" is not available in a distributed fit (its column '
                             'quantiles span all ranks): use "minmax", or scale X beforehand')
        if ranks is not None and self.cuda_graphs:
            raise ValueError("cuda_graphs is not available in a distributed fit (the gradient all-reduce runs "
                             "outside the captured step)")
        return as_matrix(X, "X", device, dtype)

    def _network_input(self, X: Tensor, ranks: RowGroup | None = None) -> tuple[Tensor, tuple[Tensor, Tensor] | None, str]:
        """What a fresh fit's network sees of X (scaled or not), the (center, scale) of the scaling
        (None without), and the output activation that suits it (over all ranks' rows)."""
        # One pass over X decides both "auto"s while X is not scaled.
        inside = in_unit_interval(X, ranks) if "auto" in (self.preprocessing, self.output_activation) else None
        scaling = scaling_for(self.preprocessing, X, inside, ranks)
        Xs = scale_rows(X, scaling, how=f'preprocessing="{self.preprocessing}"')
        return Xs, scaling, resolve_output_activation(self.output_activation, Xs, inside if scaling is None else None,
                                                      ranks)

    def _check_warm_preprocessing(self) -> None:
        """A warm start continues the fitted network in the input space it was trained in, with
        the fitted scaling: another ``preprocessing`` cannot apply, and is refused rather than
        ignored."""
        fitted = getattr(self, "_fit_preprocessing", self.preprocessing)
        if self.warm_start and hasattr(self, "model_") and self.preprocessing != fitted:
            raise ValueError(f'warm_start continues the fitted network, which was trained on X scaled by '
                             f'preprocessing="{fitted}" (center_, scale_ stay with it), so preprocessing='
                             f'"{self.preprocessing}" cannot apply: set preprocessing="{fitted}", or refit with '
                             'warm_start=False')

    def _fitted_scaling(self) -> str:
        return f'the fitted scaling (preprocessing="{getattr(self, "_fit_preprocessing", self.preprocessing)}")'

    def _scaling_on(self, device: torch.device) -> tuple[Tensor, Tensor] | None:
        if self.center_ is None:
            return None
        return torch.from_numpy(self.center_).to(device), torch.from_numpy(self.scale_).to(device)

    def _new_network(self, d: int, device: torch.device, dtype: torch.dtype, output_activation: str,
                     ranks: RowGroup | None = None) -> tuple[DeepAutoencoder, int]:
        """The initial network for ``d`` features, drawn from ``random_state``, and the seed of the
        batch orders (drawn after the weights, from the same generator). Every rank draws from
        rank 0's seed (a seed that is not given is drawn on each)."""
        seed = _initial_seed(self.random_state)
        if ranks is not None and not is_int(self.random_state):
            seed = ranks.broadcast_int(seed)
        init = torch.Generator().manual_seed(seed)
        model = DeepAutoencoder(
            (d, *self.hidden), self.activation, output_activation, self.tied_weights, init
        ).to(device=device, dtype=dtype)
        return model, int(torch.randint(2**62, (), generator=init))

    def _solver(self, model, optim, Xt: Tensor, S: Tensor, LS_prev: Tensor,
                batches: torch.Generator | None, ranks: RowGroup | None = None) -> RDASolver:
        # "auto" epochs from the largest shard: every rank runs as many steps as its rows need.
        rows = Xt.shape[0] if ranks is None else max(ranks.rows_per_rank(Xt.shape[0]))
        common = dict(
            penalty=self.penalty, lam=None if self.lam is None else float(self.lam),
            contamination=float(self.contamination),
            inner_epochs=resolve_inner_epochs(self.inner_epochs, rows, self.batch_size),
            batch_size=self.batch_size, generator=batches, amp=resolve_precision(self.precision, Xt.device, Xt.dtype),
        )
        if ranks is not None:
            return DistributedRDASolver(model, optim, Xt, S, LS_prev, ranks=ranks, **common)
        # A stacked fit's solvers (no model) do not train.
        return RDASolver(model, optim, Xt, S, LS_prev, graphs=model is not None and self._graphs(Xt.device), **common)

    def _graphs(self, device: torch.device) -> bool:
        return bool(self.cuda_graphs) and device.type == "cuda"

    def _store(self, X, solver: RDASolver, model, optim, batch_seed: int, history: list[dict], n_iter: int,
               scaling: tuple[Tensor, Tensor] | None, ranks: RowGroup | None = None, data_print: str | None = None):
        """The fitted attributes from a finished solver (its L and S: the decomposition of X, in the
        network's input space, which ``scaling`` maps back to X's units). ``data_print``: the
        fingerprint of the network's input (solver.X), where the caller has it."""
        L_out, S_out = agreed(ranks, lambda: (_in_xs_units(solver.L, X, "L_", scaling),
                                              _in_xs_units(solver.S, X, "S_", scaling, center=False)))
        residuals = solver.row_scores().to(torch.float64)
        lam_ = history[-1]["lam"]
        statistics = None
        if self.outlier_score == "residual+code":
            codes = map_chunks(self._network(model.encode, model), solver.X)
            reference = residuals <= self._top_quantile(residuals, ranks)
            statistics = scoring.fit_statistics(solver.X, solver.L, codes, reference, ranks)
            scores = scoring.row_scores(solver.X, solver.L, codes, statistics)
        else:
            scores = residuals
        if self.outlier_score == "residual" and self.penalty == "l21_rows":
            threshold = lam_
            labels = solver.nonzero_groups(lam_).cpu().numpy().astype(np.int64)  # the non-zero rows of S
        else:
            threshold = self._top_quantile(scores, ranks)
            labels = (scores > threshold).cpu().numpy().astype(np.int64)

        self.model_, self._optim = model.eval(), optim
        self._batch_seed = batch_seed + 1  # a warm-started fit draws new batch orders
        # Facts of this fit, which set_params cannot change until the next one: the precision new
        # rows go through the network in, the preprocessing a warm start must keep, and the data
        # its S belongs to.
        self._fit_precision, self._fit_preprocessing = self.precision, self.preprocessing
        self._fit_fingerprint = fingerprint(solver.X) if data_print is None else data_print
        self.n_features_in_ = solver.X.shape[1]
        self.n_iter_ = n_iter
        self.history_ = history
        self.lam_ = lam_
        self.L_, self.S_ = L_out, S_out
        self.center_, self.scale_ = (None, None) if scaling is None else (t.cpu().numpy() for t in scaling)
        self.decision_scores_ = scores.cpu().numpy()
        self.threshold_, self.labels_ = threshold, labels
        self.residual_scale_, self.code_center_, self.code_precision_ = (
            (None,) * 3 if statistics is None else (t.cpu().numpy() for t in statistics))
        return self

    def _top_quantile(self, values: Tensor, ranks: RowGroup | None) -> float:
        """The (1 - contamination) quantile of the scores ``values`` (>= 0) of all ranks' rows."""
        if ranks is None:
            return float(np.quantile(values.cpu().numpy(), 1.0 - self.contamination))
        return ranks.quantile(values, 1.0 - self.contamination)

    # ---------------------------------------------------------------- new data
    def decision_function(self, X):
        """Outlier score of each row of X (data never seen in fit works): the ``outlier_score`` with the
        residual X - AE(X). Same type as X (numpy or tensor on X's device), float64 for numpy."""
        Xt = self._check_new(X)
        if self.residual_scale_ is None:
            network = self._network(self.model_)
            scores = map_chunks(lambda x: ops.group_norms(x, 1, minus=network(x)), Xt)
        else:
            statistics = tuple(torch.from_numpy(t).to(Xt.device)
                               for t in (self.residual_scale_, self.code_center_, self.code_precision_))
            encode, decode = self._network(self.model_.encode), self._network(self.model_.decode)

            def score(x: Tensor) -> Tensor:
                code = encode(x)  # once: the reconstruction decodes it
                return scoring.row_scores(x, decode(code), code, statistics)

            scores = map_chunks(score, Xt)
            if isinstance(X, Tensor):  # a tensor's scores in its dtype; numpy's stay float64, as threshold_
                scores = scores.to(Xt.dtype)
        return vector_like_input(scores, X)

    def predict(self, X):
        """1 for the rows of X scoring above ``threshold_``, else 0."""
        scores = self.decision_function(X)
        if isinstance(scores, Tensor):
            return (scores > self.threshold_).to(torch.int64)
        return (scores > self.threshold_).astype(np.int64)

    def transform(self, X):
        """The hidden code (the innermost layer) of each row of X."""
        Xt = self._check_new(X)
        return like_input(map_chunks(self._network(self.model_.encode), Xt), X)

    def reconstruct(self, X):
        """AE(X): the low-dimensional part L the trained autoencoder gives for new rows."""
        Xt = self._check_new(X)
        p = next(self.model_.parameters())
        return _in_xs_units(map_chunks(self._network(self.model_), Xt), X, "the reconstruction",
                            self._scaling_on(p.device))

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        """The hidden code of the training rows after ``fit(X)``."""
        return self.fit(X).transform(X)

    def _check_new(self, X) -> Tensor:
        self._check_fitted()
        p = next(self.model_.parameters())
        Xt = as_matrix(X, "X", p.device, p.dtype)
        if Xt.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {Xt.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input"
            )
        return scale_rows(Xt, self._scaling_on(p.device), how=self._fitted_scaling())

    def _network(self, fn, model: DeepAutoencoder | None = None):
        """``fn`` (the network or its encoder) in the fit's precision, returning X's dtype: that of
        the fitted model, or of ``model``, the one of the fit under way (whose precision is the
        parameter's)."""
        p = next((self.model_ if model is None else model).parameters())
        precision = self.precision if model is not None else getattr(self, "_fit_precision", self.precision)
        amp = resolve_precision(precision, p.device, p.dtype)

        def run(x: Tensor) -> Tensor:
            with autocast(x.device, amp):
                return fn(x).to(x.dtype)

        return run

    # ---------------------------------------------------------------- persistence
    def save(self, path, *, data: bool = True) -> None:
        """Writes parameters, weights and the fitted state to ``path`` (a torch file that
        ``load`` reads with ``weights_only=True``). ``data=False`` leaves out L_ and S_ (the size
        of the training data). The file is written whole or not at all."""
        save_model(self, path, data=data)

    @classmethod
    def load(cls, path, *, device: str | None = None) -> RobustAutoencoder:
        """A model written by ``save``. Loading runs no code from the file (weights_only).
        ``device`` overrides the saved device parameter (e.g. "cpu" for a model fitted on a GPU)."""
        return load_model(cls, path, device=device)

    def _check_params(self) -> None:
        check_params(self.get_params())


def _in_xs_units(t: Tensor, X, name: str, scaling: tuple[Tensor, Tensor] | None, center: bool = True):
    """``t`` (L or S in the network's input space) in X's units and in the form of the caller's X
    (rounded once, to its dtype), refused where that dtype cannot hold it: the residual of a column
    near the ends of float32 may span twice as much."""
    out = like_input(unscale_rows(t, scaling, center, dtype=output_dtype(X, t.dtype)), X)
    finite = np.isfinite(out).all(0) if isinstance(out, np.ndarray) else torch.isfinite(out).all(0).cpu().numpy()
    if not finite.all():
        j = int(np.flatnonzero(~finite)[0])
        dtype = str(out.dtype).removeprefix("torch.")
        advice = "pass X as float64, or divide that column by a constant" if dtype != "float64" else \
            "divide that column by a constant"
        raise ValueError(f"{name} (in X's units) has values beyond the range of {dtype} in column {j}: {advice}")
    return out


def _initial_seed(random_state) -> int:
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
