"""Bit-slicing of ring elements: 64 bit planes, 64 elements to a word.

`bit_planes(x)[j, w]` holds bit j of elements 64w .. 64w + 63 of `x` (flattened, row-major), element 64w + b
in bit b.  The secure comparison (tfppml.mpc) runs its binary adder on planes: shifting bit positions becomes
picking other planes, and the carry tree ANDs only the bits it needs, packed (250 instead of 512 bits per
element for a sign bit).

Example:
    >>> import numpy as np, tfppml
    >>> x = np.array([1, 2, 3], dtype=np.uint64)
    >>> tfppml.ops.bit_planes_numpy(x)[:2, 0].tolist()   # plane 0: elements 0 and 2; plane 1: elements 1, 2
    [5, 6]
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import tensorflow as tf

from tfppml.ops._checks import check_uint64_array, to_uint64
from tfppml.ops._library import c_function, ops as _ops

__all__ = ["bit_planes", "bit_planes_numpy", "plane_bits_numpy"]


def bit_planes(x: Any) -> tf.Tensor:
    """The 64 bit planes of uint64 `x` as a [64, ceil(size / 64)] uint64 tensor (TF kernel; works in graphs).

    Raises:
        TypeError: `x` is not uint64.
    """
    return _ops.tfppml_bit_planes(to_uint64(x, fn="bit_planes", arg="x"))


_PLANES_ARGTYPES = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]


def bit_planes_numpy(x: np.ndarray) -> np.ndarray:
    """`bit_planes` on a NumPy array without a TensorFlow op dispatch (same planes): a call costs about a
    microsecond plus ~1 ns per element, for the MPC runtime's many small comparison rounds.  Single threaded.

    Raises:
        TypeError: `x` is not a uint64 NumPy array.
    """
    check_uint64_array(x, fn="bit_planes_numpy", arg="x")
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty((64, -(-flat.size // 64)), dtype=np.uint64)
    if c_function("tfppml_bit_planes", _PLANES_ARGTYPES)(flat.ctypes.data, flat.size, out.ctypes.data) != 0:
        raise ValueError(f"bit_planes_numpy: the kernel refused an array of {flat.size} elements")
    return out


_BIT_INDEX = np.arange(64, dtype=np.uint64)


def plane_bits_numpy(plane: np.ndarray, size: int) -> np.ndarray:
    """The first `size` bits of one plane (a uint64 vector, bit b of word w = element 64w + b) as 0/1 uint64.

    Raises:
        TypeError: `plane` is not a uint64 NumPy vector.
        ValueError: `size` is negative or more than the plane holds.
    """
    if not isinstance(plane, np.ndarray) or plane.dtype != np.uint64 or plane.ndim != 1:
        raise TypeError("plane_bits_numpy: argument `plane` must be a uint64 NumPy vector")
    if not 0 <= size <= 64 * plane.size:
        raise ValueError(f"plane_bits_numpy: argument `size` must be in [0, {64 * plane.size}], got {size}")
    return ((plane[:, None] >> _BIT_INDEX) & np.uint64(1)).reshape(-1)[:size]
