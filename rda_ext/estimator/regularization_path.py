"""``lambda_path``: RDA fitted along a decreasing sequence of lam, with warm starts or all at once."""

from __future__ import annotations

import numpy as np

from rda_ext.estimator.robust_autoencoder import RobustAutoencoder, _initial_seed
from rda_ext.estimator.stacked_fit import fit_together
from rda_ext.ops import GROUP_DIM
from rda_ext.validation import to_cpu


def lambda_path(X, lams, *, parallel: bool = False, warm_outer_iter: int | None = None, warm_inner_epochs: int = 1,
                **params) -> list[dict]:
    """Fits RDA for every lam in ``lams``, from the largest to the smallest, each fit starting
    from the previous one's autoencoder and S (warm start). The first fit runs ``outer_iter``
    outer iterations of ``inner_epochs``; the others ``warm_outer_iter`` (default: a quarter of
    ``outer_iter``) of ``warm_inner_epochs`` (default 1; 0 keeps the autoencoder of the first fit
    and only alternates L = AE(X - S) and the proximal step).

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
    non-zero rows; with the default "residual+code" the top ``contamination`` fraction of the
    scores at every lam, so that along a path S's rows are read from ``nonzero_groups``."""
    if "lam" in params:
        raise ValueError("pass the lam values as lams, not lam=")
    values = [float(v) for v in np.atleast_1d(np.asarray(lams, dtype=np.float64))]
    if not values:
        raise ValueError("lams must hold at least one value")
    ordered = sorted(set(values), reverse=True)
    if parallel:
        RobustAutoencoder(**params)._check_params()
        # One seed for all (None or a numpy generator draws it once): the fits differ in lam only.
        params["random_state"] = _initial_seed(params.get("random_state"))
        fits = fit_together([RobustAutoencoder(**params, lam=lam) for lam in ordered], X)
        return [_result(est, est.history_) for est in fits]
    est = RobustAutoencoder(**params)
    first = dict(outer_iter=est.outer_iter, inner_epochs=est.inner_epochs)
    warm = dict(
        outer_iter=max(1, est.outer_iter // 4) if warm_outer_iter is None else warm_outer_iter,
        inner_epochs=warm_inner_epochs,
    )
    results = []
    for i, lam in enumerate(ordered):
        est.set_params(lam=lam, warm_start=i > 0, **(warm if i else first))
        est.fit(X)
        results.append(_result(est, est.history_[-est.n_iter_ :]))
    return results


def _result(est: RobustAutoencoder, run: list[dict]) -> dict:
    dim = GROUP_DIM[est.penalty]
    nonzero = None if dim is None else to_cpu(est.S_).abs().sum(dim).gt(0).numpy()
    return dict(
        lam=est.lam_, decision_scores=est.decision_scores_, labels=est.labels_,
        n_flagged=int(est.labels_.sum()), n_nonzero=run[-1]["n_nonzero"], nonzero_groups=nonzero, history=run,
    )
