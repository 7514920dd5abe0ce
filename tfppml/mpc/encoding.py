"""Fixed-point encoding of reals into the ring Z_2^64 used by the secret-sharing protocols."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from tfppml import ops


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
    """

    frac_bits: int = 16
    max_bits: int = 42

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
