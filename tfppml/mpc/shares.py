"""Shares as one party holds them, and the ring arithmetic on them.

Shares are NumPy uint64 arrays: NumPy's integer ufuncs wrap modulo 2**64 (no overflow checks on arrays), and for
the many small elementwise steps of a protocol they cost microseconds where an eager TF op costs a hundred.  The
heavy kernels (matmul, conv2d, the ChaCha20 PRG) are tfppml's C++ TF ops.

Sharing: a value x in Z_2^64 is split as x = x0 + x1 + x2 and party i holds the pair (x_i, x_{i+1}) (indices
mod 3), so any two parties can reconstruct and any single party sees two uniformly random ring elements.
Binary (XOR) sharings of 64-bit words use the same layout with XOR in place of +.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

NUM_PARTIES = 3

Pair = tuple[np.ndarray, np.ndarray]

U64 = np.uint64
radd, rsub, rmul, rneg = np.add, np.subtract, np.multiply, np.negative
band, bxor = np.bitwise_and, np.bitwise_xor

ALL_ONES = np.uint64(2**64 - 1)
SIGN_BIT = np.uint64(2**63)


class ShareKind(enum.Enum):
    """What a party's `Share` holds.

    ARITH: a pair of additive shares.  TERMS: a product left unshared (a program's last layer, `reshare=False`):
    the first component is this party's term of a three-way additive sharing, there is no pair (the second
    component is empty), so it can only be added to, reshaped, passed to relu and returned.  PLAIN: a plaintext
    revealed to this party (`reveal` to a party).
    """

    ARITH = "arith"
    TERMS = "terms"
    PLAIN = "plain"


def u64(value: int) -> np.uint64:
    return np.uint64(value)


def as_array(tensor: Any) -> np.ndarray:
    """A kernel's result as a read-only NumPy view of the tensor's memory.  `.numpy()` copies (to hand out a
    writable array), which for the large masks and products of a batch was ~5% of a server's CPU; the party
    code never writes into an array in place, and a read-only one makes a write fail loudly."""
    return np.asarray(tensor)


def shift_left(x: np.ndarray, bits: int) -> np.ndarray:
    return np.left_shift(x, np.uint64(bits))


def shift_right_logical(x: np.ndarray, bits: int) -> np.ndarray:
    return np.right_shift(x, np.uint64(bits))


def ring_sum(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    return np.asarray(np.sum(x, axis=None if axis is None else tuple(axis) if isinstance(axis, list) else axis,
                             dtype=np.uint64, keepdims=keepdims))


class Share:
    """One party's view of a shared tensor: its two components, their `ShareKind`, and the identity that owns it
    (only the owner may use or reveal it; a query's intermediates live in the query's scope and have no owner
    outside it)."""

    __slots__ = ("a", "b", "kind", "owner")

    def __init__(self, a: np.ndarray, b: np.ndarray, kind: ShareKind = ShareKind.ARITH) -> None:
        self.a, self.b, self.kind = np.asarray(a), np.asarray(b), kind
        self.owner = ""

    @property
    def shape(self) -> list[int]:
        return list(self.a.shape)

    @property
    def nbytes(self) -> int:
        return int(self.a.nbytes + self.b.nbytes)


#: The missing second component of a TERMS share.
NO_PAIR = np.zeros(0, dtype=np.uint64)


def public_term(i: int, value: Any, like: np.ndarray) -> Pair:
    """Party i's pair of the trivial sharing (value, 0, 0) of a public value."""
    full = np.array(np.broadcast_to(np.asarray(value, dtype=np.uint64), np.shape(like)))
    zero = np.zeros(np.shape(like), dtype=np.uint64)
    if i == 0:
        return full, zero
    if i == 2:
        return zero, full
    return zero, zero


def flip_bit(i: int, b: Pair) -> Pair:
    """Party i's XOR shares of 1 ^ b: the public 1 enters component 0 (held by parties 0 and 2)."""
    one = u64(1)
    if i == 0:
        return bxor(b[0], one), b[1]
    if i == 2:
        return b[0], bxor(b[1], one)
    return b


def one_minus(i: int, b: Pair) -> Pair:
    one = public_term(i, u64(1), b[0])
    return rsub(one[0], b[0]), rsub(one[1], b[1])


def add(x: Pair, y: Pair) -> Pair:
    return radd(x[0], y[0]), radd(x[1], y[1])


def sub(x: Pair, y: Pair) -> Pair:
    return rsub(x[0], y[0]), rsub(x[1], y[1])


def pair(share: Share) -> Pair:
    return share.a, share.b

