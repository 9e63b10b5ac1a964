"""Checking parameters and converting user data: numpy arrays, tensors and array-likes in, finite
2-D tensors on the device out, and results back in the caller's form. Also the device names every
entry point accepts."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from torch import Tensor

from rda_ext import ops
from rda_ext.solver.autoencoder import ACTIVATIONS
from rda_ext.solver.training import OPTIMIZERS

# Entries per block of a conversion (1 MiB of float32): small enough to be measured while cached.
CONVERT_ENTRIES = 1 << 18

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# How the autoencoder computes: "bfloat16" runs its forward and backward under autocast (the weights,
# the optimizer state, X, L, S and the proximal step stay in dtype); "auto" is bfloat16 where the
# device has fast bfloat16 matrix products, else float32.
PRECISIONS = ("float32", "bfloat16", "auto")
# The estimator's switches.
BOOLEANS = ("tied_weights", "warm_start", "cuda_graphs", "verbose")
# The estimator's parameters that take one of a few names.
CHOICES = {
    "penalty": ops.PENALTIES,
    "optimizer": OPTIMIZERS,
    "activation": tuple(ACTIVATIONS),
    "output_activation": ("auto", *ACTIVATIONS),
    "precision": PRECISIONS,
    "preprocessing": ("auto", "none", "minmax", "standardize"),
    "outlier_score": ("residual+code+knn", "residual+code", "knn", "residual"),
}


def resolve_device(name) -> torch.device:
    """"auto" (CUDA when visible), "cpu", "cuda" or "cuda:N" as a device, with a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N", got {name!r}') from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f'device must be "auto", "cpu", "cuda" or "cuda:N", got {name!r}')
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f'device is {name!r} but no CUDA device is visible (use "cpu" or "auto")')
    return device


def resolve_dtype(name) -> torch.dtype:
    if name is None:
        return torch.float32
    key = str(name).removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f'dtype must be None, "float32" or "float64", got {name!r}')
    return DTYPES[key]


def resolve_precision(name: str, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype of the autoencoder's autocast for ``precision`` (checked by check_params) on this
    device, or None for no autocast (full precision)."""
    if name == "float32" or dtype == torch.float64 or (name == "auto" and not fast_bfloat16(device)):
        return None
    return torch.bfloat16


def fast_bfloat16(device: torch.device) -> bool:
    """Whether the device multiplies bfloat16 matrices in hardware: AVX-512 BF16 or AMX on a CPU,
    tensor cores (compute capability 8.0 and later) on a GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_params(p: dict) -> None:
    """The estimator's parameters ``p`` (as get_params gives them), each with an error naming it."""

    def fail(name, expected):
        raise ValueError(f"{name} must be {expected}, got {p[name]!r}")

    hidden = p["hidden"]
    if not (hidden == "auto" if isinstance(hidden, str) else isinstance(hidden, (tuple, list)) and hidden
            and all(is_int(h) and h > 0 for h in hidden)):
        fail("hidden", '"auto" or a non-empty sequence of positive layer sizes, e.g. (400, 200)')
    for name, names in CHOICES.items():
        if p[name] not in names:
            fail(name, f"one of {names}")
    if p["lam"] is not None and not (is_real(p["lam"]) and math.isfinite(p["lam"]) and p["lam"] >= 0):
        fail("lam", "None or a finite number >= 0")
    if not (is_real(p["contamination"]) and 0 < p["contamination"] < 0.5):
        fail("contamination", "a number in (0, 0.5)")
    for name in ("outer_iter", "batch_size"):
        if not (is_int(p[name]) and p[name] > 0):
            fail(name, "a positive integer")
    if not (p["inner_epochs"] == "auto" or is_int(p["inner_epochs"]) and p["inner_epochs"] >= 0):
        fail("inner_epochs", '"auto" or an integer >= 0')
    if not (is_real(p["lr"]) and math.isfinite(p["lr"]) and p["lr"] > 0):
        fail("lr", "a finite number > 0")
    if not (is_real(p["tol"]) and p["tol"] >= 0):
        fail("tol", "a number >= 0")
    if not is_random_state(p["random_state"]):
        fail("random_state", "None, an integer seed in [0, 2**64) or a numpy RandomState/Generator")
    for name in BOOLEANS:
        if not is_bool(p[name]):
            fail(name, "True or False")
    if not (p["distributed"] == "auto" or isinstance(p["distributed"], bool)):
        fail("distributed", '"auto", True or False')
    if p["checkpoint"] is not None and not isinstance(p["checkpoint"], (str, os.PathLike)):
        fail("checkpoint", "None or a directory path")
    resolve_device(p["device"])
    if resolve_dtype(p["dtype"]) == torch.float64 and p["precision"] == "bfloat16":
        fail("precision", '"float32" or "auto" with dtype "float64" (a float64 fit computes in float64)')


def is_bool(v) -> bool:
    """What a switch takes: a bool or a numpy bool, and the integers 0 and 1 (the spelling of
    scikit-learn's ``verbose=0``). Anything else, such as the string "no" or None, which ``bool()``
    would read as a silent True or False, is refused."""
    return isinstance(v, (bool, np.bool_)) or (is_int(v) and v in (0, 1))


def is_random_state(v) -> bool:
    """What ``random_state`` takes: None (a fresh seed), an integer seed (numpy integers too; not a
    bool, not a float, which would be silently truncated) or a numpy RandomState/Generator, from
    which ``fit`` draws the seed as scikit-learn does."""
    if v is None or isinstance(v, (np.random.RandomState, np.random.Generator)):
        return True
    return is_int(v) and 0 <= v < 2**64


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and not math.isnan(v)


def as_matrix(X, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """X (numpy array, tensor or array-like) as a finite 2-D tensor on ``device`` in ``dtype``.
    The caller's data is never written to."""
    return checked_matrix(X, name, device, dtype)[0]


def checked_matrix(X, name: str, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``as_matrix`` and the (min, max) of each column of the result, found in the one pass that
    converts X and checks it: a fit decides its scaling from them without reading X again."""
    if isinstance(X, Tensor):
        if X.is_nested:
            raise TypeError(f"{name} is a nested tensor, which is not supported: pass a 2-D matrix (rows of one length)")
        if X.layout != torch.strided:
            what = f"a sparse tensor ({X.layout})" if "sparse" in str(X.layout) else f"a tensor of layout {X.layout}"
            raise TypeError(f"{name} is {what}, which is not supported: pass a dense tensor ({name}.to_dense())")
        t = X.detach()
    else:
        if hasattr(X, "toarray") or hasattr(X, "tocsr"):
            raise TypeError(f"{name} is a sparse matrix, which is not supported: pass a dense array ({name}.toarray())")
        try:
            a = np.asarray(X)
        except (ValueError, TypeError) as e:  # ragged rows, or an __array__ that fails
            raise ValueError(f"{name} must be a 2-D matrix (rows = instances, columns = features), but numpy "
                             f"cannot read this {type(X).__name__} as one: {e}") from None
        if a.ndim == 0:  # None, a dict, a set, a string, a number...
            raise TypeError(f"{name} must be a 2-D matrix (a numpy array, a tensor or a list of rows), got "
                            f"{'None' if X is None else 'an object of type ' + type(X).__name__}")
        if a.dtype == object:
            try:
                a = a.astype(np.float64)  # numbers stored as objects
            except (ValueError, TypeError) as e:  # the same kind of error, now naming X
                raise type(e)(f"{name} must be numeric, but its entries of dtype object are not all numbers "
                              f"({e})") from None
        if np.iscomplexobj(a):
            raise ValueError(f"Complex data not supported: {name} has dtype {a.dtype}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        if a.dtype.kind == "f" and a.dtype.itemsize > 8:
            raise ValueError(f"{name} has dtype {a.dtype}, which torch cannot hold: convert it, e.g. {name}.astype(np.float64)")
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=") if not a.dtype.isnative else None)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    if t.is_complex():
        raise ValueError(f"Complex data not supported: {name} has dtype {t.dtype}")
    if t.dim() != 2:
        hint = " Reshape your data with X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one row." if t.dim() == 1 else ""
        raise ValueError(
            f"{name} must be a 2-D matrix (rows = instances, columns = features), got shape {tuple(t.shape)}.{hint}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} has 0 sample(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape={tuple(t.shape)}) while a minimum of 1 is required.")
    t, lo, hi = _converted(t, device, dtype)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):  # a NaN is its column's min
        raise ValueError(f"{name} contains NaN or infinite values")
    return t, (lo, hi)


def _converted(t: Tensor, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """t on ``device`` in ``dtype`` and its columns' (min, max), each block measured while the
    conversion has it in the cache."""
    if t.dtype == dtype:
        t = t.to(device=device)  # t itself where it is on the device already
        return (t, *column_min_max(t))
    out = torch.empty(t.shape, dtype=dtype, device=device)
    rows = max(1, CONVERT_ENTRIES // t.shape[1])
    lo, hi = column_min_max(out[:rows].copy_(t[:rows]))
    for start in range(rows, t.shape[0], rows):
        block_lo, block_hi = column_min_max(out[start:start + rows].copy_(t[start:start + rows]))
        torch.minimum(lo, block_lo, out=lo)
        torch.maximum(hi, block_hi, out=hi)
    return out, lo, hi


def column_min_max(t: Tensor) -> tuple[Tensor, Tensor]:
    """The (min, max) of each column of t, NaN where the column has one. On the CPU by numpy's
    reductions, which read a wide matrix several times faster than torch's column reductions."""
    if t.device.type == "cpu":
        a = t.numpy()
        return torch.from_numpy(a.min(0)), torch.from_numpy(a.max(0))
    return torch.aminmax(t, dim=0)


def warn_if_outside_output_range(X: Tensor, output_activation: str, stacklevel: int = 3) -> None:
    """``stacklevel``: the frames above this one to the caller's own line (its call of fit)."""
    if output_activation == "sigmoid":
        lo, hi = torch.aminmax(X)
        if lo < 0 or hi > 1:
            warnings.warn(
                f"X has values in [{float(lo):.3g}, {float(hi):.3g}] but the output activation is "
                "sigmoid, which reconstructs only [0, 1]: scale X or use output_activation='linear'",
                stacklevel=stacklevel,
            )


def kind(X) -> str:
    return "tensor" if isinstance(X, Tensor) else "numpy"


def like_input(t: Tensor, X):
    """``t`` in the form of the caller's X: a tensor of X's dtype on X's device, or numpy of X's
    float dtype (float32 for integer input)."""
    if isinstance(X, Tensor):
        return t.to(device=X.device, dtype=output_dtype(X, t.dtype))
    a = np.asarray(X)
    dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32  # a big-endian X's byte order too
    # Cast by numpy: torch rounds float64 to float16 through float32, rounding twice.
    return t.cpu().numpy().astype(dtype, copy=False)


def output_dtype(X, dtype: torch.dtype) -> torch.dtype:
    """The dtype of results computed in ``dtype`` for the caller's X: X's float dtype, else
    ``dtype`` for a tensor and float32 for numpy."""
    if isinstance(X, Tensor):
        return X.dtype if X.is_floating_point() else dtype
    a = np.asarray(X)
    if not np.issubdtype(a.dtype, np.floating):
        return torch.float32
    return torch.from_numpy(np.empty(0, a.dtype.newbyteorder("="))).dtype


def vector_like_input(t: Tensor, X):
    if isinstance(X, Tensor):
        return t.to(X.device)
    return t.to(torch.float64).cpu().numpy()


def to_cpu(a) -> Tensor:
    return a.detach().cpu() if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a))
