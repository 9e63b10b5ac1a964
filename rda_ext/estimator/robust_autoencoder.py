"""``RobustAutoencoder``: the Robust Deep Autoencoder of Zhou & Paffenroth (KDD 2017) as a
scikit-learn/PyOD-style estimator, trained with the fused proximal kernels."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rda_ext import ops
from rda_ext.estimator import fitting, scoring
from rda_ext.estimator.fitted_state import FittedState
from rda_ext.estimator.preprocessing import in_xs_units, scale_rows
from rda_ext.estimator.sklearn_protocol import SklearnProtocol
from rda_ext.io.model_file import load_model, save_model
from rda_ext.solver.training import in_precision, map_chunks
from rda_ext.validation import as_matrix, like_input, resolve_precision, vector_like_input


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
    hidden : encoder layer sizes after the input, e.g. (128, 32); the decoder mirrors them. "auto"
        (default): (128, 32), and on inputs of more than 257 features also a wide network that
        halves the input at each layer, (n_features // 2, n_features // 4), trained for twice
        ``outer_iter``; the fit keeps the narrow one unless the wide one's residual contrast (the
        mean residual norm of the rows at or above the (1 - contamination) quantile over the
        median residual norm) is more than 1.1 times larger (rda_ext.estimator.network_shape). A
        narrow code and short training keep the network from learning the outliers (Fashion-MNIST,
        tables); on handwritten digits the wide network wins, and the contrast tells the two apart
        without labels (benchmarks/RESULTS.md; measured with "l21_rows", while the contrast is of the
        rows' residuals for every penalty). Give sizes to train one network. A warm start continues
        the network it kept.
    penalty : "l1" (noisy entries), "l21_rows" (outlying rows), "l21_cols" (corrupted columns).
    lam : the proximal threshold, exactly as the kernels take it. If None, it is chosen at every
        outer iteration from ``contamination``.
    contamination : fraction of groups (rows, columns or entries) expected to be anomalous, in
        (0, 0.5). Without ``lam``, lam is set at every outer iteration to the quantile of the
        residual group norms that lets about this fraction of groups survive the shrinkage. With
        or without ``lam``, it also sets ``threshold_`` (the quantile of the training scores that
        flags this fraction of the rows; with outlier_score="residual", "l21_rows" takes lam) and
        the reference rows of the other scores ("residual+code", "residual+code+knn", "knn").
    outer_iter : the most outer iterations (autoencoder training, then the proximal step); twice
        as many for the wide network of hidden="auto".
    inner_epochs : epochs of autoencoder training per outer iteration, or "auto" (default): the
        fewest whole epochs that make at least 50 minibatch steps (1 epoch from 6,400 rows at batch
        128, 10 for 527 rows), so that small data gets as many steps as large, and at most 200
        steps: beyond 25,600 rows at batch 128 each outer iteration trains on a fresh random sample
        of 200 batches, so that the training cost does not grow with the rows (the reconstruction,
        the proximal step and the scores still cover every row).
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
        replicated (rank 0's weights, each step's gradients averaged over the ranks), and lam, the
        threshold, the history (but its seconds) and the network are global and the same on every
        rank, while ``L_``, ``S_``, ``decision_scores_`` and ``labels_`` hold the rank's rows. False fits each rank's rows
        alone. Not with ``cuda_graphs`` or ``preprocessing="standardize"``.
    checkpoint : a directory, or None (default). After every outer iteration the state of the fit
        (weights, optimizer, S and L of every rank, the batch generators, the history) is written
        there, whole or not at all; a fit started again with the same data and parameters (e.g. a
        job that torchrun --max-restarts restarts) resumes from the last complete iteration. With
        hidden="auto" and two candidate networks, each has a folder of its own in it
        ("hidden-128-32", ...).
    outlier_score : the outlier score of a row (rda_ext.estimator.scoring): "residual+code" adds,
        each scaled to at most about 1 on a typical row, the mean squared residual x - L with every
        feature divided by its residual scale, and the squared Mahalanobis distance of the row's
        hidden code, both measured on the rows whose residual norm is at most the (1 -
        contamination) quantile (the reference rows, of both scores); "residual+code+knn"
        (default) adds to it, each divided by its spread over the training rows, the row's
        distance to its 10th nearest neighbour among at most 1,000 reference rows drawn at random
        (kept in the model: a training row among them does not count itself, a new row does);
        "knn" is that distance alone (the network only chooses the reference rows); "residual" is
        the norm of x - L, the paper's detector. The default was chosen on ADBench's tables and
        the label-free image sweep (benchmarks/RESULTS.md, which measures "knn" too).
    random_state : seed of the initial weights and of the batch order: an integer >= 0, or a numpy
        RandomState or Generator to draw it from; None draws a fresh one.
    verbose : show a progress bar over the outer iterations, with c1, c2, lam, the non-zero groups
        and the throughput (rows trained per second over the iteration's time).

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
        code), in the network's input space; None with outlier_score "residual" and "knn".
    neighbours_, term_spread_ : the local term of "residual+code+knn" and "knn" (else None): the
        neighbour rows (numpy, in the network's input space, the fit's dtype) and the spread
        (float64) of the "residual+code" score and of the neighbour distance over the training
        rows (None for "knn").
    lam_ : the lam of the last proximal step.  n_iter_ : outer iterations run.
    history_ : one dict per outer iteration with ``HISTORY_KEYS``: lam, mean training loss of the
        last inner epoch, recon_error ||L_in - AE(L_in)||_F, objective recon_error + lam *
        penalty(S), c1, c2, the number of non-zero groups of S and the seconds taken.
    model_ : the trained ``DeepAutoencoder``.  n_features_in_ : columns of X.
    hidden_ : the encoder layer sizes of ``model_`` (with hidden="auto", of the shape kept).
    shape_contrast_ : with hidden="auto" and two candidate shapes, {sizes: residual contrast} of
        each (the shape kept is ``hidden_``); else None.
    """

    def __init__(
        self,
        hidden="auto",
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
        outlier_score="residual+code+knn",
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
        fitting.fit(self, X).apply(self)
        return self

    # ---------------------------------------------------------------- new data
    def decision_function(self, X):
        """Outlier score of each row of X (data never seen in fit works): the ``outlier_score`` with the
        residual X - AE(X) ("knn": the neighbour distance alone). Same type as X (numpy or tensor on
        X's device), float64 for numpy."""
        Xt = self._check_new(X)
        # What the fit stored decides the score, not the parameter (set_params may have changed it
        # since); one from before the local term has none.
        state = FittedState.of(self)
        local = None if state.neighbours_ is None else scoring.LocalTerm(
            torch.from_numpy(state.neighbours_).to(Xt.device),
            None if state.term_spread_ is None else torch.from_numpy(state.term_spread_).to(Xt.device))
        if self.residual_scale_ is None and local is None:
            network = self._network(self.model_)
            scores = map_chunks(lambda x: ops.group_norms(x, 1, minus=network(x)), Xt)
        elif self.residual_scale_ is None:  # "knn": the distance alone, in the network's input space
            scores = map_chunks(local.scores, Xt)
        else:
            statistics = tuple(torch.from_numpy(t).to(Xt.device)
                               for t in (self.residual_scale_, self.code_center_, self.code_precision_))
            encode, decode = self._network(self.model_.encode), self._network(self.model_.decode)

            def score(x: Tensor) -> Tensor:
                code = encode(x)  # once: the reconstruction decodes it
                scores = scoring.row_scores(x, decode(code), code, statistics)
                return scores if local is None else local.scores(x, scores)

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
        return in_xs_units(map_chunks(self._network(self.model_), Xt), X, "the reconstruction",
                           fitting.scaling_on(FittedState.of(self), Xt.device))

    @property
    def hidden_(self) -> tuple[int, ...]:
        """The encoder layer sizes of ``model_`` (with hidden="auto", of the shape kept)."""
        self._check_fitted()
        return tuple(self.model_.sizes[1:])

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
        state = FittedState.of(self)
        return scale_rows(Xt, fitting.scaling_on(state, p.device), how=fitting.fitted_scaling(state))

    def _network(self, fn):
        """``fn`` (the fitted network or its encoder) in the fit's precision, returning X's dtype."""
        p = next(self.model_.parameters())
        return in_precision(fn, resolve_precision(FittedState.of(self)._fit_precision, p.device, p.dtype))

    # ---------------------------------------------------------------- persistence
    def save(self, path, *, data: bool = True) -> None:
        """Writes parameters, weights and the fitted state to ``path`` (a torch file that
        ``load`` reads with ``weights_only=True``). ``data=False`` leaves out L_ and S_ (the size
        of the training data); the local term's ``neighbours_`` (up to 1,000 training rows, in the
        network's input space) stay in either way, as the model scores new rows with them. The
        file is written whole or not at all."""
        save_model(self, path, data=data)

    @classmethod
    def load(cls, path, *, device: str | None = None) -> RobustAutoencoder:
        """A model written by ``save``. Loading runs no code from the file (weights_only).
        ``device`` overrides the saved device parameter (e.g. "cpu" for a model fitted on a GPU)."""
        return load_model(cls, path, device=device)
