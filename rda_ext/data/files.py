"""Reading data matrices from files and writing results whole or not at all."""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

FORMATS = (".npy", ".npz", ".csv")


def read_matrix(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A numeric matrix (rows = instances) from ``.npy``, ``.npz`` (the array named ``key``, which
    may be left out when the file holds one array) or ``.csv`` (comma-separated, an optional
    header line). Arrays of images (n, h, w) become (n, h * w)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unsupported file type {ext or '(none)'!r}; use one of {', '.join(FORMATS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if ext == ".npy":
            a = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if key is None:
                    if len(z.files) != 1:
                        raise ValueError(f"it holds the arrays {', '.join(z.files) or '(none)'}: choose one with --key")
                    key = z.files[0]
                if key not in z.files:
                    raise ValueError(f"it has no array {key!r} (it holds {', '.join(z.files)})")
                a = z[key]
        else:
            a = _read_csv(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{path}: the data must be numeric, got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{path}: expected a matrix (rows = instances, columns = features), got shape {a.shape}")
    return a.reshape(len(a), -1)


def _read_csv(path: str) -> np.ndarray:
    with open(path) as f:
        first = f.readline()
    try:
        [float(v) for v in first.split(",")]
        header = 0
    except ValueError:
        header = 1
    return np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float64)


def check_writable(path: str | os.PathLike) -> None:
    """Fails early, before a long computation, if ``path`` could not be written."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{os.fspath(path)}: the folder {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"{os.fspath(path)}: the folder {directory} is not writable")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{os.fspath(path)} is a folder")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Writes through ``write(file)`` to a temporary file beside ``path``, then renames it over
    ``path``: a reader sees the old file or the whole new one, never a part."""
    path = os.fspath(path)
    check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` to exactly ``path`` (no suffix added), whole or not at all."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
