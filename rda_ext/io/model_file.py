"""The model file of a fitted RobustAutoencoder: a torch file of plain values and tensors only, read
back with ``weights_only=True`` so that loading runs no code from the file.

``save_model`` stores the parameters as plain Python values (numpy scalars, which ``fit`` accepts,
become Python numbers; a numpy RandomState or Generator becomes its state), and ``load_model``
checks the whole file before it builds anything: a file that is not one, or not whole, is a
``ValueError`` that names it and says what is wrong."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import torch

from rda_ext.estimator import network_shape
from rda_ext.estimator.fitted_state import FittedState
from rda_ext.io.atomic import atomic_write
from rda_ext.io.state_files import InvalidState, check_history, check_tensor, check_weights, load_state, reason
from rda_ext.solver.autoencoder import ACTIVATIONS, DeepAutoencoder
from rda_ext.validation import (
    CHOICES,
    PRECISIONS,
    check_params,
    is_int,
    is_real,
    kind,
    resolve_device,
    resolve_dtype,
    to_cpu,
)

FORMAT = "rda_ext.RobustAutoencoder/1"
_KEYS = ("format", "params", "sizes", "weights", "fitted")
_FITTED_SCALARS = ("n_features_in_", "n_iter_", "lam_", "threshold_", "history_")
_FITTED_KEYS = (*_FITTED_SCALARS, "decision_scores_", "labels_", "batch_seed")
_DATA_KEYS = ("L_", "S_", "input")  # present only when saved with data=True
# Parameters added since the format was fixed, with the value in effect in files written before them.
_ADDED_PARAMS = {"precision": "float32", "preprocessing": "none", "cuda_graphs": False, "distributed": "auto",
                 "checkpoint": None, "outlier_score": "residual"}
_SCORE_KEYS = ("residual_scale_", "code_center_", "code_precision_")  # None unless scored by "residual+code"
_RANDOM_STATE = "numpy_random"  # the key of a saved RandomState or Generator


class _Unusable(Exception):
    """A valid file that cannot be used here (its device); load_model adds the file's name."""


def save_model(est, path, *, data: bool) -> None:
    """Writes ``est``'s parameters, weights and fitted state to ``path``, whole or not at all;
    ``data=False`` leaves out L_ and S_. The estimator itself is not changed."""
    atomic_write(path, model_writer(est, data=data))


def model_writer(est, *, data: bool):
    """What writes ``est``'s model file (see ``save_model``), for ``atomic_write_all``: the state is
    gathered now, so that a fitted estimator that cannot be saved fails before anything is written."""
    fit = FittedState.of(est)
    params = est.get_params()
    params["dtype"] = None if est.dtype is None else str(resolve_dtype(est.dtype)).removeprefix("torch.")
    params["random_state"] = _random_state_to_file(params["random_state"])
    if params["checkpoint"] is not None:  # a path object as its text
        params["checkpoint"] = os.fspath(params["checkpoint"])
    fitted = {name: plain(getattr(fit, name)) for name in _FITTED_SCALARS}
    fitted["decision_scores_"] = torch.from_numpy(np.ascontiguousarray(fit.decision_scores_))
    fitted["labels_"] = torch.from_numpy(np.ascontiguousarray(fit.labels_))
    fitted["batch_seed"] = plain(fit._batch_seed)
    fitted["output_activation_"] = fit.model_.architecture[2]
    # What the fit ran with, which the parameters saved may no longer say (set_params after it).
    fitted["precision"], fitted["preprocessing"] = fit._fit_precision, fit._fit_preprocessing
    if fit._fit_fingerprint is not None:
        fitted["fingerprint"] = fit._fit_fingerprint
    for key in ("center_", "scale_", *_SCORE_KEYS):
        value = getattr(fit, key)
        fitted[key] = None if value is None else torch.from_numpy(np.array(value, dtype=np.float64))
    if fit.neighbours_ is not None:
        fitted["neighbours_"] = torch.from_numpy(np.ascontiguousarray(fit.neighbours_))
        fitted["term_spread_"] = (None if fit.term_spread_ is None
                                  else torch.from_numpy(np.array(fit.term_spread_, dtype=np.float64)))
    if fit.shape_contrast_ is not None:
        fitted["shape_contrast_"] = [[list(hidden), float(c)] for hidden, c in fit.shape_contrast_.items()]
    if data:
        fitted["L_"], fitted["S_"], fitted["input"] = to_cpu(fit.L_), to_cpu(fit.S_), kind(fit.L_)
    state = {
        "format": FORMAT, "params": plain(params), "sizes": plain(fit.model_.sizes),
        "weights": {k: v.detach().cpu() for k, v in fit.model_.state_dict().items()}, "fitted": fitted,
    }
    return lambda f: torch.save(state, f)


def plain(value):
    """``value`` with what ``torch.load(weights_only=True)`` refuses or may not keep replaced by plain
    Python values: numpy scalars by Python numbers, numpy arrays and tuples by lists, a torch
    device by its name (recursively through lists and dicts)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, torch.device):
        return str(value)
    return value


def _random_state_to_file(rs):
    if isinstance(rs, np.random.RandomState):
        return {_RANDOM_STATE: "RandomState", "state": plain(rs.get_state(legacy=False))}
    if isinstance(rs, np.random.Generator):
        return {_RANDOM_STATE: "Generator", "state": plain(rs.bit_generator.state)}
    return plain(rs)


def _random_state_from_file(value):
    if not isinstance(value, dict):
        return value
    try:
        what, state = value[_RANDOM_STATE], value["state"]
        if what == "RandomState":
            rs = np.random.RandomState()
            rs.set_state(state)
            return rs
        if what == "Generator":
            bit_generator = getattr(np.random, state["bit_generator"])
            if not (isinstance(bit_generator, type) and issubclass(bit_generator, np.random.BitGenerator)):
                raise ValueError(f"{state['bit_generator']!r} is not a numpy bit generator")
            bits = bit_generator()
            bits.state = state
            return np.random.Generator(bits)
        raise ValueError(f"unknown kind {what!r}")
    except Exception as e:
        raise InvalidState(f"parameters invalid: random_state is not a readable numpy random state ({e})") from None


def load_model(cls, path, *, device: str | None = None):
    """The estimator of class ``cls`` saved at ``path``; ``device`` overrides the saved one. A file
    that is not a whole rda_ext model is a ValueError naming it and what is wrong."""
    name = os.fspath(path)
    try:
        state = load_state(path, "a model file")
    except InvalidState as e:
        raise ValueError(f"{name!r} is not a readable rda_ext model ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{name!r} is not an rda_ext model file")
    if device is not None:
        resolve_device(device)  # the caller's argument, with its own error
    try:
        params = _checked_params(cls, state)
        est = _build(cls, state, params, device)
    except InvalidState as e:
        raise ValueError(f"{name!r} is not a valid rda_ext model file: {e}") from None
    except _Unusable as e:
        raise ValueError(f"{name!r}: {e}") from None
    except Exception as e:  # whatever the checks above missed: still the file's fault, said as such
        raise ValueError(f"{name!r} is not a valid rda_ext model file: {type(e).__name__}: {reason(e, 'a model file')}") from None
    # Outside the file checks: running out of device memory here is not the file's fault.
    est.model_ = est.model_.to(resolve_device(est.device)).eval()  # _build made it in the saved dtype
    return est


def _checked_params(cls, state: dict) -> dict:
    missing = [key for key in _KEYS if key not in state]
    if missing:
        raise InvalidState(f"missing key {', '.join(map(repr, missing))}")
    params = state["params"]
    if not isinstance(params, dict):
        raise InvalidState(f"'params' is a {type(params).__name__}, not a dict")
    params = {**_ADDED_PARAMS, **params}  # a copy, which the conversions below may change
    names = cls._param_names()
    missing = [p for p in names if p not in params]
    unknown = [p for p in params if p not in names]
    if missing or unknown:
        raise InvalidState("parameters invalid: " + "; ".join(
            filter(None, (missing and f"missing {', '.join(map(repr, missing))}",
                          unknown and f"unknown {', '.join(map(repr, unknown))}"))))
    if isinstance(params["hidden"], list):
        params["hidden"] = tuple(params["hidden"])
    params["random_state"] = _random_state_from_file(params["random_state"])
    try:
        check_params(dict(params, device="cpu"))  # the device is checked where it is used
    except ValueError as e:
        raise InvalidState(f"parameters invalid: {e}") from None
    return params


def _build(cls, state: dict, params: dict, device):
    sizes = state["sizes"]
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(is_int(s) and s > 0 for s in sizes)
            and tuple(sizes[1:]) in [h for h, _ in network_shape.candidates(params["hidden"], 1, sizes[0])]):
        raise InvalidState(f"sizes {sizes!r} do not match hidden {params['hidden']!r}")
    if device is not None:
        params["device"] = device
    else:
        try:
            resolve_device(params["device"])
        except ValueError as e:
            raise _Unusable(f"the saved {e}; load(..., device=...) overrides it") from None
    est = cls(**params)
    fitted = state["fitted"]
    if not isinstance(fitted, dict):
        raise InvalidState(f"'fitted' is a {type(fitted).__name__}, not a dict")
    # Added to the format with output_activation="auto" (the activation it chose) and with
    # preprocessing (center_ and scale_, None without): a file from before names its activation
    # in its parameters and was not standardised.
    if "output_activation_" not in fitted and est.output_activation == "auto":
        raise InvalidState("missing key 'fitted.output_activation_'")
    output_activation = fitted.get("output_activation_", est.output_activation)
    if output_activation not in ACTIVATIONS:
        raise InvalidState(f"output_activation_ is {output_activation!r}, not one of {tuple(ACTIVATIONS)}")
    # On the CPU until load_model moves it; in the saved dtype before the weights are copied in: a float32 network would round float64 weights.
    model = DeepAutoencoder(tuple(sizes), est.activation, output_activation, est.tied_weights)
    model = model.to(dtype=resolve_dtype(est.dtype))
    model.load_state_dict(check_weights(state["weights"], model.state_dict(), "'weights'"))
    missing = [key for key in _FITTED_KEYS if key not in fitted]
    if missing:
        raise InvalidState(f"missing key {', '.join(repr(f'fitted.{k}') for k in missing)}")
    d = sizes[0]
    if not (is_int(fitted["n_features_in_"]) and fitted["n_features_in_"] == d):
        raise InvalidState(f"n_features_in_ is {fitted['n_features_in_']!r} but the network takes {d} features")
    for key in ("n_iter_", "batch_seed"):
        if not (is_int(fitted[key]) and fitted[key] >= 0):
            raise InvalidState(f"{key} is {fitted[key]!r}, not an integer >= 0")
    # The fitted values as a fit leaves them: a threshold_ of inf would flag nothing, labels_ of 7
    # are no labels; the same checks as a checkpoint's state.
    for key in ("lam_", "threshold_"):
        if not (is_real(fitted[key]) and math.isfinite(fitted[key]) and fitted[key] >= 0):
            raise InvalidState(f"{key} is {fitted[key]!r}, not a finite number >= 0")
    check_history(fitted["history_"], ("lam", "c1", "c2"), "history_")
    scores, labels = fitted["decision_scores_"], fitted["labels_"]
    if not (isinstance(scores, torch.Tensor) and scores.dim() == 1 and scores.is_floating_point()):
        raise InvalidState("decision_scores_ is not a vector of floats")
    check_tensor(scores, "decision_scores_")
    if not (isinstance(labels, torch.Tensor) and labels.shape == scores.shape
            and not labels.is_floating_point() and not labels.is_complex()):
        raise InvalidState(f"labels_ is not a vector of {len(scores)} integers like decision_scores_")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise InvalidState(f"labels_ holds {sorted(set(labels.unique().tolist()) - {0, 1})[:3]}, not only 0 and 1")
    present = [key for key in _DATA_KEYS if key in fitted]
    if present and len(present) < len(_DATA_KEYS):
        missing = [key for key in _DATA_KEYS if key not in fitted]
        raise InvalidState(f"missing key {', '.join(repr(f'fitted.{k}') for k in missing)}")
    if present:
        for key in ("L_", "S_"):
            t = fitted[key]
            if not (isinstance(t, torch.Tensor) and tuple(t.shape) == (len(scores), d)):
                got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else f"a {type(t).__name__}"
                raise InvalidState(f"{key} is not a ({len(scores)}, {d}) tensor but {got}")
            check_tensor(t, key)
        if fitted["input"] not in ("numpy", "tensor"):
            raise InvalidState(f"input is {fitted['input']!r}, not 'numpy' or 'tensor'")

    center, scale = fitted.get("center_"), fitted.get("scale_")
    if (center is None) != (scale is None):
        raise InvalidState("center_ and scale_ are saved together or not at all")
    if center is not None:
        for key, t in (("center_", center), ("scale_", scale)):
            if not (isinstance(t, torch.Tensor) and tuple(t.shape) == (d,) and t.dtype == torch.float64
                    and bool(torch.isfinite(t).all())):
                raise InvalidState(f"{key} is not a finite float64 vector of {d} numbers")
        if not bool((scale > 0).all()):
            raise InvalidState("scale_ has entries <= 0")
    residual_scale, code_center, code_precision = _score_statistics(fitted, d, sizes[-1])
    neighbours, term_spread = _local_term(fitted, d, residual_scale is not None)
    shape_contrast = _shape_contrast(fitted, params["hidden"], d)
    precision, preprocessing, data_print = _fit_facts(fitted, params)
    L, S = ((t.numpy() if fitted["input"] == "numpy" else t for t in (fitted["L_"], fitted["S_"])) if present
            else (None, None))
    FittedState(
        **{key: fitted[key] for key in _FITTED_SCALARS}, model_=model, L_=L, S_=S,
        decision_scores_=scores.numpy(), labels_=labels.numpy(),
        center_=None if center is None else center.numpy(), scale_=None if scale is None else scale.numpy(),
        residual_scale_=residual_scale, code_center_=code_center, code_precision_=code_precision,
        neighbours_=neighbours, term_spread_=term_spread, shape_contrast_=shape_contrast,
        _batch_seed=fitted["batch_seed"], _fit_precision=precision, _fit_preprocessing=preprocessing,
        _fit_fingerprint=data_print,
    ).apply(est)
    return est


def _shape_contrast(fitted: dict, hidden, d: int) -> dict | None:
    """The contrast of each candidate shape of hidden="auto" (absent where one network was fitted)."""
    saved = fitted.get("shape_contrast_")
    if saved is None:
        return None
    shapes = [h for h, _ in network_shape.candidates(hidden, 1, d)]
    if not (isinstance(saved, list) and len(shapes) > 1
            and [s[0] if isinstance(s, list) and len(s) == 2 else None for s in saved] == [list(h) for h in shapes]
            and all(is_real(c) and c > 0 for _, c in saved)):
        raise InvalidState(f"shape_contrast_ is not a contrast > 0 for each of the shapes {shapes} of hidden "
                           f"{hidden!r} on {d} features")
    return {tuple(h): float(c) for h, c in saved}


def _fit_facts(fitted: dict, params: dict) -> tuple:
    """The precision and the preprocessing the fit ran with, and the fingerprint of its network's
    input, checked. A file from before them has the saved parameters' precision and preprocessing
    (set_params could not change them apart from a fit then), and no fingerprint: a warm start from
    it cannot tell its data and starts S from zeros."""
    precision = fitted.get("precision", params["precision"])
    if precision not in PRECISIONS:
        raise InvalidState(f"precision is {precision!r}, not one of {PRECISIONS}")
    preprocessing = fitted.get("preprocessing", params["preprocessing"])
    if preprocessing not in CHOICES["preprocessing"]:
        raise InvalidState(f"preprocessing is {preprocessing!r}, not one of {CHOICES['preprocessing']}")
    data_print = fitted.get("fingerprint")
    if "fingerprint" in fitted and not (isinstance(data_print, str) and re.fullmatch(r"[0-9a-f]{32,128}", data_print)):
        raise InvalidState(f"fingerprint is {data_print!r}, not a hash in hexadecimal digits")
    return precision, preprocessing, data_print


def _score_statistics(fitted: dict, d: int, k: int) -> tuple:
    """The "residual+code" statistics of the file, checked: all three, or None each (a fit scored
    by the residual norm, or a file from before them). What the fit stored decides, not the
    parameter, which set_params may have changed since."""
    shapes = {"residual_scale_": (d,), "code_center_": (k,), "code_precision_": (k, k)}
    present = [key for key in shapes if fitted.get(key) is not None]
    if not present:
        return None, None, None
    out = []
    for key, shape in shapes.items():
        t = fitted.get(key)
        if not (isinstance(t, torch.Tensor) and tuple(t.shape) == shape and t.dtype == torch.float64
                and bool(torch.isfinite(t).all())):
            raise InvalidState(f"{key} is not a finite float64 tensor of shape {shape} (saved with {', '.join(present)})")
        out.append(t.numpy())
    if not bool((fitted["residual_scale_"] > 0).all()):
        raise InvalidState("residual_scale_ has entries <= 0")
    return tuple(out)


def _local_term(fitted: dict, d: int, statistics: bool) -> tuple:
    """The local term of "residual+code+knn" or "knn" in the file, checked: the neighbour rows (m >=
    1 rows of d finite numbers in a float dtype), with the two spreads (finite, > 0) where it adds
    to the "residual+code" statistics and without them where it is the score alone ("knn"); or
    neither (a fit scored otherwise, or a file from before them)."""
    neighbours, spread = fitted.get("neighbours_"), fitted.get("term_spread_")
    if neighbours is None and spread is None:
        return None, None
    if neighbours is None:
        raise InvalidState("term_spread_ is saved without the neighbours_ it scales")
    if statistics and spread is None:
        raise InvalidState("neighbours_ is saved with the statistics of the residual+code score but without the "
                           "term_spread_ that combines them")
    if spread is not None and not statistics:
        raise InvalidState("term_spread_ is saved without the statistics of the residual+code score it combines "
                           "with neighbours_")
    if not (isinstance(neighbours, torch.Tensor) and neighbours.dim() == 2 and neighbours.shape[0] >= 1
            and neighbours.shape[1] == d and neighbours.dtype in (torch.float32, torch.float64)):
        raise InvalidState(f"neighbours_ is not a float32 or float64 tensor of at least one row of {d} features")
    check_tensor(neighbours, "neighbours_")
    if spread is None:
        return neighbours.numpy(), None
    if not (isinstance(spread, torch.Tensor) and tuple(spread.shape) == (2,) and spread.dtype == torch.float64
            and bool(torch.isfinite(spread).all()) and bool((spread > 0).all())):
        raise InvalidState("term_spread_ is not two finite float64 numbers > 0")
    return neighbours.numpy(), spread.numpy()
