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
    # Not X's seed: the same draws would pick each row's k smallest entries, all below 0.5.
    C = datasets.corrupt_pixels(X, k, seed=_seed(gen) + 1)
    changed = C != X
    assert np.all(changed.sum(1) == k)
    assert np.all(C[changed] == np.where(X[changed] > 0.5, 0, 1))
    assert np.array_equal(datasets.corrupt_pixels(X, 0), X)
    with pytest.raises(ValueError, match="k must be"):
        datasets.corrupt_pixels(X, 31)


# -- exact messages, bounds and dtypes ---------------------------------------------------------

def _idx_bytes(magic: bytes, dims=(), data=b"") -> bytes:
    return magic + np.array(dims, ">u4").tobytes() + data


@pytest.mark.parametrize("raw", [
    b"", b"\0\0\x08", b"\x01\0\x08\x01" + b"\0" * 8, b"\0\x01\x08\x01" + b"\0" * 8,
    b"\0\0\x07\x01" + b"\0" * 8,
])
def test_read_idx_bad_magic_number(tmp_path, raw):
    path = tmp_path / "f"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as e:
        datasets.read_idx(path)
    assert str(e.value) == f"{str(path)!r} is not an IDX file (bad magic number)"


@pytest.mark.parametrize("raw", [b"\0\0\x08\x00", b"\0\0\x08\x02" + b"\0" * 7])
def test_read_idx_truncated_header(tmp_path, raw):
    path = tmp_path / "f"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as e:
        datasets.read_idx(path)
    assert str(e.value) == f"{str(path)!r} is not an IDX file (truncated header)"


def test_read_idx_exact_sizes(tmp_path):
    # A header and nothing else is a valid empty array.
    (tmp_path / "empty").write_bytes(_idx_bytes(b"\0\0\x08\x01", [0]))
    assert datasets.read_idx(tmp_path / "empty").shape == (0,)
    (tmp_path / "short").write_bytes(_idx_bytes(b"\0\0\x08\x02", [4, 4], bytes(13)))
    with pytest.raises(ValueError) as e:
        datasets.read_idx(tmp_path / "short")
    assert str(e.value) == f"{str(tmp_path / 'short')!r}: header says shape (4, 4) (16 bytes of data), the file holds 13"
    with pytest.raises(OSError) as e:
        datasets.read_idx(tmp_path / "missing")
    assert str(e.value) == f"cannot read IDX file {str(tmp_path / 'missing')!r}: No such file or directory"


def test_read_idx_gives_native_byte_order(tmp_path, gen):
    a = np.random.default_rng(_seed(gen)).integers(-1000, 1000, (3, 4)).astype(">i4")
    _write_idx(tmp_path / "i", a, False)
    b = datasets.read_idx(tmp_path / "i")
    assert b.dtype == np.dtype("=i4") and b.dtype.isnative and np.array_equal(b, a)
    _write_idx(tmp_path / "u", np.arange(6, dtype=np.uint8).reshape(2, 3), False)
    assert datasets.read_idx(tmp_path / "u").dtype == np.uint8


def test_load_idx_shapes_and_dtypes(tmp_path):
    _write_idx(tmp_path / "flat", np.arange(12, dtype=np.uint8).reshape(3, 4), False)
    _write_idx(tmp_path / "lab", np.array([1, 2, 3], np.uint8), False)
    X, y = datasets.load_idx(tmp_path / "flat", tmp_path / "lab")  # already (n, features)
    assert X.shape == (3, 4) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, (np.arange(12).reshape(3, 4) / 255.0).astype(np.float32))
    _write_idx(tmp_path / "vec", np.arange(3, dtype=np.uint8), False)
    with pytest.raises(ValueError) as e:
        datasets.load_idx(tmp_path / "vec", tmp_path / "lab")
    assert str(e.value) == "images (3,) and labels (3,) do not match: expected (n, ...) and (n,)"
    with pytest.raises(ValueError, match=r"images \(3, 4\) and labels \(3, 4\) do not match"):
        datasets.load_idx(tmp_path / "flat", tmp_path / "flat")


def test_load_fashion_mnist_default_split_and_messages(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8), False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([7], np.uint8), True)
    X, y = datasets.load_fashion_mnist(tmp_path)
    assert X.shape == (1, 784) and list(y) == [7]
    with pytest.raises(ValueError) as e:
        datasets.load_fashion_mnist(tmp_path, split="TRAIN")
    assert str(e.value) == "split must be \"train\" or \"test\", got 'TRAIN'"
    with pytest.raises(FileNotFoundError) as e:
        datasets.load_fashion_mnist(tmp_path, split="test")
    assert str(e.value) == (f"no {tmp_path / 't10k-images-idx3-ubyte'}[.gz]: install the Debian package "
                            "dataset-fashion-mnist or pass root=")


def test_make_outlier_set_counts_and_draws(gen):
    seed = _seed(gen)
    y = np.repeat(np.arange(5), [40, 10, 10, 10, 10])
    X = np.arange(len(y) * 2, dtype=np.float64).reshape(-1, 2)  # every row distinct
    Xm, is_out, ym = datasets.make_outlier_set(X, y, nominal=0, fraction=0.2, seed=seed)
    assert len(Xm) == 50 and is_out.sum() == round(0.2 * 40 / 0.8) == 10 and is_out.dtype == np.int64
    assert len(np.unique(Xm[:, 0])) == 50  # outliers drawn without replacement
    again = datasets.make_outlier_set(X, y, nominal=0, fraction=0.2, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(again, (Xm, is_out, ym)))
    other = datasets.make_outlier_set(X, y, nominal=0, fraction=0.2, seed=seed + 1)
    assert not np.array_equal(other[0], Xm)
    # At least one outlier, however small the fraction; all 40 others when the fraction asks for exactly them.
    assert datasets.make_outlier_set(X, y, 0, 1e-6, seed)[1].sum() == 1
    Xh, is_out_h, _ = datasets.make_outlier_set(X, y, 0, 0.5, seed)
    assert is_out_h.sum() == 40
    np.testing.assert_array_equal(np.sort(Xh[is_out_h == 1, 0]), X[40:, 0])  # each of the 40 others once
    with pytest.raises(ValueError) as e:
        datasets.make_outlier_set(X, y, 0, 0.6, seed)
    assert str(e.value) == "fraction 0.6 needs 60 outliers, only 40 rows are not nominal"
    for fraction in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError) as e:
            datasets.make_outlier_set(X, y, 0, fraction)
        assert str(e.value) == f"fraction must be in (0, 1), got {fraction}"
    with pytest.raises(ValueError) as e:
        datasets.make_outlier_set(X[:-1], y, 0, 0.1)
    assert str(e.value) == "X has 79 rows but y has 80 labels"


def test_corrupt_pixels_exact_rule_dtypes_and_bounds(gen):
    seed = _seed(gen)
    X = np.tile(np.array([0.2, 0.5, 0.8, 0.0, 1.0], np.float64), (6, 1))
    C = datasets.corrupt_pixels(X, 5, seed=seed)  # every entry of every row
    np.testing.assert_array_equal(C, np.tile([1.0, 1.0, 0.0, 1.0, 0.0], (6, 1)))
    assert C.dtype == np.float64 and X[0, 2] == 0.8  # a copy, the input unchanged
    assert datasets.corrupt_pixels(X.astype(np.float32), 2, seed).dtype == np.float32
    assert datasets.corrupt_pixels((X * 255).astype(np.uint8), 2, seed).dtype == np.float32
    a, b = datasets.corrupt_pixels(X, 2, seed), datasets.corrupt_pixels(X, 2, seed)
    np.testing.assert_array_equal(a, b)
    rows = np.random.default_rng(seed).random((40, 30))
    picks = [datasets.corrupt_pixels(rows, 3, seed + i) != rows for i in range(2)]
    assert not np.array_equal(*picks)
    # The chosen columns differ from row to row (one ordering per row, not per column).
    assert len({tuple(np.flatnonzero(r)) for r in picks[0]}) > 1
    with pytest.raises(ValueError) as e:
        datasets.corrupt_pixels(X[0], 1)
    assert str(e.value) == "X must be 2-D (rows = images), got shape (5,)"
    with pytest.raises(ValueError) as e:
        datasets.corrupt_pixels(X, -1)
    assert str(e.value) == "k must be between 0 and the number of columns 5, got -1"
