"""The model file of a fitted RobustAutoencoder: a torch file of plain values and tensors only, read
back with ``weights_only=True`` so that loading runs no code from the file."""

from __future__ import annotations

import os

import torch

from rda_ext.data.files import atomic_write
from rda_ext.solver.autoencoder import DeepAutoencoder
from rda_ext.validation import kind, resolve_device, resolve_dtype, to_cpu

FORMAT = "rda_ext.RobustAutoencoder/1"
_FITTED_SCALARS = ("n_features_in_", "n_iter_", "lam_", "threshold_", "history_")


def save_model(est, path, *, data: bool = True) -> None:
    """Writes ``est``'s parameters, weights and fitted state to ``path``, whole or not at all;
    ``data=False`` leaves out L_ and S_."""
    est._check_fitted()
    params = est.get_params()
    params["hidden"] = list(params["hidden"])
    params["dtype"] = None if est.dtype is None else str(resolve_dtype(est.dtype)).removeprefix("torch.")
    fitted = {name: getattr(est, name) for name in _FITTED_SCALARS}
    fitted["history_"] = [dict(h) for h in est.history_]
    fitted["decision_scores_"] = torch.from_numpy(est.decision_scores_)
    fitted["labels_"] = torch.from_numpy(est.labels_)
    fitted["batch_seed"] = est._batch_seed
    if data:
        fitted["L_"], fitted["S_"], fitted["input"] = to_cpu(est.L_), to_cpu(est.S_), kind(est.L_)
    state = {
        "format": FORMAT, "params": params, "sizes": list(est.model_.sizes),
        "weights": {k: v.detach().cpu() for k, v in est.model_.state_dict().items()}, "fitted": fitted,
    }
    atomic_write(path, lambda f: torch.save(state, f))


def load_model(cls, path, *, device: str | None = None):
    """The estimator of class ``cls`` saved at ``path``; ``device`` overrides the saved one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{os.fspath(path)!r} is not a readable rda_ext model ({first_line})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not an rda_ext model file")
    params = dict(state["params"])
    params["hidden"] = tuple(params["hidden"])
    if device is not None:
        params["device"] = device
    est = cls(**params)
    est._check_params()
    model = DeepAutoencoder(tuple(state["sizes"]), est.activation, est.output_activation, est.tied_weights)
    model.load_state_dict(state["weights"])
    est.model_ = model.to(device=resolve_device(est.device), dtype=resolve_dtype(est.dtype)).eval()
    fitted = state["fitted"]
    for name in _FITTED_SCALARS:
        setattr(est, name, fitted[name])
    est._batch_seed = fitted["batch_seed"]
    est._optim = None
    est.decision_scores_ = fitted["decision_scores_"].numpy()
    est.labels_ = fitted["labels_"].numpy()
    if "L_" in fitted:
        est.L_, est.S_ = (t.numpy() if fitted["input"] == "numpy" else t for t in (fitted["L_"], fitted["S_"]))
    return est
