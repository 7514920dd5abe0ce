"""Cryptographically keyed Gaussian noise for differential privacy.

`gaussian_noise(shape, stddev)` draws N(0, stddev**2) samples; `add_gaussian_noise(x, stddev)` returns
`x + N(0, stddev**2)` in one pass, reusing `x`'s buffer when TensorFlow allows it.  Both are C++ kernels
(cc/kernels/gaussian_noise_kernels.cc): uniforms from the ChaCha20 keystream (64 bits per sample), normals by
the Ziggurat method of Marsaglia & Tsang (2000) in double precision, AVX2 where the CPU has it, multithreaded
on TensorFlow's intra-op pool.  The output depends only on (key, nonce, shape), never on the threads.

Keys.  With `seed=None` (the default, and the only choice for real DP noise) the *kernel* draws a fresh
256-bit key from the operating system's CSPRNG (getrandom) every time it runs, so noise is unpredictable and
differs at every step even inside a `tf.function` or a Keras train function (the ops are stateful: TensorFlow
never constant-folds or merges them).  An explicit `seed` (an int in [0, 2**256) or 4 uint64 words) makes the
output a fixed function of `(seed, nonce, shape)`, for tests and reproducible experiments; distinct nonces
under one seed give independent streams.  Noise from a seed someone else knows gives no privacy.

Example:
    >>> import tensorflow as tf, tfppml
    >>> noise = tfppml.ops.gaussian_noise([3, 4], stddev=2.0)            # fresh OS-keyed noise
    >>> a = tfppml.ops.gaussian_noise([5], 1.0, dtype=tf.float64, seed=7)
    >>> b = tfppml.ops.gaussian_noise([5], 1.0, dtype=tf.float64, seed=7)
    >>> bool(tf.reduce_all(a == b))
    True
    >>> noisy = tfppml.ops.add_gaussian_noise(tf.zeros([5], tf.float64), 1.0, seed=7)
    >>> bool(tf.reduce_all(noisy == a))
    True
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfppml.ops._checks import raise_as_value_error
from tfppml.ops._library import ops as _ops

__all__ = ["add_gaussian_noise", "gaussian_noise"]

_DTYPES = (tf.float32, tf.float64)
_MAX_NONCE = 2**63 - 1


def _seed_tensor(seed: Any, fn: str) -> tf.Tensor:
    """None -> empty vector (the kernel keys itself from the OS); int or 4 uint64 words -> a 256-bit key."""
    if seed is None:
        return tf.zeros([0], tf.uint64)
    if isinstance(seed, (tf.Tensor, tf.Variable, np.ndarray)):
        if tf.as_dtype(seed.dtype) != tf.uint64:
            raise TypeError(
                f"{fn}: argument `seed` must be an int or 4 uint64 words, got dtype {seed.dtype.name}"
            )
        shape = tf.TensorShape(seed.shape)
        if shape.rank is not None and (shape.rank != 1 or shape[0] not in (None, 4)):
            raise ValueError(f"{fn}: argument `seed` must be a vector of 4 uint64 words, got shape {shape}")
        return tf.convert_to_tensor(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{fn}: argument `seed` must be None, an int or 4 uint64 words, got {seed!r:.80}")
    if not 0 <= int(seed) < 2**256:
        raise ValueError(f"{fn}: argument `seed` must be an int in [0, 2**256), got {seed}")
    words = [(int(seed) >> (64 * i)) & (2**64 - 1) for i in range(4)]
    return tf.constant(np.array(words, dtype=np.uint64))


def _stddev_tensor(stddev: Any, fn: str) -> tf.Tensor:
    if isinstance(stddev, (tf.Tensor, tf.Variable)):
        if not stddev.dtype.is_floating:
            raise TypeError(f"{fn}: argument `stddev` must be a float, got dtype {stddev.dtype.name}")
        if stddev.shape.rank not in (None, 0):
            raise ValueError(f"{fn}: argument `stddev` must be a scalar, got shape {stddev.shape}")
        return tf.cast(stddev, tf.float64)
    if isinstance(stddev, bool) or not isinstance(stddev, numbers.Real):
        raise TypeError(f"{fn}: argument `stddev` must be a real number >= 0, got {stddev!r:.80}")
    if not (math.isfinite(float(stddev)) and stddev >= 0):
        raise ValueError(f"{fn}: argument `stddev` must be finite and >= 0, got {stddev}")
    return tf.constant(float(stddev), tf.float64)


def _nonce_tensor(nonce: Any, fn: str) -> tf.Tensor:
    if isinstance(nonce, (tf.Tensor, tf.Variable)):
        if not nonce.dtype.is_integer:
            raise TypeError(f"{fn}: argument `nonce` must be an int, got dtype {nonce.dtype.name}")
        return tf.cast(nonce, tf.int64)
    if isinstance(nonce, bool) or not isinstance(nonce, numbers.Integral):
        raise TypeError(f"{fn}: argument `nonce` must be an int in [0, 2**63 - 1], got {nonce!r:.80}")
    if not 0 <= int(nonce) <= _MAX_NONCE:
        raise ValueError(f"{fn}: argument `nonce` must be in [0, 2**63 - 1], got {nonce}")
    return tf.constant(int(nonce), tf.int64)


def _call(fn: str, op, *args, **kwargs) -> tf.Tensor:
    try:
        return op(*args, **kwargs)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)


def gaussian_noise(
    shape: Sequence[int] | tf.Tensor,
    stddev: float | tf.Tensor,
    dtype: tf.DType = tf.float32,
    seed: int | np.ndarray | tf.Tensor | None = None,
    nonce: int | tf.Tensor = 0,
    force_scalar: bool = False,
) -> tf.Tensor:
    """Samples of N(0, stddev**2), keyed from the OS CSPRNG at every execution unless `seed` is given.

    Args:
        shape: Output shape: a sequence of non-negative ints or an integer vector tensor.
        stddev: Standard deviation, finite and >= 0 (a float or a float scalar tensor; used in float64).
        dtype: tf.float32 or tf.float64.
        seed: None (fresh cryptographic key per execution: use this for privacy), or an int in [0, 2**256) or
            4 uint64 words, making the output reproducible (tests only).
        nonce: Stream selector under an explicit seed, an int in [0, 2**63 - 1] or an int64 scalar tensor.
        force_scalar: Run the portable code even on AVX2 CPUs (the same numbers; for tests).

    Returns:
        A `dtype` tensor of `shape`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a dimension is negative, `stddev` is negative or not finite, `seed` or `nonce` is out of
            range.

    Example:
        >>> tfppml.ops.gaussian_noise([2, 3], stddev=0.5).shape  # doctest: +SKIP
        TensorShape([2, 3])
    """
    fn = "gaussian_noise"
    dtype = tf.as_dtype(dtype)
    if dtype not in _DTYPES:
        raise TypeError(f"{fn}: argument `dtype` must be float32 or float64, got {dtype.name}")
    if isinstance(shape, (tf.Tensor, tf.Variable, np.ndarray)):
        if not tf.as_dtype(shape.dtype).is_integer:
            raise TypeError(f"{fn}: argument `shape` must hold integers, got dtype {shape.dtype}")
        shape_t = tf.cast(shape, tf.int64)
    else:
        try:
            dims = list(shape)
        except TypeError:
            raise TypeError(f"{fn}: argument `shape` must be a sequence of ints, got {shape!r:.80}") from None
        for d in dims:
            if isinstance(d, bool) or not isinstance(d, numbers.Integral):
                raise TypeError(f"{fn}: argument `shape` must be a sequence of ints, got {shape!r:.80}")
            if d < 0:
                raise ValueError(f"{fn}: argument `shape` must not have negative dimensions, got {shape!r}")
        shape_t = tf.constant([int(d) for d in dims], dtype=tf.int64, shape=[len(dims)])
    return _call(
        fn,
        _ops.tfppml_gaussian_noise,
        shape=shape_t,
        stddev=_stddev_tensor(stddev, fn),
        seed=_seed_tensor(seed, fn),
        nonce=_nonce_tensor(nonce, fn),
        T=dtype,
        force_scalar=bool(force_scalar),
    )


def add_gaussian_noise(
    x: Any,
    stddev: float | tf.Tensor,
    seed: int | np.ndarray | tf.Tensor | None = None,
    nonce: int | tf.Tensor = 0,
    force_scalar: bool = False,
) -> tf.Tensor:
    """`x + N(0, stddev**2)` elementwise in one pass (float32 or float64; computed in float64, rounded once).

    For the same `seed` and `nonce` the noise is exactly what :func:`gaussian_noise` draws for `x`'s shape.
    The gradient with respect to `x` is the identity.

    Args:
        x: A float32 or float64 tensor (or array).
        stddev: Standard deviation, finite and >= 0.
        seed: None (fresh cryptographic key per execution) or an explicit seed, as in :func:`gaussian_noise`.
        nonce: Stream selector under an explicit seed.
        force_scalar: Run the portable code even on AVX2 CPUs (for tests).

    Returns:
        A tensor of `x`'s shape and dtype.

    Raises:
        TypeError, ValueError: as for :func:`gaussian_noise`; `x` must be float32 or float64.

    Example:
        >>> noisy_grad = tfppml.ops.add_gaussian_noise(grad_sum, stddev=1.1)  # doctest: +SKIP
    """
    fn = "add_gaussian_noise"
    if isinstance(x, (tf.Tensor, tf.Variable, np.ndarray, np.generic)):
        if tf.as_dtype(x.dtype) not in _DTYPES:
            raise TypeError(
                f"{fn}: argument `x` must have dtype float32 or float64, got {tf.as_dtype(x.dtype).name}"
            )
        x_t = tf.convert_to_tensor(x)
    else:
        try:
            x_t = tf.convert_to_tensor(x, dtype=tf.float32)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{fn}: argument `x` must be a float32/float64 tensor, got {x!r:.80}") from err
    return _call(
        fn,
        _ops.tfppml_add_gaussian_noise,
        x=x_t,
        stddev=_stddev_tensor(stddev, fn),
        seed=_seed_tensor(seed, fn),
        nonce=_nonce_tensor(nonce, fn),
        force_scalar=bool(force_scalar),
    )


@tf.RegisterGradient("TfppmlAddGaussianNoise")
def _add_gaussian_noise_grad(op, grad):  # noqa: ARG001 - signature fixed by TensorFlow
    return [grad, None, None, None]


tf.no_gradient("TfppmlGaussianNoise")
