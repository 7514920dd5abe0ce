"""Distributed comparison functions (DCF): function secret sharing of x < alpha between two parties.

A dealer who knows the secret threshold `alpha` and payload `beta` (a pair of ring elements per element) makes
correction words `cw` from both parties' root seeds; party b evaluates its key (its root seed and `cw`) at
public points and gets a share, and the two shares add up to beta if x < alpha, else 0 (modulo 2**64).  Either
key alone is pseudo-random: it says nothing about alpha or beta.  The MPC ReLU of small tensors uses this
(tfppml.mpc.runtime): one opened value and local evaluations replace a binary adder's eight rounds.

Construction: Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation"
(Eurocrypt 2021), with fixed-key AES-128 (AES-NI where the CPU has it) as the PRG; see cc/kernels/dcf.h.

Example:
    >>> import numpy as np
    >>> alpha = np.array([10], dtype=np.uint64); beta = np.array([[7, 1]], dtype=np.uint64)
    >>> s0, s1 = (np.array([[1, 2]], dtype=np.uint64), np.array([[3, 4]], dtype=np.uint64))
    >>> cw = dcf_gen_numpy(alpha, beta, s0, s1)
    >>> x = np.array([[9, 10]], dtype=np.uint64)
    >>> (dcf_eval_numpy(0, s0, cw, x) + dcf_eval_numpy(1, s1, cw, x)).tolist()
    [[[7, 1], [0, 0]]]
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import tensorflow as tf

from tfppml.ops._checks import check_uint64_array, raise_as_value_error, to_uint64
from tfppml.ops._library import c_function, ops as _ops

__all__ = ["dcf_eval", "dcf_eval_numpy", "dcf_gen", "dcf_gen_numpy", "dcf_key_words", "dcf_uses_aes_ni"]


def dcf_key_words(bits: int = 64) -> int:
    """uint64 words of correction words per element for a `bits`-bit domain."""
    return 4 * _check_bits(bits, "dcf_key_words") + 4


def _check_bits(bits: Any, fn: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 64:
        raise ValueError(f"{fn}: argument `bits` must be an int in [1, 64], got {bits!r}")
    return int(bits)


def _check_party(party: Any, fn: str) -> int:
    if isinstance(party, bool) or party not in (0, 1):
        raise ValueError(f"{fn}: argument `party` must be 0 or 1, got {party!r}")
    return int(party)


def _check_domain(values: np.ndarray, bits: int, fn: str, arg: str) -> None:
    if bits < 64 and values.size and int(values.max()) >> bits:
        raise ValueError(f"{fn}: argument `{arg}` holds {int(values.max())}, which does not fit in {bits} bits")


def _check_pairs(value: Any, n: int, fn: str, arg: str) -> np.ndarray:
    check_uint64_array(value, fn=fn, arg=arg)
    if value.shape != (n, 2):
        raise ValueError(f"{fn}: argument `{arg}` must have shape ({n}, 2), got {value.shape}")
    return np.ascontiguousarray(value)


_GEN_ARGTYPES = [ctypes.c_int, ctypes.c_int64] + [ctypes.c_void_p] * 5
_EVAL_ARGTYPES = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 4


def dcf_gen_numpy(alpha: np.ndarray, beta: np.ndarray, seed0: np.ndarray, seed1: np.ndarray, bits: int = 64) -> np.ndarray:
    """Correction words of n DCF keys, f_e(x) = beta[e] if x < alpha[e] else 0, on `bits`-bit unsigned x.

    Args:
        alpha: uint64 vector [n], each < 2**bits.
        beta: uint64 [n, 2], the payloads.
        seed0, seed1: uint64 [n, 2], the root seeds of parties 0 and 1 (128 bits; bit 0 is ignored).
        bits: domain size in bits, 1..64.

    Returns:
        uint64 [n, dcf_key_words(bits)]: the correction words, the same for both parties.

    Raises:
        TypeError: an argument is not a uint64 NumPy array.
        ValueError: wrong shapes, `bits` out of range, or an alpha of more than `bits` bits.
    """
    fn = "dcf_gen_numpy"
    bits = _check_bits(bits, fn)
    check_uint64_array(alpha, fn=fn, arg="alpha")
    if alpha.ndim != 1:
        raise ValueError(f"{fn}: argument `alpha` must be a vector, got shape {alpha.shape}")
    n = alpha.shape[0]
    alpha = np.ascontiguousarray(alpha)
    beta, seed0, seed1 = (_check_pairs(v, n, fn, a) for v, a in ((beta, "beta"), (seed0, "seed0"), (seed1, "seed1")))
    _check_domain(alpha, bits, fn, "alpha")
    cw = np.empty((n, dcf_key_words(bits)), dtype=np.uint64)
    gen = c_function("tfppml_dcf_gen", _GEN_ARGTYPES)
    if gen(bits, n, alpha.ctypes.data, beta.ctypes.data, seed0.ctypes.data, seed1.ctypes.data, cw.ctypes.data) != 0:
        raise ValueError(f"{fn}: the kernel refused {n} elements of {bits} bits")
    return cw


def dcf_eval_numpy(party: int, seed: np.ndarray, cw: np.ndarray, x: np.ndarray, bits: int = 64) -> np.ndarray:
    """Party `party`'s shares of f_e at the points x[e, :] (the other party's shares complete them).

    Args:
        party: 0 or 1 (which root seed `seed` is).
        seed: uint64 [n, 2], this party's root seeds.
        cw: uint64 [n, dcf_key_words(bits)] from `dcf_gen_numpy`.
        x: uint64 [n, points], each < 2**bits.
        bits: the domain size the keys were made for.

    Returns:
        uint64 [n, points, 2].

    Raises:
        TypeError: an array argument is not uint64.
        ValueError: `party` not 0 or 1, shapes that do not match, or a point of more than `bits` bits.
    """
    fn = "dcf_eval_numpy"
    bits = _check_bits(bits, fn)
    party = _check_party(party, fn)
    check_uint64_array(x, fn=fn, arg="x")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{fn}: argument `x` must have shape (elements, points) with points >= 1, got {x.shape}")
    n, points = x.shape
    seed = _check_pairs(seed, n, fn, "seed")
    check_uint64_array(cw, fn=fn, arg="cw")
    if cw.shape != (n, dcf_key_words(bits)):
        raise ValueError(f"{fn}: argument `cw` must have shape ({n}, {dcf_key_words(bits)}), got {cw.shape}")
    _check_domain(x, bits, fn, "x")
    cw, x = np.ascontiguousarray(cw), np.ascontiguousarray(x)
    out = np.empty((n, points, 2), dtype=np.uint64)
    evaluate = c_function("tfppml_dcf_eval", _EVAL_ARGTYPES)
    if evaluate(bits, party, n, points, seed.ctypes.data, cw.ctypes.data, x.ctypes.data, out.ctypes.data) != 0:
        raise ValueError(f"{fn}: the kernel refused {n} x {points} points of {bits} bits")
    return out


def dcf_gen(alpha: Any, beta: Any, seed0: Any, seed1: Any, bits: int = 64) -> tf.Tensor:
    """`dcf_gen_numpy` as a TF op (works in graphs; shards across cores): uint64 [n, dcf_key_words(bits)]."""
    fn = "dcf_gen"
    bits = _check_bits(bits, fn)
    args = [to_uint64(v, fn=fn, arg=a) for v, a in ((alpha, "alpha"), (beta, "beta"), (seed0, "seed0"), (seed1, "seed1"))]
    try:
        return _ops.tfppml_dcf_gen(*args, bits=bits)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)


def dcf_eval(party: int, seed: Any, cw: Any, x: Any, bits: int = 64) -> tf.Tensor:
    """`dcf_eval_numpy` as a TF op (works in graphs; shards across cores): uint64 [n, points, 2]."""
    fn = "dcf_eval"
    bits = _check_bits(bits, fn)
    party = _check_party(party, fn)
    args = [to_uint64(v, fn=fn, arg=a) for v, a in ((seed, "seed"), (cw, "cw"), (x, "x"))]
    try:
        return _ops.tfppml_dcf_eval(*args, party=party, bits=bits)
    except tf.errors.InvalidArgumentError as err:
        raise_as_value_error(fn, err)


def dcf_uses_aes_ni() -> bool:
    """Whether the kernels run AES on AES-NI here (else a portable table-driven AES: same outputs, slower)."""
    return bool(c_function("tfppml_dcf_uses_aes_ni", [])())


_AES_ARGTYPES = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]


def aes128_encrypt_numpy(key: bytes, blocks: np.ndarray) -> np.ndarray:
    """AES-128 encryptions of uint64 [n, 2] blocks (little-endian words) on the DCF's code path; for tests."""
    if not isinstance(key, bytes) or len(key) != 16:
        raise ValueError("aes128_encrypt_numpy: argument `key` must be 16 bytes")
    check_uint64_array(blocks, fn="aes128_encrypt_numpy", arg="blocks")
    if blocks.ndim != 2 or blocks.shape[1] != 2:
        raise ValueError(f"aes128_encrypt_numpy: argument `blocks` must have shape (n, 2), got {blocks.shape}")
    blocks = np.ascontiguousarray(blocks)
    out = np.empty_like(blocks)
    key_buf = ctypes.create_string_buffer(key, 16)
    c_function("tfppml_aes128_encrypt", _AES_ARGTYPES)(ctypes.addressof(key_buf), blocks.ctypes.data, blocks.shape[0], out.ctypes.data)
    return out
