"""Poisson sampling of training data, to match the ``poisson=True`` accounting assumption.

Example:
    >>> ds = poisson_sample(x, y, batch_size=256, seed=0)  # doctest: +SKIP
    >>> model.fit(ds, epochs=3)  # doctest: +SKIP
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["poisson_sample"]


def poisson_sample(x: Any, y: Any = None, *, batch_size: int, steps: int | None = None, seed: int | None = None):
    """A ``tf.data.Dataset`` of Poisson-sampled batches: each example joins each batch with prob. ``batch_size/n``.

    Batch sizes vary around ``batch_size`` (an empty batch is possible); one pass of ``n / batch_size`` steps is
    one epoch in expectation, which is what :func:`tfppml.dp.compute_epsilon` with ``poisson=True`` assumes.

    Args:
        x: Features, an array (or nested structure of arrays) with n rows.
        y: Optional labels with n rows.
        batch_size: Expected batch size, 1 <= batch_size <= n.
        steps: Number of batches per pass (default ``ceil(n / batch_size)``).
        seed: Optional int seed (None: non-deterministic).

    Returns:
        A dataset yielding ``x_batch`` or ``(x_batch, y_batch)`` for ``steps`` batches.

    Raises:
        TypeError, ValueError: an argument is invalid.
    """
    first = tf.nest.flatten(x)[0]
    n = int(np.shape(first)[0])
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__} {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, n={n}], got {batch_size}")
    if steps is None:
        steps = int(np.ceil(n / batch_size))
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    data = (x,) if y is None else (x, y)
    # Tensors, not NumPy arrays: a NumPy array captured by the map function is embedded in its graph as a
    # constant (copied several times over: a 1 GB feature matrix took ~10 GB); a tensor is captured by reference.
    data = tf.nest.map_structure(tf.convert_to_tensor, data)
    q = batch_size / n
    seed_ds = tf.data.Dataset.random(seed=seed).take(steps)

    def select(s):
        mask = tf.random.stateless_uniform([n], seed=tf.stack([s, tf.constant(0, tf.int64)])) < q
        idx = tf.where(mask)[:, 0]
        batch = tf.nest.map_structure(lambda a: tf.gather(a, idx), data)
        return batch if y is not None else batch[0]

    return seed_ds.map(select)
