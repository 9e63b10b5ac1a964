import gzip
import os

import numpy as np
import pytest

from rda_ext.data import datasets


def _seed(gen):
    return int(gen.initial_seed())


def _write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    raw = header + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def test_embedded_mnist_subset():
    X, y = datasets.load_mnist_5k()
    assert X.shape == (5000, 784) and X.dtype == np.float32
    assert 0 <= X.min() and X.max() <= 1 and X.max() == 1
    assert np.array_equal(np.bincount(y), np.full(10, 500))


@pytest.mark.parametrize("compress", [True, False])
def test_load_idx_round_trip(tmp_path, gen, compress):
    rng = np.random.default_rng(_seed(gen))
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    _write_idx(tmp_path / "img", images, compress)
    _write_idx(tmp_path / "lab", labels, compress)
    X, y = datasets.load_idx(tmp_path / "img", tmp_path / "lab")
    np.testing.assert_allclose(X, images.reshape(7, 15) / 255.0, rtol=1e-6)
    assert np.array_equal(y, labels)


def test_read_idx_other_dtypes(tmp_path, gen):
    a = np.random.default_rng(_seed(gen)).standard_normal((4, 6)).astype(">f4")
    _write_idx(tmp_path / "f", a, False)
    assert np.array_equal(datasets.read_idx(tmp_path / "f"), a.astype(np.float32))


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="bad magic"):
        datasets.read_idx(tmp_path / "text")
    _write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8) + 3, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="header says shape"):
        datasets.read_idx(tmp_path / "short")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0" * 50)[:-10])
    with pytest.raises(ValueError, match="damaged gzip"):
        datasets.read_idx(tmp_path / "broken.gz")
    with pytest.raises(OSError, match="cannot read IDX file"):
        datasets.read_idx(tmp_path / "missing")


def test_load_idx_mismatched_lengths(tmp_path):
    _write_idx(tmp_path / "img", np.ones((3, 2, 2), np.uint8), False)
    _write_idx(tmp_path / "lab", np.ones(4, np.uint8), False)
    with pytest.raises(ValueError, match="do not match"):
        datasets.load_idx(tmp_path / "img", tmp_path / "lab")


def test_load_fashion_mnist_from_a_folder(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((2, 28, 28), 255, np.uint8), True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 9], np.uint8), False)
    X, y = datasets.load_fashion_mnist(tmp_path, split="test")
    assert X.shape == (2, 784) and np.all(X == 1) and list(y) == [3, 9]
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist(tmp_path, split="train")
    with pytest.raises(ValueError, match="split"):
        datasets.load_fashion_mnist(tmp_path, split="valid")


@pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_ROOT), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist():
    X, y = datasets.load_fashion_mnist(split="test")
    assert X.shape == (10000, 784) and np.array_equal(np.bincount(y), np.full(10, 1000))


def test_make_outlier_set(gen):
    X, y = datasets.load_mnist_5k()
    Xm, is_out, ym = datasets.make_outlier_set(X, y, nominal=4, fraction=0.052, seed=_seed(gen))
    assert np.sum(ym == 4) == 500 and np.array_equal(is_out, (ym != 4).astype(int))
    assert abs(is_out.mean() - 0.052) < 0.002
    # Every row is a row of X with its own label.
    index = {row.tobytes(): label for row, label in zip(X, y)}
    assert all(index[row.tobytes()] == label for row, label in zip(Xm, ym))
    with pytest.raises(ValueError, match="fraction"):
        datasets.make_outlier_set(X, y, 4, 0.0)
    with pytest.raises(ValueError, match="nominal class"):
        datasets.make_outlier_set(X, y, 11, 0.05)


def test_corrupt_pixels(gen):
    X = np.random.default_rng(_seed(gen)).random((50, 30)).astype(np.float32)
    k = 7
    C = datasets.corrupt_pixels(X, k, seed=_seed(gen))
    changed = C != X
    assert np.all(changed.sum(1) == k)
    assert np.all(C[changed] == np.where(X[changed] > 0.5, 0, 1))
    assert np.array_equal(datasets.corrupt_pixels(X, 0), X)
    with pytest.raises(ValueError, match="k must be"):
        datasets.corrupt_pixels(X, 31)
