"""Cryptographic pseudo-random generation: the ChaCha20 keystream as uniform uint64 values.

The protocols expand short pairwise seeds into masks and zero-sharings with this generator; `tf.random` is
not a cryptographic generator and is never used for that.  Element i of `prg_uniform(seed, shape, offset)`
is keystream word `offset + i`, so the same (seed, offset) always gives the same values, and two calls with
disjoint ranges [offset, offset + size) give independent values.

Example:
    >>> import numpy as np, tfppml
    >>> seed = np.array([1, 2, 3, 4], dtype=np.uint64)          # a 256-bit key
    >>> a = tfppml.ops.prg_uniform(seed, [2, 3])                  # words 0..5
    >>> b = tfppml.ops.prg_uniform(seed, [3], offset=3)           # words 3..5
    >>> bool(np.all(a.numpy().reshape(-1)[3:] == b.numpy()))
    True
"""

from __future__ import annotations

import ctypes
import math
import secrets
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfppml.ops._checks import check_uint64_array, raise_as_value_error, to_uint64
from tfppml.ops._library import c_function, ops as _ops

MAX_OFFSET = 2**63 - 1


def new_seed(bits: int = 256) -> np.ndarray:
    """A fresh random seed from the operating system's CSPRNG, as uint64 words (bits 128 or 256)."""
    if bits not in (128, 256):
        raise ValueError(f"new_seed: argument `bits` must be 128 or 256, got {bits!r}")
    return np.frombuffer(secrets.token_bytes(bits // 8), dtype="<u8").astype(np.uint64)


def _check_dims(fn: str, shape: Sequence[int]) -> list[int]:
    """`shape` as a list of non-negative ints, else TypeError/ValueError naming `fn` and the argument."""
    dims = list(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"{fn}: argument `shape` must be a sequence of ints, got {shape!r}")
        if d < 0:
            raise ValueError(f"{fn}: argument `shape` must not have negative dimensions, got {shape!r}")
    return dims


def _check_offset(fn: str, offset: Any, maximum: int) -> int:
    """`offset` as an int in [0, maximum], else TypeError/ValueError naming `fn` and the argument."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise TypeError(f"{fn}: argument `offset` must be an int, got {offset!r}")
    if not 0 <= offset <= maximum:
        bound = "2**63 - 1" if maximum == MAX_OFFSET else "2**63 - 1 - size"
        raise ValueError(f"{fn}: argument `offset` must be in [0, {bound}], got {offset}")
    return int(offset)


def prg_uniform(seed: Any, shape: Sequence[int] | tf.Tensor, offset: int | tf.Tensor = 0) -> tf.Tensor:
    """Uniform uint64 values from ChaCha20 keyed by `seed`.

    Args:
        seed: uint64 vector of 2 words (128-bit key) or 4 words (256-bit key).
        shape: output shape: a sequence of non-negative ints or an int64/int32 vector tensor.
        offset: index of the first keystream word to return; a non-negative int or int64 scalar tensor.

    Returns:
        uint64 tensor of `shape`, uniformly distributed over [0, 2**64).

    Raises:
        TypeError: if `seed` is not uint64 or `offset`/`shape` are not integers.
        ValueError: if `seed` has the wrong length, a dimension is negative, or `offset` is negative or
            makes the range overflow.
    """
    fn = "prg_uniform"
    seed_t = to_uint64(seed, fn=fn, arg="seed")
    if seed_t.shape.rank != 1 or seed_t.shape[0] not in (2, 4):
        raise ValueError(
            f"{fn}: argument `seed` must be a vector of 2 or 4 uint64 words (128- or 256-bit key), "
            f"got shape {seed_t.shape}"
        )
    if isinstance(shape, (tf.Tensor, np.ndarray)):
        if not tf.as_dtype(shape.dtype).is_integer:
            raise TypeError(f"{fn}: argument `shape` must hold integers, got dtype {shape.dtype}")
        shape_t = tf.cast(shape, tf.int64)
    else:
        dims = _check_dims(fn, shape)
        shape_t = tf.constant(dims, dtype=tf.int64, shape=[len(dims)])
    if isinstance(offset, (tf.Tensor, tf.Variable)):
        offset_t = tf.cast(offset, tf.int64)
    else:
        offset_t = tf.constant(_check_offset(fn, offset, MAX_OFFSET), dtype=tf.int64)
    try:
        return _ops.tfppml_prg_uniform(seed=seed_t, shape=shape_t, offset=offset_t)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)


_FILL_ARGTYPES = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]


def prg_uniform_numpy(seed: Any, shape: Sequence[int], offset: int = 0) -> np.ndarray:
    """`prg_uniform` as a NumPy array, computed without a TensorFlow op dispatch (same keystream, same words).

    For callers that draw many small masks outside TensorFlow graphs (the MPC party runtime): a call costs a
    couple of microseconds plus the keystream, against ~100-200 us for an eager TF op.  Single threaded, so
    for tensors of millions of elements `prg_uniform` (which shards across cores) can be faster.

    Args:
        seed: uint64 NumPy vector of 2 or 4 words.
        shape: sequence of non-negative ints.
        offset: index of the first keystream word (non-negative int).

    Returns:
        a new uint64 array of `shape`.

    Raises:
        TypeError: `seed` is not a uint64 NumPy vector, or `shape`/`offset` are not ints.
        ValueError: `seed` has the wrong length, a dimension is negative, or `offset` is out of range.

    Example:
        >>> seed = np.array([1, 2, 3, 4], dtype=np.uint64)
        >>> bool(np.all(prg_uniform_numpy(seed, [2, 3]) == prg_uniform(seed, [2, 3]).numpy()))
        True
    """
    fn = "prg_uniform_numpy"
    check_uint64_array(seed, fn=fn, arg="seed")
    if seed.ndim != 1 or seed.shape[0] not in (2, 4):
        raise ValueError(f"{fn}: argument `seed` must be a vector of 2 or 4 uint64 words, got shape {seed.shape}")
    dims = _check_dims(fn, shape)
    # math.prod, not np.prod: exact for any size, and ~100x cheaper for the few-element shapes of a protocol
    # round (this function runs dozens of times per secure comparison).
    size = int(math.prod(dims))
    offset = _check_offset(fn, offset, MAX_OFFSET - size)
    key = np.ascontiguousarray(seed)
    out = np.empty(dims, dtype=np.uint64)
    fill = c_function("tfppml_prg_fill", _FILL_ARGTYPES)
    if fill(key.ctypes.data, key.shape[0], offset, out.ctypes.data, size) != 0:
        raise ValueError(f"{fn}: the kernel refused seed {seed.shape}, shape {dims}, offset {offset}")
    return out
