"""Matrix product and 2-D convolution over the ring Z_2^64 (uint64 tensors, wrap-around).

These are the hot path of the secure-computation protocols: every secret-shared dense or convolutional layer
is a few of them per party.  TensorFlow's own integer matmul is slow and does not promise to wrap around, so
tfppml has its own kernels: a packed, cache-blocked GEMM with an AVX2 micro-kernel (chosen at run time; a
portable one runs on CPUs without AVX2) on TensorFlow's intra-op thread pool.  The convolution is im2col x
filters on the same GEMM.

A negative fixed-point value is its two's complement, so products and sums of encoded values come out right
modulo 2**64.

Example:
    >>> import numpy as np, tfppml
    >>> a = np.array([[1, 2**64 - 1]], np.uint64)        # [1, -1]
    >>> b = np.array([[3], [5]], np.uint64)
    >>> tfppml.ops.ring_matmul(a, b).numpy()             # 1*3 + (-1)*5 = -2
    array([[18446744073709551614]], dtype=uint64)
"""

from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfppml.ops._checks import check_uint64_array, raise_as_value_error, to_uint64
from tfppml.ops._library import c_function
from tfppml.ops._library import ops as _ops

__all__ = ["ring_conv2d", "ring_matmul", "ring_matmul_numpy"]

_PADDINGS = ("SAME", "VALID")


def ring_matmul(a: Any, b: Any) -> tf.Tensor:
    """Matrix product modulo 2**64, as `tf.matmul` on uint64 with wrap-around.

    `a` is `[..., m, k]` and `b` is `[..., k, n]`; the leading (batch) dimensions are equal or broadcast as in
    `tf.matmul` (a 2-D `b` is applied to every matrix of a batched `a` as one large product).

    Args:
        a: uint64 tensor or array of rank >= 2, shape `[..., m, k]`.
        b: uint64 tensor or array of rank >= 2, shape `[..., k, n]`.

    Returns:
        uint64 tensor of shape `[broadcast(...), m, n]` with
        `c[..., i, j] = sum_p a[..., i, p] * b[..., p, j] mod 2**64`.

    Raises:
        TypeError: if `a` or `b` is not uint64.
        ValueError: if a rank is below 2, the inner dimensions differ or the batch dimensions cannot be
            broadcast together.

    Example:
        >>> x = np.arange(6, dtype=np.uint64).reshape(2, 3)
        >>> tfppml.ops.ring_matmul(x, np.full((3, 1), 2**63, np.uint64)).numpy()
        array([[9223372036854775808],
               [                  0]], dtype=uint64)
    """
    return _ring_matmul(a, b, force_scalar=False)


_FILL_ARGTYPES = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]


def ring_matmul_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`ring_matmul` of two uint64 matrices as a NumPy array, without a TensorFlow op dispatch (same words).

    For callers that multiply small matrices many times outside TensorFlow graphs (the MPC party runtime, one
    query's row times a layer's weights): the eager dispatch, which also converts both operands to tensors,
    cost more than such a product.  Runs on one thread; use `ring_matmul` for large products.

    Args:
        a: uint64 NumPy array of shape `[m, k]`.
        b: uint64 NumPy array of shape `[k, n]`.

    Returns:
        uint64 array of shape `[m, n]`, `a @ b mod 2**64`.

    Raises:
        TypeError: if `a` or `b` is not a uint64 NumPy array.
        ValueError: if either is not 2-D or the inner dimensions differ.
    """
    fn = "ring_matmul_numpy"
    for name, array in (("a", a), ("b", b)):
        check_uint64_array(array, fn=fn, arg=name)
        if array.ndim != 2:
            raise ValueError(f"{fn}: argument `{name}` must be a matrix (2-D), got shape {array.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{fn}: inner dimensions differ: a has shape {a.shape}, b has shape {b.shape}")
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    (m, k), n = a.shape, b.shape[1]
    out = np.empty((m, n), dtype=np.uint64)
    fill = c_function("tfppml_ring_matmul_fill", _FILL_ARGTYPES)
    if fill(a.ctypes.data, b.ctypes.data, out.ctypes.data, m, k, n) != 0:
        raise ValueError(f"{fn}: the kernel refused shapes {a.shape} and {b.shape}")
    return out


def _ring_matmul(a: Any, b: Any, *, force_scalar: bool) -> tf.Tensor:
    """`ring_matmul`; `force_scalar` selects the portable micro-kernel even on AVX2 CPUs (for tests)."""
    fn = "ring_matmul"
    a_t = to_uint64(a, fn=fn, arg="a")
    b_t = to_uint64(b, fn=fn, arg="b")
    for name, tensor, layout in (("a", a_t, "[..., m, k]"), ("b", b_t, "[..., k, n]")):
        rank = tensor.shape.rank
        if rank is not None and rank < 2:
            raise ValueError(
                f"{fn}: argument `{name}` must have rank >= 2 ({layout}), got shape {tensor.shape.as_list()}"
            )
    if a_t.shape.rank is not None and b_t.shape.rank is not None:
        k_a, k_b = a_t.shape[-1], b_t.shape[-2]
        if k_a is not None and k_b is not None and k_a != k_b:
            raise ValueError(
                f"{fn}: inner dimensions differ: `a` has shape {a_t.shape.as_list()} (k = {k_a}) but `b` has "
                f"shape {b_t.shape.as_list()} (k = {k_b}); expected a: [..., m, k], b: [..., k, n]"
            )
        try:
            tf.broadcast_static_shape(a_t.shape[:-2], b_t.shape[:-2])
        except ValueError as err:
            raise ValueError(
                f"{fn}: batch dimensions of `a` (shape {a_t.shape.as_list()}) and `b` (shape "
                f"{b_t.shape.as_list()}) cannot be broadcast together"
            ) from err
    try:
        return _ops.tfppml_ring_mat_mul(a=a_t, b=b_t, force_scalar=force_scalar)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)


def ring_conv2d(
    x: Any,
    filters: Any,
    strides: int | Sequence[int] = 1,
    padding: str = "VALID",
) -> tf.Tensor:
    """2-D convolution modulo 2**64 with `tf.nn.conv2d`'s conventions (NHWC input, HWIO filters).

    Output sizes and the placement of SAME padding (an odd extra row or column goes at the bottom / right)
    are exactly those of `tf.nn.conv2d`; like it, this is a cross-correlation (the filters are not flipped).

    Args:
        x: uint64 tensor or array, shape `[batch, in_height, in_width, in_channels]`.
        filters: uint64 tensor or array, shape `[filter_height, filter_width, in_channels, out_channels]`.
        strides: an int, a pair `(stride_h, stride_w)`, or the 4-element `[1, stride_h, stride_w, 1]` form of
            `tf.nn.conv2d`; all positive.
        padding: "VALID" or "SAME" (upper case, as `tf.nn.conv2d`).

    Returns:
        uint64 tensor of shape `[batch, out_height, out_width, out_channels]`.

    Raises:
        TypeError: if `x` or `filters` is not uint64, or `strides` / `padding` has the wrong type.
        ValueError: if a rank is not 4, the channel counts differ, a stride is not positive, the padding is
            unknown, or a VALID window does not fit in the input.

    Example:
        >>> x = np.ones((1, 4, 4, 1), np.uint64)
        >>> w = np.full((3, 3, 1, 1), 2**64 - 1, np.uint64)   # all -1
        >>> tfppml.ops.ring_conv2d(x, w, strides=1, padding="SAME")[0, :, :, 0].numpy().astype(np.int64)
        array([[-4, -6, -6, -4],
               [-6, -9, -9, -6],
               [-6, -9, -9, -6],
               [-4, -6, -6, -4]])
    """
    return _ring_conv2d(x, filters, strides, padding, force_scalar=False)


def _normalize_strides(fn: str, strides: Any) -> list[int]:
    """[stride_h, stride_w] from an int, a pair or tf.nn.conv2d's [1, stride_h, stride_w, 1]."""

    def is_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    expected = "an int, a pair (stride_h, stride_w) or [1, stride_h, stride_w, 1]"
    if is_int(strides):
        values = [int(strides), int(strides)]
    elif isinstance(strides, (list, tuple, np.ndarray)) and all(is_int(s) for s in strides):
        values = [int(s) for s in strides]
        if len(values) == 4:
            if values[0] != 1 or values[3] != 1:
                raise ValueError(
                    f"{fn}: argument `strides` of length 4 must be [1, stride_h, stride_w, 1] (no striding "
                    f"over batch or channels), got {list(values)}"
                )
            values = values[1:3]
        elif len(values) != 2:
            raise ValueError(f"{fn}: argument `strides` must be {expected}, got {list(values)}")
    else:
        raise TypeError(f"{fn}: argument `strides` must be {expected}, got {strides!r}")
    if any(s < 1 for s in values):
        raise ValueError(f"{fn}: argument `strides` must be positive, got {strides!r}")
    return values


def _ring_conv2d(
    x: Any, filters: Any, strides: int | Sequence[int], padding: str, *, force_scalar: bool
) -> tf.Tensor:
    """`ring_conv2d`; `force_scalar` selects the portable micro-kernel even on AVX2 CPUs (for tests)."""
    fn = "ring_conv2d"
    x_t = to_uint64(x, fn=fn, arg="x")
    f_t = to_uint64(filters, fn=fn, arg="filters")
    for name, tensor, layout in (
        ("x", x_t, "[batch, height, width, channels]"),
        ("filters", f_t, "[filter_height, filter_width, in_channels, out_channels]"),
    ):
        if tensor.shape.rank is not None and tensor.shape.rank != 4:
            raise ValueError(
                f"{fn}: argument `{name}` must have rank 4 ({layout}), got shape {tensor.shape.as_list()}"
            )
    if x_t.shape.rank == 4 and f_t.shape.rank == 4:
        c_x, c_f = x_t.shape[3], f_t.shape[2]
        if c_x is not None and c_f is not None and c_x != c_f:
            raise ValueError(
                f"{fn}: argument `filters` has {c_f} input channels (shape {f_t.shape.as_list()}) but `x` "
                f"has {c_x} channels (shape {x_t.shape.as_list()}); expected filters[2] == x[3]"
            )
    stride_hw = _normalize_strides(fn, strides)
    if not isinstance(padding, str):
        raise TypeError(f"{fn}: argument `padding` must be a string, 'VALID' or 'SAME', got {padding!r}")
    if padding not in _PADDINGS:
        raise ValueError(
            f"{fn}: argument `padding` must be 'VALID' or 'SAME' (upper case, as tf.nn.conv2d), "
            f"got {padding!r}"
        )
    try:
        return _ops.tfppml_ring_conv2d(
            input=x_t, filters=f_t, strides=stride_hw, padding=padding, force_scalar=force_scalar
        )
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)
