"""ChaCha20 keystream in standard TensorFlow ops, bit-identical to :func:`tfppml.ops.prg_uniform`.

Why this exists: TFF 0.87's default runtime executes every ``tff.tensorflow.computation`` inside its
``worker_binary`` process, which has neither tfppml's custom kernels nor Python, so a client computation
that masks an update under TFF can only use TensorFlow's built-in ops.  This module rebuilds the same
keystream (D. J. Bernstein's layout: 64-bit block counter in state words 12-13, 64-bit nonce 0 in words
14-15, little-endian uint64 output words) from ``uint32`` adds, xors and shifts; the tests check it against
the kernel word for word.  It is much slower than the kernel and is meant only for that runtime.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> keys = tf.constant([[1, 2, 3, 4]], tf.uint64)
    >>> tf_chacha20_uniform(keys, 5).shape
    TensorShape([1, 5])
"""

from __future__ import annotations

import functools

import tensorflow as tf

__all__ = ["tf_chacha20_uniform"]

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)


def _rotl(x: tf.Tensor, n: int) -> tf.Tensor:
    left = tf.bitwise.left_shift(x, tf.constant(n, tf.uint32))
    return tf.bitwise.bitwise_or(left, tf.bitwise.right_shift(x, tf.constant(32 - n, tf.uint32)))


def _quarter(s: list, a: int, b: int, c: int, d: int) -> None:
    xor = tf.bitwise.bitwise_xor
    s[a] = s[a] + s[b]
    s[d] = _rotl(xor(s[d], s[a]), 16)
    s[c] = s[c] + s[d]
    s[b] = _rotl(xor(s[b], s[c]), 12)
    s[a] = s[a] + s[b]
    s[d] = _rotl(xor(s[d], s[a]), 8)
    s[c] = s[c] + s[d]
    s[b] = _rotl(xor(s[b], s[c]), 7)


def tf_chacha20_uniform(keys: tf.Tensor, size: int) -> tf.Tensor:
    """Keystream words 0 .. size-1 of ChaCha20 under each 256-bit key, as uint64.

    Args:
        keys: uint64 tensor of shape [k, 4] (k keys of four little-endian words each).
        size: Number of uint64 words per key (a Python int >= 0).

    Returns:
        uint64 tensor [k, size]; row i equals ``tfppml.ops.prg_uniform(keys[i], [size])``.

    Raises:
        TypeError: `keys` is not uint64.
        ValueError: `keys` is not [k, 4] or `size` is negative.
    """
    keys = tf.convert_to_tensor(keys)
    if keys.dtype != tf.uint64:
        raise TypeError(f"tf_chacha20_uniform: argument `keys` must be uint64, got {keys.dtype}")
    if keys.shape.rank != 2 or keys.shape[1] != 4:
        raise ValueError(f"tf_chacha20_uniform: argument `keys` must have shape [k, 4], got {keys.shape}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"tf_chacha20_uniform: argument `size` must be an int >= 0, got {size!r}")
    return _compiled(size)(keys)


@functools.lru_cache(maxsize=None)
def _compiled(size: int):
    # One traced function per output size; XLA compiles it once per distinct number of keys at run time.
    spec = tf.TensorSpec([None, 4], tf.uint64)
    return tf.function(lambda keys: _keystream(keys, size), input_signature=[spec], jit_compile=True)


def _keystream(keys: tf.Tensor, size: int) -> tf.Tensor:
    blocks = max(1, -(-size // 8))
    k = tf.shape(keys)[0]
    lo = tf.cast(tf.bitwise.bitwise_and(keys, tf.constant(0xFFFFFFFF, tf.uint64)), tf.uint32)
    hi = tf.cast(tf.bitwise.right_shift(keys, tf.constant(32, tf.uint64)), tf.uint32)
    key32 = tf.reshape(tf.stack([lo, hi], axis=2), [k, 8])  # [k, 8] little-endian 32-bit key words
    ones = tf.ones([k, blocks], tf.uint32)
    counter = tf.range(blocks, dtype=tf.int64)
    c_lo = tf.cast(tf.bitwise.bitwise_and(counter, 0xFFFFFFFF), tf.uint32)[None, :] * ones
    c_hi = tf.cast(tf.bitwise.right_shift(counter, 32), tf.uint32)[None, :] * ones
    init = [tf.constant(c, tf.uint32) * ones for c in _SIGMA]
    init += [key32[:, i : i + 1] * ones for i in range(8)]
    init += [c_lo, c_hi, 0 * ones, 0 * ones]

    def double_round(i, *state):
        s = list(state)
        _quarter(s, 0, 4, 8, 12)
        _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14)
        _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15)
        _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13)
        _quarter(s, 3, 4, 9, 14)
        return (i + 1, *s)

    # A loop rather than ten unrolled double rounds: the unrolled graph (~1,000 ops per call) made TFF's
    # worker_binary spend seconds optimising every computation that masks.
    s = list(
        tf.while_loop(lambda i, *_: i < 10, double_round, (tf.constant(0), *init), parallel_iterations=1)[1:]
    )
    out = tf.stack([s[i] + init[i] for i in range(16)], axis=2)  # [k, blocks, 16] uint32
    out = tf.cast(out, tf.uint64)
    high = tf.bitwise.left_shift(out[:, :, 1::2], tf.constant(32, tf.uint64))
    words = tf.bitwise.bitwise_or(out[:, :, 0::2], high)
    return tf.reshape(words, [k, blocks * 8])[:, :size]
