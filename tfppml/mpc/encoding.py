"""Fixed-point encoding of reals into the ring Z_2^64 used by the secret-sharing protocols.

Range and failure rules (issue #17), enforced by `tfppml.mpc.ABY3`:

* Truncation failure.  Both truncations of a shared value v (v in ring units, |v| < 2**63) by d bits, the
  two-round SecureML-style one and the one-round variant, split v into two terms of which one (z0 + z1, or the
  mask r) is uniform on [0, 2**64); they fail exactly when subtracting v from that term wraps, which happens
  with probability exactly |v| / 2**64, and a failure is an error of 2**(64 - d) ring units (2**(64 - d - f)
  in value: 2**32 at f = d = 16).  A product of fixed-point values is truncated at 2f fractional bits, so
  for a real product z:

      P[failure per truncated element] = |z| * 2**(2f) / 2**64.

  (The ReLU of a small tensor truncates exactly inside its function-secret-sharing step: no failure term.)
  With values in [-1, 1] and f = 30, E|xy| = 1/4 gives 10**6 / 4 / 16 = 15,625 failures per 10**6
  products (15,599 observed); at f = 16 the rate is below 2**-32.  `value_range` V declares the magnitude of
  the values (and products) a computation handles and `max_failure` the tolerated rate; `frac_bits` f is
  refused unless V * 2**(2f - 64) <= max_failure, i.e. f <= (64 + log2(max_failure) - log2(V)) / 2
  (the defaults V = 2**10, max_failure = 2**-20 allow f <= 17).

* Wrap-around.  A ring value must stay below 2**62 in magnitude (RING_LIMIT; the sign bit and one bit of
  margin for the comparisons).  Every shared tensor carries a public bound on |value|, from the plaintext
  at share time (or V for a program's input), propagated through the operations: x + y -> bx + by,
  x * y -> bx * by, matmul -> min(k * bx * by, bx * max_j sum_k |y_kj|, ...), conv2d with the window's
  sum of |filter| values, sums by the count, pooling and ReLU keep it.  An operation whose untruncated
  result could reach 2**62 ring units (bound * 2**(fractional bits)) raises `FixedPointOverflowError`
  before any party works; for a matmul at f = 16 this bounds the inner dimension:
  k * bx * by < 2**(62 - 2f) = 2**30.  `reveal` checks the revealed values against the bound, so a failed
  truncation (off by 2**(64 - d - f)) is reported as an error, not returned.

* What the bound does not cover.  The bound is a worst case, far above typical values, so it decides wrap
  only; the failure rate is the declared one for values within `value_range`.  A computation whose values
  approach 2**62 ring units (e.g. 1e9 at 32 bits) runs, but its truncations fail with probability up to
  1/4: reveal withholds those results.  A served query's output and `reveal(..., to=party)` are not
  range-checked (the client does not know the program's bound); a query's input must stay within the
  client's `value_range` (use the same value_range on both sides, the default).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from tfppml import ops

RING_LIMIT_BITS = 62
RING_LIMIT = float(2**RING_LIMIT_BITS)
"""Ring values must stay below this magnitude (|v| < 2**62): beyond it, products and sums could wrap."""


def truncation_failure_probability(magnitude: float, frac_bits: int) -> float:
    """Probability that truncating a shared value of real magnitude `magnitude`, held at `frac_bits`
    fractional bits (2f for a product), fails: exactly |v| / 2**64 with v = magnitude * 2**frac_bits."""
    return min(float(magnitude) * 2.0 ** (frac_bits - 64), 1.0)


def max_frac_bits(value_range: float, max_failure: float) -> int:
    """The largest f with value_range * 2**(2f) / 2**64 <= max_failure (-1 if there is none)."""
    return math.floor((64 + math.log2(max_failure) - math.log2(value_range)) / 2)


@dataclasses.dataclass(frozen=True)
class FixedPointEncoding:
    """A real x is stored as round(x * 2**frac_bits) in two's complement modulo 2**64.

    Secure products carry 2 * frac_bits fractional bits and are truncated back.  Truncation of a shared
    value is probabilistic (as in SecureML and ABY3): the result is off by at most one unit in the last
    place, and it fails outright (a huge error) with probability about |v| / 2**64 per element, where v is
    the untruncated result in ring units.  For results of magnitude below 2**10 with 16 fractional bits,
    v < 2**42 and the failure probability is below 2**-22 per element.  `max_bits` bounds what may be
    encoded, |x| < 2**(max_bits - frac_bits), and encoding refuses larger values instead of wrapping.

    Args:
        frac_bits: fractional bits, in [0, 30].
        max_bits: |encoded value| must stay below 2**max_bits; in [frac_bits + 1, 62].
        value_range: declared magnitude of the values and products a computation handles (None: no
            failure-rate check, e.g. for an encoding used for one constant).
        max_failure: tolerated truncation failure probability per element; with `value_range`, `frac_bits`
            is refused unless value_range * 2**(2 * frac_bits) / 2**64 <= max_failure (see the module).
    """

    frac_bits: int = 16
    max_bits: int = 42
    value_range: float | None = None
    max_failure: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= 30:
            raise ValueError(f"FixedPointEncoding: argument `frac_bits` must be an int in [0, 30], got {self.frac_bits!r}")
        if (
            isinstance(self.max_bits, bool)
            or not isinstance(self.max_bits, int)
            or not self.frac_bits < self.max_bits <= 62
        ):
            raise ValueError(
                "FixedPointEncoding: argument `max_bits` must be an int in "
                f"[frac_bits + 1, 62] = [{self.frac_bits + 1}, 62], got {self.max_bits!r}"
            )
        if (self.value_range is None) != (self.max_failure is None):
            raise ValueError("FixedPointEncoding: give both `value_range` and `max_failure`, or neither")
        if self.value_range is None:
            return
        for name, value, high in (("value_range", self.value_range, math.inf), ("max_failure", self.max_failure, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high or not math.isfinite(value):
                interval = "(0, 1]" if high == 1.0 else "a positive finite number"
                raise ValueError(f"FixedPointEncoding: argument `{name}` must be {interval}, got {value!r}")
        failure = self.failure_probability
        if failure > self.max_failure:
            best = max_frac_bits(self.value_range, self.max_failure)
            hint = f"use frac_bits <= {best}" if best >= 0 else "no frac_bits qualifies"
            raise ValueError(
                f"argument `frac_bits` = {self.frac_bits} is refused: a product of magnitude up to value_range = "
                f"{self.value_range:g} fails its probabilistic truncation with probability value_range * "
                f"2**(2 * frac_bits) / 2**64 = {failure:.3g} per element, above max_failure = {self.max_failure:.3g}; "
                f"{hint}, or declare a smaller value_range or a larger max_failure"
            )

    @property
    def failure_probability(self) -> float:
        """Truncation failure probability per element for a product of magnitude `value_range` (see the module)."""
        if self.value_range is None:
            raise ValueError("FixedPointEncoding: no `value_range` declared")
        return truncation_failure_probability(self.value_range, 2 * self.frac_bits)

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    @property
    def bound(self) -> float:
        """Largest magnitude (exclusive) of a real value that can be encoded."""
        return float(2 ** (self.max_bits - self.frac_bits))

    @property
    def resolution(self) -> float:
        """One unit in the last place."""
        return 2.0**-self.frac_bits

    def encode(self, x: Any, *, arg: str = "x") -> tf.Tensor:
        """Encodes a real array; raises ValueError naming `arg` for NaN/Inf or |x| >= bound."""
        array = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            index = int(np.flatnonzero(~np.isfinite(array))[0])
            raise ValueError(f"argument `{arg}` holds {array.reshape(-1)[index]} at flat index {index}; only finite values can be encoded")
        if array.size and np.max(np.abs(array)) >= self.bound:
            index = int(np.argmax(np.abs(array)))
            raise ValueError(
                f"argument `{arg}` holds {array.reshape(-1)[index]} at flat index {index}, outside the encoding "
                f"range |x| < 2**{self.max_bits - self.frac_bits} = {self.bound:g} "
                f"(frac_bits={self.frac_bits}, max_bits={self.max_bits})"
            )
        return ops.fixed_point_encode(array, frac_bits=self.frac_bits)

    def decode(self, x: Any, frac_bits: int | None = None) -> np.ndarray:
        """Decodes ring elements carrying `frac_bits` fractional bits (default: this encoding's) to float64."""
        bits = self.frac_bits if frac_bits is None else frac_bits
        return ops.fixed_point_decode(x, frac_bits=bits).numpy()
