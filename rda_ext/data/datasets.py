"""Image data sets for the RDA experiments, and the papers' constructions of outliers and noise.

Every loader returns ``(X, y)``: ``X`` float32 of shape (n, 784) scaled to [0, 1] (rows =
images), ``y`` int64 class labels. Nothing is downloaded: the MNIST subset ships inside the package
and Fashion-MNIST is read from local IDX files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import os
from importlib import resources

import numpy as np

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

# IDX type codes (http://yann.lecun.com/exdb/mnist/): the third magic byte.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _as_features(images: np.ndarray) -> np.ndarray:
    return (images.reshape(len(images), -1) / 255.0).astype(np.float32)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The embedded default: 5,000 real MNIST digits, 500 per class, as (X (5000, 784), y)."""
    with resources.files("rda_ext.data").joinpath("mnist_5k.npz").open("rb") as f:
        with np.load(f) as data:
            return _as_features(data["images"]), data["labels"].astype(np.int64)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (gzipped or not, told by its content, not its name) as a numpy array."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise OSError(f"cannot read IDX file {os.fspath(path)!r}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{os.fspath(path)!r} is a damaged gzip file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (truncated header)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{os.fspath(path)!r}: header says shape {shape} ({expected} bytes of data), "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An image file and its label file in the MNIST/Fashion-MNIST IDX format as (X, y)."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"images {images.shape} and labels {labels.shape} do not match: expected (n, ...) and (n,)"
        )
    return _as_features(images), labels.astype(np.int64)


def load_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_ROOT, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (or MNIST: the same file names) from ``root``; ``split`` is "train" (60,000
    images) or "test" (10,000). Files may be gzipped (``.gz``) or not."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f'split must be "train" or "test", got {split!r}')
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        name = os.path.join(root, f"{prefix}-{kind}-ubyte")
        found = next((p for p in (name + ".gz", name) if os.path.exists(p)), None)
        if found is None:
            raise FileNotFoundError(
                f"no {name}[.gz]: install the Debian package dataset-fashion-mnist or pass root="
            )
        paths.append(found)
    return load_idx(*paths)


def make_outlier_set(
    X: np.ndarray, y: np.ndarray, nominal: int, fraction: float, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The outlier data set of Zhou & Paffenroth (KDD'17, 5.3): every row of class ``nominal``,
    plus rows of the other classes drawn at random so that they make up ``fraction`` of the result.
    Returns ``(X_mix, is_outlier, y_mix)`` in a random order."""
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    inliers = np.flatnonzero(y == nominal)
    others = np.flatnonzero(y != nominal)
    if len(inliers) == 0:
        raise ValueError(f"no row has the nominal class {nominal!r}")
    n_out = max(1, round(fraction * len(inliers) / (1 - fraction)))
    if n_out > len(others):
        raise ValueError(f"fraction {fraction} needs {n_out} outliers, only {len(others)} rows are not nominal")
    rng = np.random.default_rng(seed)
    rows = np.concatenate([inliers, rng.choice(others, n_out, replace=False)])
    rows = rows[rng.permutation(len(rows))]
    return X[rows], (y[rows] != nominal).astype(np.int64), y[rows]


def corrupt_pixels(X: np.ndarray, k: int, seed: int | None = None) -> np.ndarray:
    """The noise of Zhou & Paffenroth (KDD'17, 5.2): in each row, ``k`` distinct random entries
    are set to 0 if they were > 0.5, else to 1. Returns a corrupted copy."""
    X = np.array(X, dtype=np.float32 if np.asarray(X).dtype != np.float64 else np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows = images), got shape {X.shape}")
    if not 0 <= k <= X.shape[1]:
        raise ValueError(f"k must be between 0 and the number of columns {X.shape[1]}, got {k}")
    rng = np.random.default_rng(seed)
    # k distinct columns per row: the first k of a random ordering of each row's columns.
    cols = np.argsort(rng.random(X.shape), axis=1)[:, :k]
    rows = np.arange(len(X))[:, None]
    X[rows, cols] = np.where(X[rows, cols] > 0.5, 0.0, 1.0)
    return X
