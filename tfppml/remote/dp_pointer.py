"""The DP releases of a `tfppml.remote.Pointer` (`dp_sum`, `dp_mean`, `dp_count`, `dp_histogram`,
`dp_quantiles`): the client side of the worker's op "dp" (the mechanics are in `tfppml.remote.releases`).

Each is one Gaussian release over the rows (axis 0) of a tensor whose rows are certified to be one individual
each, charged to the caller's and the data sets' DP budgets before the noise is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tfppml.remote import Pointer, Remote

__all__ = ["RELEASE_FACTS", "DpReleases"]

#: The reply fields of a DP release kept in `tfppml.remote.Pointer.privacy`.
RELEASE_FACTS = ("epsilon", "delta", "epsilon_spent", "noise_stddev", "clamped", "resolution", "bins")


def _number_list(value: Any, name: str) -> list[float]:
    """`value` (a sequence, array or 1-D tensor of numbers) as floats; the worker checks the rest."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a sequence of numbers, got {type(value).__name__}") from None
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a flat sequence of numbers, got shape {list(array.shape)}")
    return array.tolist()


def _int_or_as_is(value: Any) -> Any:
    # An integral value goes as an int; anything else is sent unchanged, for the worker to refuse by name
    # (int(3.5) would silently make it 3).
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return value


class DpReleases:
    """The DP release methods of `tfppml.remote.Pointer` (which provides `remote` and `id`)."""

    remote: Remote
    id: str

    def dp_sum(self, lower: float, upper: float, epsilon: float) -> Pointer:
        """A DP-noised sum over the rows (axis 0), values clipped to [lower, upper].

        Gaussian noise calibrated to `epsilon` (at the policy's delta) is added on the worker and `epsilon` is
        charged to this identity's budget.

        Raises:
          PolicyDenied: No DP rule, the budget would be exceeded, or the rows are not certified individuals.
        """
        return self._dp("sum", lower, upper, epsilon)

    def dp_mean(self, lower: float, upper: float, epsilon: float) -> Pointer:
        """A DP-noised mean over the rows (the noisy sum divided by the public row count); see `dp_sum`."""
        return self._dp("mean", lower, upper, epsilon)

    def dp_count(self, lower: float, upper: float, epsilon: float) -> Pointer:
        """A DP-noised count, per column, of the rows whose value lies in the closed interval [lower, upper].

        One Gaussian release (L2 sensitivity sqrt(columns): one row changes each column's count by at most 1),
        charged like `dp_sum`. NaN values are in no interval.

        Args:
          lower, upper: The interval's bounds (finite, lower < upper).
          epsilon: The epsilon to spend (> 0), at the policy's delta.

        Returns:
          A pointer to float64 counts, one per column (shape ``self.shape[1:]``). They are *not* rounded or
          clipped: a noisy count can be fractional or negative; rounding or clipping it is post-processing,
          the caller's to choose.

        Raises:
          PolicyDenied: No DP rule, a budget would be exceeded, or the rows are not certified individuals.
          tfppml.net.transport.RemoteError: A bad argument (named; nothing is charged then).

        Example:
          >>> x_ptr.dp_count(lower=65, upper=120, epsilon=0.5).get()   # doctest: +SKIP
          array([47.3, 51.9, 44.2, 50.6])
        """
        return self._dp("count", lower, upper, epsilon)

    def dp_histogram(self, edges: Sequence[float], epsilon: float) -> Pointer:
        """A DP-noised histogram of one column ([n] or [n, 1]) over the bins ``[edges[i], edges[i+1])``.

        The last bin is closed. Clamping, stated: values below ``edges[0]`` are counted in the first bin,
        values above ``edges[-1]`` in the last, and NaN in the first, so every row is counted exactly once and
        one row changes one bin by 1 (L2 sensitivity 1; the pointer's ``privacy["clamped"]`` is True). One
        Gaussian release, charged like `dp_sum`.

        Args:
          edges: 2 to 1025 strictly increasing finite numbers (1 to 1024 bins).
          epsilon: The epsilon to spend (> 0), at the policy's delta.

        Returns:
          A pointer to float64 noisy counts, one per bin (shape ``[len(edges) - 1]``), not rounded or clipped.

        Raises:
          PolicyDenied: As for `dp_count`.
          tfppml.net.transport.RemoteError: A bad argument, or `self` is not one column (named; nothing is
            charged then).

        Example:
          >>> ages = x_ptr @ tfppml.remote.send([[1.0], [0.0], [0.0], [0.0]], remote)   # doctest: +SKIP
          >>> ages.dp_histogram([0, 18, 40, 65, 120], epsilon=0.5).get()                  # doctest: +SKIP
          array([ 0.8, 41.6, 82.1, 75.3])
        """
        meta = {"op": "dp", "fn": "histogram", "x": self.id, "edges": _number_list(edges, "edges"),
                "epsilon": float(epsilon)}  # fmt: skip
        return self.remote._tensor(meta)

    def dp_quantiles(
        self, qs: Sequence[float], lower: float, upper: float, epsilon: float, bins: int = 256
    ) -> Pointer:
        """DP quantiles of one column ([n] or [n, 1]), read off a DP histogram.

        Values are clamped to [lower, upper] (NaN counts as `lower`); the worker makes a noisy histogram of
        `bins` equal-width bins on [lower, upper] (one Gaussian release, L2 sensitivity 1, charged like
        `dp_sum`), sets its negative counts to 0 and returns, for each q, where its piecewise-linear CDF
        reaches q. That is post-processing, so all of `qs` cost one epsilon together. The resolution is
        ``(upper - lower) / bins`` on top of the noise: more bins resolve finer but spread the rows thinner
        against the noise.

        Args:
          qs: 1 to 1024 numbers in [0, 1].
          lower, upper: The clamping bounds (finite, lower < upper).
          epsilon: The epsilon to spend (> 0), at the policy's delta.
          bins: The histogram's number of bins, 1 to 65536.

        Returns:
          A pointer to float64 values in [lower, upper], one per q (shape ``[len(qs)]``), non-decreasing in q.

        Raises:
          PolicyDenied: As for `dp_count`.
          tfppml.net.transport.RemoteError: A bad argument, or `self` is not one column (named; nothing is
            charged then).

        Example:
          >>> ages.dp_quantiles([0.25, 0.5, 0.75], lower=0, upper=120, epsilon=0.5).get()   # doctest: +SKIP
          array([37.5, 54.8, 71.2])
        """
        meta = {"op": "dp", "fn": "quantiles", "x": self.id, "qs": _number_list(qs, "qs"),
                "lower": float(lower), "upper": float(upper), "epsilon": float(epsilon),
                "bins": _int_or_as_is(bins)}  # fmt: skip
        return self.remote._tensor(meta)

    def _dp(self, fn: str, lower: float, upper: float, epsilon: float) -> Pointer:
        meta = {"op": "dp", "fn": fn, "x": self.id, "lower": float(lower), "upper": float(upper),
                "epsilon": float(epsilon)}  # fmt: skip
        return self.remote._tensor(meta)
