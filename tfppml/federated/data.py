"""Simulated federated data: partitioning a data set among clients, and a small Keras model for it.

Example:
    >>> (x, y), _ = tfppml.datasets.load_digits()
    >>> parts = partition(y, num_clients=10, scheme="dirichlet:0.5", seed=0)
    >>> sum(len(p) for p in parts) == len(y)
    True
"""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tfppml import datasets

__all__ = ["DATASETS", "client_datasets", "load", "make_model_fn", "parse_partition", "partition"]

DATASETS = ("digits", "fashion_mnist", "mnist5k")


def load(name: str, seed: int = 0):
    """``(x_train, y_train), (x_test, y_test)`` of a named data set, images flattened to vectors.

    Raises:
        ValueError: unknown `name`.
    """
    if name == "digits":
        (x, y), (xt, yt) = datasets.load_digits(seed=seed)
    elif name == "mnist5k":
        (x, y), (xt, yt) = datasets.load_mnist_5k(seed=seed)
    elif name == "fashion_mnist":
        (x, y), (xt, yt) = datasets.load_fashion_mnist()
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    return (flat(x), y.astype(np.int64)), (flat(xt), yt.astype(np.int64))


def parse_partition(spec: str) -> tuple[str, float | None]:
    """Parses ``"iid"`` or ``"dirichlet:ALPHA"`` (ALPHA > 0).

    Raises:
        ValueError: anything else (the message shows the accepted forms).
    """
    if spec == "iid":
        return "iid", None
    if isinstance(spec, str) and spec.startswith("dirichlet:"):
        try:
            alpha = float(spec.split(":", 1)[1])
        except ValueError:
            alpha = -1.0
        if alpha > 0 and np.isfinite(alpha):
            return "dirichlet", alpha
    raise ValueError(f"partition must be 'iid' or 'dirichlet:ALPHA' with ALPHA > 0, got {spec!r}")


def partition(labels: np.ndarray, num_clients: int, scheme: str = "iid", seed: int = 0) -> list[np.ndarray]:
    """Splits example indices among clients: shuffled equal shares, or per-class Dirichlet(alpha) shares.

    With ``dirichlet:alpha`` each class is divided among the clients in proportions drawn from a symmetric
    Dirichlet(alpha) (small alpha: each client sees few classes).  Every client gets at least one example.

    Raises:
        ValueError: `num_clients` is not an int in [1, len(labels)] or `scheme` is malformed.
    """
    labels = np.asarray(labels)
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral) or not 1 <= num_clients <= len(labels):
        raise ValueError(f"num_clients must be an int in [1, {len(labels)}], got {num_clients!r}")
    kind, alpha = parse_partition(scheme)
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    for k in range(num_clients):  # a client with no data would have nothing to train on: give it one example
        if not parts[k]:
            donor = max(range(num_clients), key=lambda j: len(parts[j]))
            parts[k].append(parts[donor].pop())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def client_datasets(x: np.ndarray, y: np.ndarray, parts, batch_size: int = 20) -> list[tf.data.Dataset]:
    """One batched dataset of ``OrderedDict(x=..., y=...)`` per client."""
    return [
        tf.data.Dataset.from_tensor_slices({"x": x[p], "y": y[p]}).batch(batch_size) for p in parts
    ]


def make_model_fn(input_dim: int, num_classes: int, hidden: int = 0) -> Callable[[], tff.learning.models.VariableModel]:
    """A softmax regression (or one hidden layer) as a TFF model over ``{x, y}`` batches."""

    def keras_model():
        layers = [tf.keras.layers.InputLayer(input_shape=(input_dim,))]
        if hidden:
            layers.append(tf.keras.layers.Dense(hidden, activation="relu", kernel_initializer="glorot_uniform"))
        layers.append(tf.keras.layers.Dense(num_classes, kernel_initializer="zeros"))
        return tf.keras.Sequential(layers)

    spec = {"x": tf.TensorSpec([None, input_dim], tf.float32), "y": tf.TensorSpec([None], tf.int64)}

    def model_fn():
        return tff.learning.models.from_keras_model(
            keras_model(),
            input_spec=spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    model_fn.keras_model = keras_model  # for evaluation outside TFF
    return model_fn


def evaluate(model_fn, weights, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy of the global `weights` (``tff.learning.models.ModelWeights``) on ``(x, y)``."""
    model = model_fn.keras_model()
    weights.assign_weights_to(model)
    logits = model(x, training=False)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    acc = np.mean(np.argmax(logits.numpy(), axis=1) == y)
    return float(loss), float(acc)
