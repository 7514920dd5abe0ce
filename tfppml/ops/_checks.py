"""Argument conversion and checks shared by the op wrappers.

Every message names the function, the argument, what was given and what was expected.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np
import tensorflow as tf


def to_tensor(value: Any, *, fn: str, arg: str, dtypes: Iterable[tf.DType]) -> tf.Tensor:
    """Converts `value` (tensor, NumPy array or nested list) to a tensor of one of `dtypes`.

    Python ints and lists are converted to the first allowed dtype; an existing tensor or array of another
    dtype is refused rather than cast, so that nothing is silently truncated or wrapped.
    """
    allowed = tuple(dtypes)
    names = " or ".join(d.name for d in allowed)
    if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray, np.generic)):
        dtype = tf.as_dtype(value.dtype)
        if dtype not in allowed:
            raise TypeError(f"{fn}: argument `{arg}` must have dtype {names}, got {dtype.name}")
        return tf.convert_to_tensor(value)
    try:
        return tf.convert_to_tensor(value, dtype=allowed[0])
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn}: argument `{arg}` must be a tensor or array of {names}, got {value!r:.80}") from err


def to_uint64(value: Any, *, fn: str, arg: str) -> tf.Tensor:
    """A ring tensor: uint64.  Plain Python integers must lie in [0, 2**64)."""
    if isinstance(value, (int, list, tuple)) and not isinstance(value, bool):
        array = np.asarray(value, dtype=object)
        flat = [int(v) for v in array.reshape(-1)] if array.size else []
        bad = [v for v in flat if not 0 <= v < 2**64]
        if bad:
            raise ValueError(
                f"{fn}: argument `{arg}` holds {bad[0]}, outside the ring [0, 2**64); encode signed values "
                "with fixed_point_encode or take them modulo 2**64 first"
            )
        return tf.constant(np.array(flat, dtype=np.uint64).reshape(array.shape))
    return to_tensor(value, fn=fn, arg=arg, dtypes=(tf.uint64,))


def check_uint64_array(value: Any, *, fn: str, arg: str) -> np.ndarray:
    """`value` if it is a uint64 NumPy array (the ctypes entry points take no other), else TypeError."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint64:
        got = type(value).__name__ + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else "")
        raise TypeError(f"{fn}: argument `{arg}` must be a uint64 NumPy array, got {got}")
    return value


def check_int(value: Any, *, fn: str, arg: str, low: int, high: int) -> int:
    """A Python integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn}: argument `{arg}` must be an int in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{fn}: argument `{arg}` must be in [{low}, {high}], got {value}")
    return int(value)


def raise_as_value_error(fn: str, err: tf.errors.InvalidArgumentError) -> None:
    """Re-raises a kernel's InvalidArgumentError (eager mode) as a ValueError with the kernel's message."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", err.message).split(" [Op:")[0]
    raise ValueError(message if message.startswith(fn) else f"{fn}: {message}") from err
