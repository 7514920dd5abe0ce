"""DP releases over the rows (axis 0) of a certified tensor: argument checks, L2 sensitivity, Gaussian noise.

The worker (`tfppml.remote.service`, op "dp") looks the object up, checks that its rows are certified to be
one individual each, calls `prepare` (every argument checked and the sensitivity computed from the arguments
and the *shape* alone, before anything is charged or allocated), charges the ledger for one Gaussian event
with the noise multiplier calibrated to epsilon, and only then calls `Prepared.run` on the values.

Each release is one Gaussian mechanism under add-or-remove-one-row adjacency: the exact statistic plus
N(0, (multiplier * sensitivity)^2) noise per entry from `tfppml.ops.gaussian_noise` (keyed from the OS
CSPRNG), followed by post-processing that reads only the noisy values and public arguments (free,
privacy-wise).

==========  ==============================  ===================================  =======================
fn          arguments                       result (float64)                     L2 sensitivity
==========  ==============================  ===================================  =======================
sum         lower, upper                    column sums of x clipped to bounds   max(|lower|, |upper|)
                                                                                 * sqrt(columns)
mean        lower, upper                    the noisy sum / the public row count as sum
count       lower, upper                    per column, rows in [lower, upper]   sqrt(columns)
histogram   edges (2..1025, increasing)     counts per bin of one column         1
quantiles   qs (1..1024 in [0, 1]), lower,  one value per q, from a noisy        1
            upper, bins (1..65536; 256)     equal-width histogram on the bounds
==========  ==============================  ===================================  =======================

"columns" is the number of entries of one row (the product of x's shape after axis 0); sum, mean and count
return one value per entry of a row (shape x.shape[1:]). Values are never rounded, clipped or made
consistent after noising except where stated (quantiles): a noisy count may be negative or fractional, and
turning it into an integer is the caller's post-processing.

Stated clamping (histogram, quantiles): values below the first edge (below `lower`) are counted in the first
bin, above the last edge (above `upper`) in the last; NaN is counted in the first bin, so that every row lands
in exactly one bin whatever its value and the sensitivity stays 1 (refusing NaN data instead would reveal,
without noise, that some row is NaN). `count` counts a NaN in no column's interval, which keeps its
sensitivity too. Quantiles are read off a histogram of `bins` equal-width bins on [lower, upper]: their
resolution is (upper - lower) / bins, on top of the noise.

Example:
    >>> import numpy as np
    >>> release = prepare({"fn": "histogram", "edges": [0, 1, 2], "epsilon": 1.0}, (4, 1))
    >>> release.sensitivity, release.clamped
    (1.0, True)
    >>> release.run(np.array([[-5.0], [0.5], [1.5], [9.0]]), multiplier=0.0)
    array([2., 2.])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "MAX_BINS",
    "MAX_EDGES",
    "MAX_QUANTILES",
    "RELEASES",
    "Prepared",
    "add_noise",
    "bin_counts",
    "check_fn",
    "clipped_sums",
    "count_sensitivity",
    "in_bounds_counts",
    "prepare",
    "quantiles_from_counts",
    "sum_sensitivity",
]

MAX_EDGES = 1025  # a histogram of at most 1024 bins
MAX_QUANTILES = 1024
MAX_BINS = 65536  # of the histogram behind quantiles
DEFAULT_BINS = 256


@dataclass(frozen=True)
class Prepared:
    """A checked DP release, ready to run once its charge is recorded.

    Attributes:
      fn: The release kind.
      epsilon: The epsilon asked for.
      sensitivity: L2 sensitivity of `exact` under add-or-remove-one-row (from arguments and shape only).
      clamped: Whether out-of-range values are counted in the end bins (histogram, quantiles).
      extra: Public facts for the reply (e.g. the quantiles' resolution).
      exact: The statistic before noise, from the values.
      finish: Post-processing of the noisy statistic (public arguments only).
      noise_scale: What `finish` multiplies the noise by, where it is linear (1 / rows for a mean), so that the
        reply's ``noise_stddev`` is that of the released values; for histogram-based releases (quantiles) the
        stddev reported is the histogram's per bin.
    """

    fn: str
    epsilon: float
    sensitivity: float
    clamped: bool
    extra: dict[str, Any]
    exact: Callable[[np.ndarray], np.ndarray]
    finish: Callable[[np.ndarray, np.ndarray], np.ndarray]
    noise_scale: float = 1.0

    def run(self, values: np.ndarray, multiplier: float) -> np.ndarray:
        """The release of `values`: ``finish(exact(values) + N(0, (multiplier * sensitivity)^2))``."""
        statistic = self.exact(values)
        return self.finish(add_noise(statistic, multiplier * self.sensitivity), values)


# -- the statistics and their sensitivities (public so that tests can check them on their own)


def clipped_sums(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Column sums over axis 0 of `values` clipped to [lower, upper], in float64."""
    return np.clip(values.astype(np.float64), float(lower), float(upper)).sum(axis=0)


def sum_sensitivity(lower: float, upper: float, shape: Sequence[int]) -> float:
    """L2 sensitivity of `clipped_sums`: one row moves each entry's sum by at most max(|lower|, |upper|)."""
    return max(abs(float(lower)), abs(float(upper))) * math.sqrt(max(1, int(np.prod(shape[1:]))))


def in_bounds_counts(values: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Per column (over axis 0), how many rows lie in the closed interval [lower, upper] (NaN never does)."""
    v = values.astype(np.float64)
    return ((v >= lower) & (v <= upper)).sum(axis=0).astype(np.float64)


def count_sensitivity(shape: Sequence[int]) -> float:
    """L2 sensitivity of `in_bounds_counts`: one row changes each column's count by at most 1."""
    return math.sqrt(max(1, int(np.prod(shape[1:]))))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows per bin [edges[i], edges[i+1]) (the last bin closed), with the stated clamping (module docstring).

    Args:
      values: One column, [n] or [n, 1].
      edges: Strictly increasing bin edges (at least 2).

    Returns:
      float64 counts, one per bin (len(edges) - 1); they add up to n.
    """
    v = values.reshape(-1).astype(np.float64)
    bins = len(edges) - 1
    index = np.searchsorted(edges, v, side="right") - 1  # NaN sorts last: handled below
    index = np.clip(index, 0, bins - 1)
    index[np.isnan(v)] = 0
    return np.bincount(index, minlength=bins).astype(np.float64)


def quantiles_from_counts(counts: np.ndarray, qs: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Quantiles read off a (noisy) histogram of equal-width bins on [lower, upper]; post-processing only.

    Negative counts are set to 0; for each q the result is the point where the piecewise-linear CDF (counts
    spread evenly within their bin) reaches q of the total: q = 0 gives the left edge of the first non-empty
    bin, q = 1 the right edge of the last. With no positive count at all there is nothing to read, and the
    result is lower + q * (upper - lower).

    Returns:
      float64, one value per q, in [lower, upper] and non-decreasing in q.
    """
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    qs = np.asarray(qs, dtype=np.float64)
    width = (upper - lower) / len(counts)
    cdf = np.cumsum(counts)
    total = cdf[-1]
    if not total > 0:
        return lower + qs * (upper - lower)
    target = qs * total
    # The first bin whose CDF reaches the target; for target 0 the first bin with a positive count.
    first = np.searchsorted(cdf, target, side="left")
    index = np.where(target > 0, first, np.searchsorted(cdf, 0.0, side="right"))
    index = np.clip(index, 0, len(counts) - 1)
    before = np.where(index > 0, cdf[np.maximum(index - 1, 0)], 0.0)
    mass = counts[index]  # > 0 but for float round-off at the ends
    inside = np.where(mass > 0, (target - before) / np.where(mass > 0, mass, 1.0), 0.0)
    return np.clip(lower + width * (index + np.clip(inside, 0.0, 1.0)), lower, upper)


def add_noise(statistic: np.ndarray, stddev: float) -> np.ndarray:
    """`statistic` (float64) plus i.i.d. N(0, stddev^2) from the CSPRNG-keyed kernel (as is for stddev 0)."""
    statistic = np.asarray(statistic, dtype=np.float64)
    if not stddev > 0:
        return statistic
    import tensorflow as tf

    import tfppml.ops

    noise = tfppml.ops.gaussian_noise(list(statistic.shape), stddev=stddev, dtype=tf.float64)
    return statistic + np.asarray(noise.numpy()).reshape(statistic.shape)


# -- argument checks (shape-only; nothing here reads a value of the data)


def _number(meta: dict[str, Any], key: str) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"`{key}` must be a finite number, got {value!r}")
    return float(value)


def _epsilon(meta: dict[str, Any]) -> float:
    epsilon = _number(meta, "epsilon")
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be positive, got {epsilon!r}")
    return epsilon


def _bounds(meta: dict[str, Any]) -> tuple[float, float, float]:
    """(lower, upper, epsilon), checked in that order (the order of the client's arguments)."""
    lower, upper = _number(meta, "lower"), _number(meta, "upper")
    epsilon = _epsilon(meta)
    if not lower < upper:
        raise ValueError(
            f"`lower` must be less than `upper`, got lower={meta['lower']!r}, upper={meta['upper']!r}"
        )
    return lower, upper, epsilon


def _numbers(meta: dict[str, Any], key: str, low: int, high: int, what: str) -> np.ndarray:
    value = meta.get(key)
    # The length is checked before any element is looked at: a huge list costs nothing more here.
    if not isinstance(value, list) or not low <= len(value) <= high:
        size = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"`{key}` must be a list of {low} to {high} {what}, got {size}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ValueError(f"`{key}` must hold finite numbers only, got {item!r}")
    return np.asarray(value, dtype=np.float64)


def _rows_of(fn: str, shape: Sequence[int]) -> None:
    if len(shape) < 1:
        raise ValueError(
            f"a DP {fn} runs over the rows (axis 0) of a tensor with at least 1 dimension, got a scalar"
        )


def _one_column(fn: str, shape: Sequence[int]) -> None:
    if not (len(shape) == 1 or len(shape) == 2 and shape[1] == 1):
        raise ValueError(
            f"a DP {fn} needs one column, x of shape [n] or [n, 1], got {list(shape)} (select a column "
            "first, e.g. x @ a one-hot [columns, 1] tensor)"
        )


def _keep(noisy: np.ndarray, values: np.ndarray) -> np.ndarray:
    return noisy


def _prepare_sum(meta: dict[str, Any], shape: Sequence[int]) -> Prepared:
    fn = meta["fn"]
    lower, upper, epsilon = _bounds(meta)
    _rows_of(fn, shape)

    def finish(noisy: np.ndarray, values: np.ndarray) -> np.ndarray:
        # The row count is public (see tfppml.remote.policy): dividing by it is post-processing.
        return np.asarray(noisy / values.shape[0]) if fn == "mean" else noisy

    return Prepared(fn, epsilon, sum_sensitivity(lower, upper, shape), False, {},
                    lambda values: clipped_sums(values, lower, upper), finish,
                    1.0 / shape[0] if fn == "mean" else 1.0)  # fmt: skip


def _prepare_count(meta: dict[str, Any], shape: Sequence[int]) -> Prepared:
    lower, upper, epsilon = _bounds(meta)
    _rows_of("count", shape)
    return Prepared("count", epsilon, count_sensitivity(shape), False, {},
                    lambda values: in_bounds_counts(values, lower, upper), _keep)  # fmt: skip


def _prepare_histogram(meta: dict[str, Any], shape: Sequence[int]) -> Prepared:
    edges = _numbers(meta, "edges", 2, MAX_EDGES, "bin edges")
    if not np.all(np.diff(edges) > 0):
        raise ValueError("`edges` must be strictly increasing")
    epsilon = _epsilon(meta)
    _one_column("histogram", shape)
    return Prepared("histogram", epsilon, 1.0, True, {}, lambda values: bin_counts(values, edges), _keep)


def _prepare_quantiles(meta: dict[str, Any], shape: Sequence[int]) -> Prepared:
    qs = _numbers(meta, "qs", 1, MAX_QUANTILES, "numbers in [0, 1]")
    if not np.all((qs >= 0) & (qs <= 1)):
        raise ValueError(f"`qs` must be numbers in [0, 1], got {float(qs[(qs < 0) | (qs > 1)][0])!r}")
    lower, upper, epsilon = _bounds(meta)
    if not math.isfinite(upper - lower):
        raise ValueError(f"`upper` - `lower` must be finite, got lower={lower!r}, upper={upper!r}")
    bins = meta.get("bins", DEFAULT_BINS)
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"`bins` must be an int in [1, {MAX_BINS}], got {bins!r}")
    _one_column("quantiles", shape)
    edges = lower + (upper - lower) * np.arange(bins + 1, dtype=np.float64) / bins
    edges[-1] = upper  # exactly, whatever the rounding above
    return Prepared("quantiles", epsilon, 1.0, True, {"resolution": (upper - lower) / bins, "bins": bins},
                    lambda values: bin_counts(values, edges),
                    lambda noisy, values: quantiles_from_counts(noisy, qs, lower, upper))  # fmt: skip


#: fn -> its argument checker, which returns the runnable release.
RELEASES: dict[str, Callable[[dict[str, Any], Sequence[int]], Prepared]] = {
    "sum": _prepare_sum,
    "mean": _prepare_sum,
    "count": _prepare_count,
    "histogram": _prepare_histogram,
    "quantiles": _prepare_quantiles,
}


def check_fn(fn: Any) -> str:
    """`fn` if it names a release.

    Raises:
      ValueError: It does not (the known names listed).
    """
    if not isinstance(fn, str) or fn not in RELEASES:
        raise ValueError(f"`fn` of a DP release must be one of {list(RELEASES)}, got {fn!r}")
    return fn


def prepare(meta: dict[str, Any], shape: Sequence[int]) -> Prepared:
    """Checks a "dp" request's arguments against x's shape; returns the release, to run after the charge.

    Args:
      meta: The request: "fn" and its arguments (module docstring) and "epsilon".
      shape: x's shape.

    Raises:
      ValueError: A bad argument, named with what was given and what is expected.
    """
    return RELEASES[check_fn(meta.get("fn"))](meta, tuple(shape))
