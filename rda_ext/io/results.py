"""Writing what ``rda-ext fit`` and ``rda-ext score`` computed: a fit's result (an .npz file or a
folder, with the keys of result_schema) and its model file, all or none, by one process or by the
ranks of a row-sharded fit (``ranks``, a row group of size one for one process)."""

from __future__ import annotations

import numpy as np

from rda_ext.io import result_folder
from rda_ext.io.atomic import atomic_write_all, npz_writer, save_npz
from rda_ext.io.model_file import model_writer
from rda_ext.io.result_schema import FIT_JSON, FIT_NPZ, LABELS, ROWS, SCORE_NPZ, SCORES, Key, pick
from rda_ext.solver import HISTORY_KEYS
from rda_ext.solver.collectives import RowGroup, agreed


def write_fit(est, out: str, model: str | None, folder: bool, ranks: RowGroup) -> int:
    """``est``'s result to ``out`` (a folder where ``folder``), with the model file ``model`` where
    it is not None. Every rank calls it; returns the number of rows flagged over all ranks, on rank
    0 (0 on the others for an .npz)."""
    if folder:
        _write_folder(est, out, model, ranks)
        return ranks.count(int(est.labels_.sum()))
    rows = _gather_rows(est, ranks, ROWS)

    def write():
        if rows is None:  # ranks other than 0
            return
        result = npz_writer(**pick(FIT_NPZ, {**rows, **_fit_values(est)}))
        # The result and the model are written together, all or none.
        outputs = [(out, result)] + ([(model, _model_of_all_rows(est, rows))] if model else [])
        atomic_write_all(outputs)

    agreed(ranks, write)
    return int(rows[LABELS.name].sum()) if rows is not None else 0


def write_scores(out: str, scores: np.ndarray, labels: np.ndarray, threshold: float) -> None:
    save_npz(out, **pick(SCORE_NPZ, dict(scores=scores, labels=labels, threshold=np.float64(threshold))))


def _own_rows(est) -> dict:
    """This process's rows of the keys of ``ROWS``."""
    return pick(ROWS, dict(L=est.L_, S=est.S_, scores=est.decision_scores_, labels=est.labels_))


def _fit_values(est) -> dict:
    """The values of the fit as a whole, as the .npz holds them."""
    history = np.array([[h[k] for k in HISTORY_KEYS] for h in est.history_], dtype=np.float64)
    return dict(lam=np.float64(est.lam_), threshold=np.float64(est.threshold_), history=history,
                history_columns=np.array(HISTORY_KEYS))


def _gather_rows(est, ranks: RowGroup, keys: tuple[Key, ...]) -> dict | None:
    """``keys`` of ``ROWS`` for all rows: on rank 0 (gathered), None on the others."""
    mine = pick(keys, _own_rows(est))
    parts = ranks.gather_to_first(mine)
    if parts is None:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in mine}


def _model_of_all_rows(est, rows: dict):
    """The model file of a single-process fit: the training scores and labels of all rows."""
    own = est.decision_scores_, est.labels_
    est.decision_scores_, est.labels_ = rows[SCORES.name], rows[LABELS.name]
    try:
        return model_writer(est, data=False)
    finally:
        est.decision_scores_, est.labels_ = own


def _write_folder(est, out: str, model: str | None, ranks: RowGroup) -> None:
    """Each rank writes its rows into the folder's arrays; rank 0 puts the folder in place once
    all have."""
    mine = _own_rows(est)
    counts = ranks.rows_per_rank(len(est.L_))
    rank = ranks.rank
    shapes = {k: ((sum(counts), *v.shape[1:]), v.dtype) for k, v in mine.items()}
    job = dict(rows=sum(counts), world_size=len(counts), backend=ranks.backend)
    meta = pick(FIT_JSON, {**{k: v.tolist() for k, v in _fit_values(est).items()}, **job})
    try:
        agreed(ranks, lambda: result_folder.create(out, shapes) if rank == 0 else None)
        agreed(ranks, lambda: result_folder.write_rows(out, sum(counts[:rank]), mine))
        rows = _gather_rows(est, ranks, (SCORES, LABELS)) if model else None

        def finish():
            if rank == 0:  # the model and the folder together, all or none
                files = [(model, _model_of_all_rows(est, rows))] if model else []
                result_folder.finish(out, meta, files)

        agreed(ranks, finish)
    except BaseException:  # an interrupt too: nothing of this run stays behind
        if rank == 0:
            result_folder.discard(out)
        raise
