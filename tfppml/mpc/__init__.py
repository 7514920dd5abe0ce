"""Secure three-party computation on secret-shared fixed-point tensors (ABY3-style replicated sharing).

    prot = tfppml.mpc.ABY3(cluster=None, frac_bits=16)     # None: in-process parties
    x = prot.share(array, owner="server0")
    y = tfppml.mpc.relu(x @ w)
    prot.reveal(y)                                          # NumPy, to the driver only

Threat model: three non-colluding, semi-honest servers (honest majority).  No single server learns anything
about inputs, weights or intermediate values beyond what is explicitly revealed.
"""

from __future__ import annotations

from typing import Any, Sequence

from tfppml.mpc.encoding import FixedPointEncoding
from tfppml.mpc.protocol import ABY3
from tfppml.mpc.tensor import SharedTensor

__all__ = [
    "ABY3",
    "FixedPointEncoding",
    "SharedTensor",
    "argmax",
    "avg_pool2d",
    "concat",
    "conv2d",
    "matmul",
    "max_pool2d",
    "relu",
]


def _protocol(x: Any, fn: str) -> ABY3:
    if not isinstance(x, SharedTensor):
        raise TypeError(f"tfppml.mpc.{fn}: argument `x` must be a SharedTensor, got {type(x).__name__}")
    return x.protocol


def relu(x: SharedTensor) -> SharedTensor:
    """Exact ReLU of a shared tensor by secure comparison (see `ABY3.relu`): function secret sharing for small
    tensors, MSB extraction by a binary adder for large ones."""
    return _protocol(x, "relu").relu(x)


def matmul(x: SharedTensor, y: Any, *, reshare: bool = True) -> SharedTensor:
    """Matrix product, as `x @ y`; reshare=False leaves a program's product unshared (see `ABY3.matmul`)."""
    return _protocol(x, "matmul").matmul(x, y, reshare=reshare)


def conv2d(
    x: SharedTensor,
    filters: Any,
    strides: Any = 1,
    padding: str = "VALID",
    *,
    truncate: bool = True,
    reshare: bool = True,
) -> SharedTensor:
    """2-D convolution with tf.nn.conv2d's conventions (NHWC input, HWIO filters); see `ABY3.conv2d`."""
    return _protocol(x, "conv2d").conv2d(x, filters, strides, padding, truncate=truncate, reshare=reshare)


def avg_pool2d(x: SharedTensor, pool_size: Any = 2, strides: Any = None, padding: str = "VALID") -> SharedTensor:
    """Average pooling, NHWC, VALID padding."""
    return _protocol(x, "avg_pool2d").avg_pool2d(x, pool_size, strides, padding)


def max_pool2d(x: SharedTensor, pool_size: Any = 2, strides: Any = None, padding: str = "VALID") -> SharedTensor:
    """Max pooling, NHWC, VALID padding (secure comparisons)."""
    return _protocol(x, "max_pool2d").max_pool2d(x, pool_size, strides, padding)


def argmax(x: SharedTensor, axis: int = -1) -> SharedTensor:
    """Shared index of the maximum along `axis`."""
    return _protocol(x, "argmax").argmax(x, axis)


def concat(xs: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
    """Concatenation of shared tensors along `axis`."""
    if not xs:
        raise ValueError("tfppml.mpc.concat: argument `xs` must not be empty")
    return _protocol(xs[0], "concat").concat(xs, axis)
