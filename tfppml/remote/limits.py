"""Resource limits of a remote worker, per identity: what a caller may hold, ask for at once, and spend per request.

Every caller may be hostile, and every limit is checked *before* the work it bounds starts: a result's size from
the operands' shapes, a model's parameters and activations from its configuration (`tfppml.remote.sizing`),
a fit's arithmetic from the model, the rows and the epochs.  The limits live in the policy file (``limits:`` at
the top level for every identity, and in an identity's rule for that identity; fields not given keep the worker's
defaults)::

    limits:                          # every identity
      max_held_bytes: 1073741824     # the sum of the identity's live objects (tensors and models)
      max_concurrent: 2              # its requests being served at once (more are refused, not queued)
      max_seconds: 60                # one request's model loop (fit/predict/evaluate), checked between batches
      max_flops: 1.0e+11             # one request's estimated arithmetic, checked before it starts
    identities:
      analyst: {datasets: [patients], limits: {max_epochs: 50}}

==========================  =============================================================================
max_object_bytes            largest result one request may create (computed from shapes before allocating)
max_held_bytes              sum of an identity's live objects (a data set pointer holds nothing new)
max_objects                 live objects per identity
max_concurrent              requests of one identity in progress at once
max_seconds                 wall-clock seconds of one request's Keras loop (the loop stops and the request
                            fails with nothing stored; a DP fit's epsilon stays spent, it was charged first)
max_flops                   estimated floating-point operations of one request (matmul, a fit's epochs)
max_epochs                  epochs of one fit
max_params                  parameters of one model (from its configuration, before it is built)
max_activation_bytes        estimated activations of one training or inference batch (from the configuration)
==========================  =============================================================================

The estimates (flops, activations) are heuristics from the configuration and are named as such in refusals; the
time limit is the backstop that does not depend on them.  A refusal names the limit (``<rule>.limits.<field>``)
and the figures of the request, never anything of the data.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Mapping

from tfppml.errors import QuotaExceeded

__all__ = ["DEFAULT_LIMITS", "Deadline", "Limits", "Usage", "parse_limits"]


@dataclass(frozen=True)
class Limits:
    """The resource limits of one identity (see the module docstring)."""

    max_object_bytes: int = 512 * 1024 * 1024
    max_held_bytes: int = 2 * 1024 * 1024 * 1024
    max_objects: int = 10000
    max_concurrent: int = 2
    max_seconds: float = 300.0
    max_flops: float = 2.0e12
    max_epochs: int = 1000
    max_params: int = 20_000_000
    max_activation_bytes: int = 2 * 1024 * 1024 * 1024

    def merged(self, overrides: Mapping[str, Any]) -> Limits:
        """These limits with `overrides` (already checked by `parse_limits`) applied."""
        return replace(self, **dict(overrides))


DEFAULT_LIMITS = Limits()
_FLOAT_FIELDS = frozenset({"max_seconds", "max_flops"})
FIELDS = tuple(f.name for f in fields(Limits))


def parse_limits(raw: Any, where: str) -> dict[str, Any]:
    """The checked overrides of a ``limits:`` mapping of a policy file.

    Raises:
      ValueError: not a mapping, an unknown field, or a value that is not a positive number (named with its path).
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping of limits drawn from {list(FIELDS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown limit(s) {unknown}; known limits are {list(FIELDS)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        floating = key in _FLOAT_FIELDS
        kinds = (int, float) if floating else (int,)
        if isinstance(value, bool) or not isinstance(value, kinds) or not (0 < value < math.inf):
            what = "a positive number" if floating else "a positive int"
            raise ValueError(f"{where}.{key} must be {what}, got {value!r}")
        out[key] = float(value) if floating else int(value)
    return out


class Usage:
    """What each identity holds and has in progress on a worker. Thread-safe.

    Bytes are *reserved* before an operation allocates its result (the size computed from shapes), so that two
    concurrent requests of one identity cannot both pass the check and then both allocate.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._reserved: Counter[str] = Counter()
        self._active: Counter[str] = Counter()

    def held(self, who: str) -> int:
        """Bytes held by `who`'s live objects."""
        with self._lock:
            return self._held[who]

    @contextlib.contextmanager
    def request(self, who: str, limits: Limits, rule: str) -> Iterator[None]:
        """One request of `who` in progress for the duration of the block.

        Raises:
          QuotaExceeded: `who` already has `limits.max_concurrent` requests in progress.
        """
        with self._lock:
            if self._active[who] >= limits.max_concurrent:
                raise QuotaExceeded(
                    f"policy rule '{rule}.limits.max_concurrent': identity {who!r} already has "
                    f"{self._active[who]} request(s) in progress, the most it may (retry when one has finished)"
                )
            self._active[who] += 1
        try:
            yield
        finally:
            with self._lock:
                self._active[who] -= 1
                if self._active[who] <= 0:
                    del self._active[who]

    @contextlib.contextmanager
    def reserve(self, who: str, nbytes: int, limits: Limits, rule: str, what: str = "the result") -> Iterator[None]:
        """Reserves `nbytes` for `who` while the block computes a result (released at its end, when the stored
        object's bytes are counted by `add`).

        Raises:
          ValueError: `nbytes` is more than one request may create (``max_object_bytes``).
          QuotaExceeded: `who`'s held and reserved bytes plus `nbytes` pass ``max_held_bytes``.
        """
        if nbytes > limits.max_object_bytes:
            raise ValueError(
                f"{what} would be {nbytes} bytes, more than this worker's max_object_bytes="
                f"{limits.max_object_bytes} (policy rule '{rule}.limits.max_object_bytes')"
            )
        with self._lock:
            total = self._held[who] + self._reserved[who]
            if total + nbytes > limits.max_held_bytes:
                raise QuotaExceeded(
                    f"policy rule '{rule}.limits.max_held_bytes': identity {who!r} holds {total} bytes on this "
                    f"worker and {what} would add {nbytes}, past its {limits.max_held_bytes} (delete some objects)"
                )
            self._reserved[who] += nbytes
        try:
            yield
        finally:
            with self._lock:
                self._reserved[who] -= nbytes
                if self._reserved[who] <= 0:
                    del self._reserved[who]

    def add(self, who: str, nbytes: int) -> None:
        """Counts a stored object's bytes."""
        with self._lock:
            self._held[who] += nbytes

    def remove(self, who: str, nbytes: int) -> None:
        """Uncounts a freed object's bytes."""
        with self._lock:
            self._held[who] -= nbytes
            if self._held[who] <= 0:
                del self._held[who]

    def clear(self) -> None:
        with self._lock:
            self._held.clear()


def check_flops(flops: float, limits: Limits, rule: str, what: str) -> None:
    """Refuses a request whose estimated arithmetic passes ``max_flops`` (before it starts).

    Raises:
      QuotaExceeded: naming the estimate and the limit.
    """
    if flops > limits.max_flops:
        raise QuotaExceeded(
            f"policy rule '{rule}.limits.max_flops': {what} is estimated at {flops:.3g} floating-point operations, "
            f"more than the {limits.max_flops:.3g} one request may use"
        )


class Deadline:
    """A Keras callback that fails the loop once `seconds` have passed (checked after every batch).

    The loop is stopped by an exception, not by ``stop_training``: a fit cut short must not come back as if it had
    run the epochs that were asked for.
    """

    def __new__(cls, seconds: float, rule: str, what: str) -> Any:
        import tensorflow as tf

        class _Deadline(tf.keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.end = time.monotonic() + seconds

            def _check(self, *args: Any) -> None:
                if time.monotonic() > self.end:
                    raise QuotaExceeded(
                        f"policy rule '{rule}.limits.max_seconds': {what} ran past the {seconds:g} s one request "
                        "may take and was stopped (nothing was stored)"
                    )

            on_train_batch_end = on_predict_batch_end = on_test_batch_end = _check

        return _Deadline()
