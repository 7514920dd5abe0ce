"""A serving period: the model owner's quota of input rows, shared by MPC and HE serving.

A model owner limits what clients can learn from a served model (model extraction, membership inference) by how
many *inputs* it answers, so the quota counts rows of the query batches, never calls: one query of 100 images
spends 100 rows.  A model that declares its batch size (a Keras `batch_input_shape` of (1, ...)) accepts queries
of exactly that many rows and no other.

The rules, exactly (every method is thread-safe; one lock guards the counters):

- `open(num_requests)` starts a period of `num_requests` rows (an int >= 1; bool refused: ValueError).  Opening
  while a period is open raises `ProtocolError`: call `stop()` first.  A period is open from `open` until `stop`,
  or until its whole quota has been served (it then ends by itself, so the owner may open the next one at once).
- `admit(rows)` is a context manager around one query of `rows` rows (an int >= 1: ValueError otherwise).  At entry
  it checks, in this order, the declared batch size (`rows != batch_size`: PolicyDenied) and the per-query cap
  (`rows > max_rows`: PolicyDenied), then the period: no period open (never opened, stopped, or quota fully
  served) or fewer than `rows` rows left of the quota: `QuotaExceeded`.  Admitted rows are reserved at once
  ("started"), so concurrent queries can never spend more than the quota together.  When the body returns, the
  rows count as "served"; when it raises (any exception, also KeyboardInterrupt), the reservation is released and
  the rows may be spent again.  Invariant: `served <= started <= quota`.
- `stop()` ends the period (queries already admitted finish, and still count as served in it) and returns the rows
  served so far; stopping when no period is open changes nothing and returns the last period's count.
- A query admitted in one period that ends after the next `open` counts in neither: the new period starts at
  started = served = 0 and only its own queries move its counters.
- `status()` is {"serving": whether a period is open, "quota": its rows (None before the first `open`),
  "started": rows admitted and not refunded, "served": rows answered}; after `stop` it keeps the stopped period's
  figures (with "serving" False) until the next `open`.

Example:
    >>> period = ServingPeriod("digits", batch_size=None)
    >>> period.open(3)
    >>> with period.admit(2):
    ...     pass                      # run the model on a batch of 2 rows
    >>> period.status()
    {'serving': True, 'quota': 3, 'started': 2, 'served': 2}
    >>> with period.admit(2):
    ...     pass
    Traceback (most recent call last):
    ...
    tfppml.errors.QuotaExceeded: 'digits': a query of 2 rows exceeds the 1 row(s) left of this serving period ...
    >>> period.stop()
    2
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from tfppml.errors import PolicyDenied, ProtocolError, QuotaExceeded

__all__ = ["ServingPeriod"]


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r:.100}")
    return value


class ServingPeriod:
    """The quota of input rows a model owner grants in one serving period (see the module docstring).

    Args:
        name: the program or model name, used in errors.
        batch_size: the batch size the model declares (every query must have exactly this many rows); None: any.
        max_rows: the most rows one query may have (a per-query bound on work and memory); None: no bound.

    Raises:
        TypeError: if `name` is not a string.
        ValueError: if `batch_size` or `max_rows` is not None or an int >= 1, or `batch_size > max_rows`.

    Example:
        >>> period = ServingPeriod("mlp", batch_size=1)
        >>> period.open(10)
        >>> with period.admit(1):
        ...     pass
        >>> period.stop()
        1
    """

    def __init__(self, name: str, batch_size: int | None = None, max_rows: int | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"ServingPeriod: argument `name` must be a str, got {type(name).__name__}")
        if batch_size is not None:
            _positive_int(batch_size, "ServingPeriod: argument `batch_size`")
        if max_rows is not None:
            _positive_int(max_rows, "ServingPeriod: argument `max_rows`")
        if batch_size is not None and max_rows is not None and batch_size > max_rows:
            raise ValueError(
                f"ServingPeriod: argument `batch_size` ({batch_size}) must not exceed `max_rows` ({max_rows})"
            )
        self.name = name
        self.batch_size = batch_size
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every open: queries of an earlier period never touch a later one
        self._open = False  # between open() and stop()
        self._quota: int | None = None
        self._started = 0
        self._served = 0

    # Callers hold self._lock.
    def _serving(self) -> bool:
        return self._open and self._quota is not None and self._served < self._quota

    def open(self, num_requests: int) -> None:
        """Starts a serving period of `num_requests` input rows.

        Args:
            num_requests: the rows (inputs, not calls) clients may send in this period, an int >= 1.

        Raises:
            ValueError: if `num_requests` is not an int >= 1 (a bool is refused).
            ProtocolError: if a period is open (stop it first; a period whose quota is all served has ended).
        """
        _positive_int(num_requests, f"serving {self.name!r}: argument `num_requests`")
        with self._lock:
            if self._serving():
                raise ProtocolError(
                    f"{self.name!r} is already serving (answered {self._served} of {self._quota} rows, "
                    f"{self._started - self._served} in flight); stop the serving period before opening another"
                )
            self._generation += 1
            self._open = True
            self._quota, self._started, self._served = num_requests, 0, 0

    def stop(self) -> int:
        """Ends the serving period; queries already admitted finish. Returns the rows served so far in it."""
        with self._lock:
            self._open = False
            return self._served

    def status(self) -> dict[str, Any]:
        """{"serving": bool, "quota": rows or None, "started": rows admitted, "served": rows answered}."""
        with self._lock:
            return {
                "serving": self._serving(),
                "quota": self._quota,
                "started": self._started,
                "served": self._served,
            }

    def _refusal(self, rows: int) -> QuotaExceeded | None:
        if not self._serving():
            if self._quota is None:
                why = "no serving period was opened"
            elif self._open:
                why = f"it answered {self._served} of {self._quota} rows"
            else:
                why = f"its serving period was stopped; it answered {self._served} of {self._quota} rows"
            return QuotaExceeded(f"{self.name!r} is not serving ({why})")
        quota = self._quota if self._quota is not None else 0  # _serving() implies an int
        left = quota - self._started
        if rows > left:
            return QuotaExceeded(
                f"{self.name!r}: a query of {rows} rows exceeds the {left} row(s) left of this serving period "
                f"(quota {quota} rows: {self._served} answered, {self._started - self._served} in flight)"
            )
        return None

    def check(self, rows: int) -> None:
        """Raises what `admit(rows)` would raise now, reserving nothing (a server checks a query this way before
        it spends a round agreeing on it with its peers, and admits it after)."""
        self._check_rows(rows)
        with self._lock:
            refusal = self._refusal(rows)
        if refusal is not None:
            raise refusal

    def _check_rows(self, rows: int) -> None:
        _positive_int(rows, f"serving {self.name!r}: the query's rows")
        if self.batch_size is not None and rows != self.batch_size:
            raise PolicyDenied(
                f"{self.name!r} declares batch size {self.batch_size}: a query of {rows} rows is refused (send "
                f"exactly {self.batch_size} row(s) per query)"
            )
        if self.max_rows is not None and rows > self.max_rows:
            raise PolicyDenied(f"{self.name!r} accepts at most {self.max_rows} rows per query, got {rows}")

    @contextlib.contextmanager
    def admit(self, rows: int, *, spend_on_failure: bool = False) -> Iterator[None]:
        """Admits one query of `rows` input rows for the duration of the `with` body.

        Args:
            rows: the query's batch size, an int >= 1.
            spend_on_failure: if True, a body that raises still spends the rows (they count as served): for
                services where the caller can make an admitted query fail (an MPC client cancelling its own
                query), which would otherwise let it hold the quota's last rows at no cost, again and again.

        Raises:
            ValueError: if `rows` is not an int >= 1 (a bool is refused).
            PolicyDenied: `rows` differs from the declared `batch_size`, or exceeds `max_rows`.
            QuotaExceeded: no period is open, or fewer than `rows` rows are left of its quota.

        Example:
            >>> period = ServingPeriod("cnn", max_rows=64)
            >>> period.open(100)
            >>> with period.admit(64):
            ...     pass
        """
        self._check_rows(rows)
        with self._lock:
            refusal = self._refusal(rows)
            if refusal is not None:
                raise refusal
            self._started += rows
            generation = self._generation
        try:
            yield
        except BaseException:
            with self._lock:
                if generation == self._generation:
                    if spend_on_failure:
                        self._served += rows
                    else:
                        self._started -= rows  # refund: a failed query spends nothing
            raise
        with self._lock:
            if generation == self._generation:
                self._served += rows
