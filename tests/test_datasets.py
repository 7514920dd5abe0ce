"""Tests of tfppml.datasets: shapes, ranges, determinism, and the errors that name the package to install."""

import gzip
import pathlib

import numpy as np
import pytest

from tfppml import datasets

FASHION_PRESENT = (datasets.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not FASHION_PRESENT,
    reason="Debian package dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)

SKLEARN = [
    (datasets.load_digits, (8, 8), 1797, 10),
    (datasets.load_iris, (4,), 150, 3),
    (datasets.load_wine, (13,), 178, 3),
    (datasets.load_breast_cancer, (30,), 569, 2),
]


@pytest.mark.parametrize("loader, feature_shape, total, classes", SKLEARN)
def test_sklearn_loaders(loader, feature_shape, total, classes):
    (x, y), (xt, yt) = loader(test_size=0.25, seed=3)
    assert x.shape[1:] == feature_shape and xt.shape[1:] == feature_shape
    assert x.shape[0] + xt.shape[0] == total
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(classes)) == set(np.unique(yt))
    # Stratified: every class has about a quarter of its examples in the test split.
    for label in range(classes):
        n_label = np.sum(y == label) + np.sum(yt == label)
        assert abs(np.sum(yt == label) - 0.25 * n_label) <= 1
    # Deterministic for a seed, different for another.
    (x2, _), _ = loader(test_size=0.25, seed=3)
    (x3, _), _ = loader(test_size=0.25, seed=4)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, x3)


def test_digits_are_scaled_images():
    (x, _), _ = datasets.load_digits()
    assert 0.0 <= x.min() and x.max() == 1.0


def test_mnist_5k():
    (x, y), (xt, yt) = datasets.load_mnist_5k()
    assert x.shape == (4000, 28, 28) and xt.shape == (1000, 28, 28)
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() == 1.0
    assert np.bincount(yt).tolist() == [100] * 10
    (xf, _), _ = datasets.load_mnist_5k(flatten=True)
    assert xf.shape == (4000, 784)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"test_size": 0.0}, ValueError, "test_size"),
        ({"test_size": 1.5}, ValueError, "test_size"),
        ({"test_size": "0.2"}, TypeError, "test_size"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_split_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.load_iris(**kwargs)


def test_fashion_missing_names_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist(directory=tmp_path)


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (6, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    labels = {"train": rng.integers(0, 10, 6), "t10k": rng.integers(0, 10, 3)}
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[split])
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels[split])
    (x, y), (xt, yt) = datasets.load_fashion_mnist(directory=tmp_path)
    np.testing.assert_allclose(x, images["train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(yt, labels["t10k"])
    (xr, _), _ = datasets.load_fashion_mnist(directory=tmp_path, normalize=False, flatten=True)
    assert xr.dtype == np.uint8 and xr.shape == (6, 784)


def test_fashion_rejects_truncated_file(tmp_path):
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.zeros(2))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x01")
    with pytest.raises(ValueError, match="truncated"):
        datasets.load_fashion_mnist(directory=tmp_path)


@needs_fashion
def test_fashion_mnist_debian_package():
    (x, y), (xt, yt) = datasets.load_fashion_mnist()
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    assert x.dtype == np.float32 and x.max() == 1.0
