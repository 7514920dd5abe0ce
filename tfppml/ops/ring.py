"""Ring arithmetic on uint64 tensors, modulo 2**64.

These are the building blocks of the secret-sharing protocols in `tfppml.mpc`: every operation wraps around
exactly as arithmetic in Z_2^64, which TensorFlow's own integer ops do not guarantee.

Example:
    >>> import numpy as np, tfppml
    >>> tfppml.ops.ring_add(np.array([2**64 - 1], np.uint64), np.array([2], np.uint64)).numpy()
    array([1], dtype=uint64)
"""

from __future__ import annotations

from typing import Any, Sequence

import tensorflow as tf

from tfppml.ops._checks import check_int, raise_as_value_error, to_uint64
from tfppml.ops._library import ops as _ops


def _binary(fn: str, kernel, x: Any, y: Any) -> tf.Tensor:
    x_t = to_uint64(x, fn=fn, arg="x")
    y_t = to_uint64(y, fn=fn, arg="y")
    try:
        tf.broadcast_static_shape(x_t.shape, y_t.shape)
    except ValueError as err:
        raise ValueError(
            f"{fn}: arguments `x` (shape {x_t.shape}) and `y` (shape {y_t.shape}) cannot be broadcast together"
        ) from err
    return kernel(x=x_t, y=y_t)


def ring_add(x: Any, y: Any) -> tf.Tensor:
    """x + y modulo 2**64, with NumPy broadcasting.

    Args:
        x: uint64 tensor or array.
        y: uint64 tensor or array, broadcast-compatible with `x`.

    Returns:
        The uint64 sum, of the broadcast shape.

    Raises:
        TypeError: if an argument is not uint64.
        ValueError: if the shapes cannot be broadcast together.
    """
    return _binary("ring_add", _ops.tfppml_ring_add, x, y)


def ring_sub(x: Any, y: Any) -> tf.Tensor:
    """x - y modulo 2**64, with NumPy broadcasting (arguments and errors as `ring_add`)."""
    return _binary("ring_sub", _ops.tfppml_ring_sub, x, y)


def ring_mul(x: Any, y: Any) -> tf.Tensor:
    """Elementwise x * y modulo 2**64, with NumPy broadcasting (arguments and errors as `ring_add`)."""
    return _binary("ring_mul", _ops.tfppml_ring_mul, x, y)


def ring_neg(x: Any) -> tf.Tensor:
    """-x modulo 2**64.

    Args:
        x: uint64 tensor or array.

    Returns:
        2**64 - x (and 0 for 0), same shape.

    Raises:
        TypeError: if `x` is not uint64.
    """
    return _ops.tfppml_ring_neg(x=to_uint64(x, fn="ring_neg", arg="x"))


def ring_reduce_sum(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> tf.Tensor:
    """Sum over axes modulo 2**64, as `tf.reduce_sum`.

    Args:
        x: uint64 tensor or array.
        axis: an axis, a sequence of axes (negative ones count from the end), or None for all axes.
        keepdims: keep reduced axes with size 1.

    Returns:
        The uint64 sums.

    Raises:
        TypeError: if `x` is not uint64 or `axis` is not made of ints.
        ValueError: if an axis is out of range for x's rank or repeated.

    Example:
        >>> tfppml.ops.ring_reduce_sum(np.full((2, 3), 2**63, np.uint64), axis=1).numpy()
        array([9223372036854775808, 9223372036854775808], dtype=uint64)
    """
    fn = "ring_reduce_sum"
    x_t = to_uint64(x, fn=fn, arg="x")
    rank = x_t.shape.rank
    if axis is None:
        axes = list(range(rank))
    else:
        axes = [axis] if not isinstance(axis, (list, tuple)) else list(axis)
        axes = [check_int(a, fn=fn, arg="axis", low=-max(rank, 1), high=max(rank - 1, 0)) for a in axes]
        if rank == 0 and axes:
            raise ValueError(f"{fn}: argument `axis` must be None or empty for a scalar `x`, got {axis}")
        normalized = [a % rank for a in axes] if rank else []
        if len(set(normalized)) != len(normalized):
            raise ValueError(f"{fn}: argument `axis` repeats an axis: {axis}")
    if not isinstance(keepdims, bool):
        raise TypeError(f"{fn}: argument `keepdims` must be a bool, got {keepdims!r}")
    return _ops.tfppml_ring_reduce_sum(x=x_t, axis=tf.constant(axes, dtype=tf.int32), keep_dims=keepdims)


def ring_shift_right(x: Any, bits: int) -> tf.Tensor:
    """Arithmetic right shift: x read as two's-complement int64, shifted by `bits`, sign kept.

    This is the local step of fixed-point truncation.

    Args:
        x: uint64 tensor or array.
        bits: shift in [0, 63].

    Returns:
        uint64 tensor, same shape.

    Raises:
        TypeError: if `x` is not uint64 or `bits` is not an int.
        ValueError: if `bits` is outside [0, 63].
    """
    fn = "ring_shift_right"
    x_t = to_uint64(x, fn=fn, arg="x")
    bits = check_int(bits, fn=fn, arg="bits", low=0, high=63)
    try:
        return _ops.tfppml_ring_shift_right(x=x_t, bits=bits)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)
