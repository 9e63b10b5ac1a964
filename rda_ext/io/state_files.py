"""Torch files of plain values (the model file, the checkpoint's parts): read with
``weights_only=True``, so that loading runs no code from the file, and checked before anything
is built from them. One set of checks for both, each failure an ``InvalidState`` that says what
is wrong; the caller names the file."""

from __future__ import annotations

import math
import re
import warnings

import torch
from torch import Tensor


class InvalidState(Exception):
    """What is wrong with a file's content (the caller adds the file's name)."""


def load_state(path: str, what: str):
    """The content of the torch file ``path``; a file torch cannot read, or that holds anything but
    plain values and tensors (a pickled object), is an ``InvalidState`` with the reason in one
    line, without torch's advice to load it with ``weights_only=False``. ``what`` names the kind
    of file for that reason ("a model file")."""
    try:
        with warnings.catch_warnings():
            # torch's note on an unusual pickle protocol (a file of random bytes): the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InvalidState(reason(e, what)) from None


def reason(e: BaseException, what: str) -> str:
    """The gist of a torch.load error in one line, without torch's advice to load the file with
    ``weights_only=False`` (which would run code from it) or to allowlist its globals."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)", text, re.DOTALL)
    if found:
        text = found.group(1)
        glob = re.match(r"Unsupported global: GLOBAL (\S+)", text)
        if glob:
            text = f"it holds a {glob.group(1)} object, which {what} never does"
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    kept = [s for s in sentences if s and "weights_only" not in s and "safe_globals" not in s]
    return kept[0].rstrip(".") if kept else (
        "the file is empty or cut short" if isinstance(e, EOFError) else type(e).__name__)


def check_dict(value, name: str, keys=()) -> dict:
    """``value`` if it is a dict holding at least ``keys``."""
    if not isinstance(value, dict):
        raise InvalidState(f"{name} is {_a(value)}, not a dict")
    missing = [k for k in keys if k not in value]
    if missing:
        raise InvalidState(f"{name} lacks {', '.join(map(repr, missing))}")
    return value


def check_int(value, name: str, low: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise InvalidState(f"{name} is {value!r}, not an integer >= {low}")
    return value


def check_tensor(value, name: str, shape=None, dtype: torch.dtype | None = None, finite: bool = True) -> Tensor:
    """``value`` if it is a tensor of that shape and dtype (a floating one where dtype is None),
    with finite values only where ``finite``."""
    if not isinstance(value, Tensor):
        raise InvalidState(f"{name} is {_a(value)}, not a tensor")
    if value.layout != torch.strided:
        raise InvalidState(f"{name} is a {value.layout} tensor, not a dense one")
    if dtype is not None and value.dtype != dtype:
        raise InvalidState(f"{name} has dtype {value.dtype}, not {dtype}")
    if dtype is None and not value.is_floating_point():
        raise InvalidState(f"{name} has dtype {value.dtype}, not a floating dtype")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise InvalidState(f"{name} has shape {tuple(value.shape)}, not {tuple(shape)}")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise InvalidState(f"{name} holds NaN or infinite values")
    return value


def check_weights(weights, expected: dict, name: str) -> dict:
    """A network's state dict: exactly the keys of ``expected`` (the network's own), each a
    finite float tensor of its shape."""
    check_dict(weights, name)
    missing = [k for k in expected if k not in weights]
    unknown = [k for k in weights if k not in expected]
    if missing:
        raise InvalidState(f"missing weight {', '.join(map(repr, missing))}")
    if unknown:
        raise InvalidState(f"unexpected weight {', '.join(map(repr, unknown))} for this network")
    for key, want in expected.items():
        w = weights[key]
        if not (isinstance(w, Tensor) and w.is_floating_point()):
            raise InvalidState(f"weight {key!r} is not a float tensor")
        if w.shape != want.shape:
            raise InvalidState(f"weight shape mismatch: {key!r} is {tuple(w.shape)}, the network needs "
                               f"{tuple(want.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise InvalidState(f"weight {key!r} holds NaN or infinite values")
    return weights


def check_history(history, keys, name: str = "the history") -> list:
    """A fit's history: a list of dicts, each with ``keys``, every value a finite number (a count
    where it is an integer)."""
    if not isinstance(history, list):
        raise InvalidState(f"{name} is {_a(history)}, not a list")
    for i, row in enumerate(history):
        check_dict(row, f"{name}[{i}]", keys)
        for k in keys:
            v = row[k]
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise InvalidState(f"{name}[{i}][{k!r}] is {v!r}, not a finite number")
    return history


def _a(value) -> str:
    """'a list', 'an int': the kind of ``value`` in words."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
