"""Fixed-point encoding between floating point and the ring Z_2^64.

A real x is stored as round(x * 2**frac_bits) in two's complement, so ring addition adds the reals and a ring
product carries 2 * frac_bits fractional bits until it is truncated (`ring_shift_right`).

Example:
    >>> import numpy as np, tfppml
    >>> enc = tfppml.ops.fixed_point_encode(np.array([1.5, -0.25]), frac_bits=16)
    >>> tfppml.ops.fixed_point_decode(enc, frac_bits=16).numpy()
    array([ 1.5 , -0.25])
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfppml.ops._checks import check_int, raise_as_value_error, to_tensor, to_uint64
from tfppml.ops._library import ops as _ops

MAX_FRAC_BITS = 62


def fixed_point_encode(x: Any, frac_bits: int = 16) -> tf.Tensor:
    """Encodes floats as ring elements: round(x * 2**frac_bits), half to even, two's complement.

    Args:
        x: float32 or float64 tensor or array (Python floats become float64).
        frac_bits: number of fractional bits, in [0, 62].

    Returns:
        uint64 tensor of the same shape.

    Raises:
        TypeError: if `x` is not floating point.
        ValueError: if `x` holds NaN or Inf, or a value with |x| >= 2**(63 - frac_bits), whose encoding would
            wrap around; the message names the first offending element.
    """
    fn = "fixed_point_encode"
    frac_bits = check_int(frac_bits, fn=fn, arg="frac_bits", low=0, high=MAX_FRAC_BITS)
    x_t = to_tensor(x, fn=fn, arg="x", dtypes=(tf.float64, tf.float32))
    try:
        return _ops.tfppml_fixed_point_encode(x=x_t, frac_bits=frac_bits)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)


def fixed_point_decode(x: Any, frac_bits: int = 16, dtype: tf.DType = tf.float64) -> tf.Tensor:
    """Decodes ring elements to floats: int64(x) / 2**frac_bits.

    Args:
        x: uint64 tensor or array.
        frac_bits: number of fractional bits the values carry, in [0, 62].
        dtype: tf.float64 (default) or tf.float32.

    Returns:
        Float tensor of the same shape.

    Raises:
        TypeError: if `x` is not uint64 or `dtype` is not a float type.
        ValueError: if `frac_bits` is out of range.
    """
    fn = "fixed_point_decode"
    frac_bits = check_int(frac_bits, fn=fn, arg="frac_bits", low=0, high=MAX_FRAC_BITS)
    try:
        out_type = tf.as_dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn}: argument `dtype` must be tf.float32 or tf.float64, got {dtype!r}") from err
    if out_type not in (tf.float32, tf.float64):
        raise TypeError(f"{fn}: argument `dtype` must be tf.float32 or tf.float64, got {out_type.name}")
    return _ops.tfppml_fixed_point_decode(x=to_uint64(x, fn=fn, arg="x"), frac_bits=frac_bits, out_type=out_type)
