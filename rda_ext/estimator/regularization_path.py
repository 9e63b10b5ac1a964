"""``lambda_path``: RDA fitted along a decreasing sequence of lam, with warm starts or all at once."""

from __future__ import annotations

import math
import os
import re
from collections import Counter

import numpy as np
import torch

from rda_ext.estimator.fitted_state import FittedState
from rda_ext.estimator.fitting import initial_seed
from rda_ext.estimator.robust_autoencoder import RobustAutoencoder
from rda_ext.estimator.stacked_fit import fit_together
from rda_ext.ops import GROUP_DIM
from rda_ext.solver.collectives import row_group
from rda_ext.validation import check_params, to_cpu

# The checkpoint subfolder of the i-th fit of a path (in the order of the fits, decreasing lam):
# "lam-<i>-<lam>", the lam as Python's repr of the float, which reads back to the same number.
_LAM_FOLDER = re.compile(r"lam-(\d+)-(.+)")


def lambda_path(X, lams, *, parallel: bool = False, warm_outer_iter: int | None = None, warm_inner_epochs: int = 1,
                **params) -> list[dict]:
    """Fits RDA for every lam in ``lams``, from the largest to the smallest, each fit starting
    from the previous one's autoencoder and S (warm start). The first fit runs ``outer_iter``
    outer iterations of ``inner_epochs``; the others ``warm_outer_iter`` (default: a quarter of
    ``outer_iter``) of ``warm_inner_epochs`` (default 1; 0 keeps the autoencoder of the first fit
    and only alternates L = AE(X - S) and the proximal step). With hidden="auto" the first fit
    chooses the network (rda_ext.estimator.network_shape) and the warm fits continue it, the wide
    one for twice ``warm_outer_iter``.

    Every warm epoch trains the autoencoder further, and an autoencoder trained longer also learns
    to reconstruct the outliers: with warm fits as long as the first, the end of a path flags far
    fewer rows than a fresh fit at the same lam would. One epoch per warm iteration keeps the path
    close to separate fits (on the demo's MNIST set: best F1 0.79 either way, 5x less time).

    ``parallel=True`` fits every lam separately instead, all at once (``fit_together``): one
    network and one S per lam, all networks trained in one batched step on the same minibatches,
    each as ``RobustAutoencoder(lam=...).fit`` would run it (``outer_iter`` x ``inner_epochs``,
    stopping at ``tol``), from the same initial weights; with a given random_state each lam's fit
    is the one ``fit`` gives. ``warm_outer_iter`` and ``warm_inner_epochs`` do not apply.

    Returns one dict per lam, in decreasing order of lam: ``lam``, ``decision_scores``,
    ``labels``, ``n_flagged``, ``n_nonzero`` (non-zero groups of S), ``nonzero_groups`` (a
    boolean numpy mask of the rows or columns where S is non-zero; None for "l1") and
    ``history``. ``labels`` follow the ``score``: with outlier_score="residual" and "l21_rows" they are S's
    non-zero rows; with the other scores (the default among them) the top ``contamination`` fraction of the
    scores at every lam, so that along a path S's rows are read from ``nonzero_groups``.

    ``lams`` is a number or a 1-D list, tuple or array of distinct finite numbers >= 0, in any
    order (a value given twice is refused rather than fitted twice or dropped: one result per lam).

    ``checkpoint=DIR`` checkpoints each lam's fit in a folder of its own, ``DIR/lam-<i>-<lam>``
    (i: its place in the path, 0 for the largest lam), so that the same call again, after an
    interruption or not, resumes every fit from its folder: finished ones return their result at
    once, the interrupted one continues from its last complete outer iteration. Since each fit
    starts from the previous one, DIR is refused if it holds the folder of another path (another
    lam at some place i); a path that extends a previous one by smaller lams continues it. Not
    with ``parallel=True``: ``fit_together`` fits all lams in one run and keeps no checkpoint.

    A path runs on one process: with a ``torch.distributed`` process group initialised it is
    refused, unless ``distributed=False`` asks each rank to fit its own rows alone."""
    if "lam" in params:
        raise ValueError("pass the lam values as lams, not lam=")
    ordered = sorted(_lam_values(lams), reverse=True)
    check_params(RobustAutoencoder(**params).get_params())
    checkpoint = params.pop("checkpoint", None)
    if parallel:
        if checkpoint is not None:
            raise ValueError("lambda_path(parallel=True) does not checkpoint (fit_together fits every lam in one "
                             "run and keeps no state to resume): pass checkpoint=None, or parallel=False to "
                             "checkpoint each lam's fit")
        # One seed for all (None or a numpy generator draws it once): the fits differ in lam only.
        params["random_state"] = initial_seed(params.get("random_state"))
        fits = fit_together([RobustAutoencoder(**params, lam=lam) for lam in ordered], X)
        return [_result(est, est.history_) for est in fits]
    est = RobustAutoencoder(**params)
    if row_group(est.distributed).distributed:
        raise ValueError("lambda_path runs on one process: with a torch.distributed process group initialised, "
                         "pass distributed=False to fit each rank's rows alone")
    folders = [None] * len(ordered) if checkpoint is None else _lam_folders(checkpoint, ordered)
    first = dict(outer_iter=est.outer_iter, inner_epochs=est.inner_epochs)
    warm = dict(
        outer_iter=max(1, est.outer_iter // 4) if warm_outer_iter is None else warm_outer_iter,
        inner_epochs=warm_inner_epochs,
    )
    results = []
    for i, lam in enumerate(ordered):
        est.set_params(lam=lam, warm_start=i > 0, checkpoint=folders[i], **(warm if i else first))
        est.fit(X)
        results.append(_result(est, est.history_[-est.n_iter_ :]))
    return results


def _lam_values(lams) -> list[float]:
    """``lams`` as a list of floats, each error naming lams."""
    what = "lams must be a number or a 1-D list, tuple or array of numbers"
    if isinstance(lams, torch.Tensor):
        lams = lams.detach().cpu().numpy()
    if _is_number(lams):
        values = [lams]
    elif isinstance(lams, np.ndarray):
        if lams.ndim > 1:
            raise ValueError(f"{what}, got an array of shape {lams.shape}")
        values = list(lams.reshape(-1))  # numpy scalars, checked one by one below
    elif isinstance(lams, (list, tuple, range)):
        values = list(lams)
    else:
        hint = " (a generator or iterator is read once: pass list(lams))" if hasattr(lams, "__next__") else ""
        raise ValueError(f"{what}, got {type(lams).__name__} {lams!r}{hint}")
    if not values:
        raise ValueError("lams must hold at least one value")
    for v in values:
        if isinstance(v, (list, tuple, np.ndarray, torch.Tensor)):
            raise ValueError(f"{what}, got a nested sequence ({v!r} in it)")
        if not _is_number(v):
            raise ValueError(f"lams must hold numbers, got {v!r} ({type(v).__name__}) in it")
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"lams must hold finite numbers >= 0 (a lam is a proximal threshold), got {v!r}")
    values = [float(v) for v in values]
    twice = [v for v, count in Counter(values).items() if count > 1]
    if twice:
        raise ValueError(f"lams holds {', '.join(map(repr, twice))} more than once: each lam is fitted once "
                         "(one result per lam), pass distinct values")
    return values


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _lam_folders(checkpoint, ordered: list[float]) -> list[str]:
    """The checkpoint folder of each fit of the path, after checking that ``checkpoint`` holds no
    folder of another path: each fit starts from the previous one's state, which a folder of the
    same lam at the same place but after other lams would not hold."""
    root = os.fspath(checkpoint)
    names = [f"lam-{i}-{lam!r}" for i, lam in enumerate(ordered)]
    if os.path.isdir(root):
        for entry in sorted(os.listdir(root)):
            m = _LAM_FOLDER.fullmatch(entry)
            if m and int(m[1]) < len(names) and entry != names[int(m[1])]:
                raise ValueError(f"checkpoint {root} holds the fits of another lam path ({entry}, where this path's "
                                 f"fit {m[1]} is {names[int(m[1])]}): each fit starts from the previous one, so "
                                 "each path needs a folder of its own")
    return [os.path.join(root, name) for name in names]


def _result(est: RobustAutoencoder, run: list[dict]) -> dict:
    state, dim = FittedState.of(est), GROUP_DIM[est.penalty]
    nonzero = None if dim is None else to_cpu(state.S_).abs().sum(dim).gt(0).numpy()
    return dict(
        lam=state.lam_, decision_scores=state.decision_scores_, labels=state.labels_,
        n_flagged=int(state.labels_.sum()), n_nonzero=run[-1]["n_nonzero"], nonzero_groups=nonzero, history=run,
    )
