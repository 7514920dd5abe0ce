"""The privacy ledger: every DP release a worker made, per data set and identity, in an authenticated store.

Budgets are per **data set**, shared by every identity (so minting certificates under a ``default`` rule, or
asking as two identities, does not multiply epsilon), and each identity also has its own cap, its share (see
`tfppml.remote.policy`). A release is charged to the budget of every data set it reads and to its identity's
cap, and happens only if all of them stay within budget with it, composed with dp-accounting's RDP accountant.
The charge is written (fsync'd) before the release is computed.

The ledger is an `tfppml.remote.audit.AuditLog` of its own (``<audit log>.ledger``) under keys derived for it
from the worker's audit key: entries ``{"who", "datasets", "charged", "event"}`` (``charged``: the budgets it counts against) with ``event`` either
``{"type": "gaussian", "noise_multiplier": z}`` (one Gaussian release) or ``{"type": "dp_sgd", "n", "batch_size",
"noise_multiplier", "epochs"}`` (a DP-SGD run on Poisson-sampled batches).

It fails closed: when the ledger does not verify, or is missing although the audit log shows DP releases, the
worker refuses every DP release (naming the reason) instead of starting again from zero; other requests go on.

Example:
    >>> import tempfile, pathlib
    >>> from tfppml.remote.audit import generate_key
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> ledger = PrivacyLedger(root / "logs" / "audit.log.ledger", generate_key(root / "keys" / "k"))
    >>> budgets = [Budget(("dataset", "patients"), 1.0, 1e-5, "datasets.patients.dp")]
    >>> round(ledger.charge("analyst", ["patients"], gaussian(8.0), budgets, "a release")["dataset:patients"], 2)
    0.48
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tfppml.errors import PolicyDenied
from tfppml.remote.audit import AuditKey, AuditLog, AuditLogError

__all__ = ["Budget", "PrivacyLedger", "cost", "dp_sgd", "gaussian", "to_dp_event"]


@dataclass(frozen=True)
class Budget:
    """One budget a release is charged to: `key` ("dataset", name) or ("identity", who), its (epsilon, delta),
    and the policy rule it comes from (named in denials)."""

    key: tuple[str, str]
    epsilon: float
    delta: float
    rule: str

    @property
    def name(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"


def gaussian(noise_multiplier: float) -> dict[str, Any]:
    """The event of one Gaussian release with noise stddev / L2 sensitivity = `noise_multiplier`."""
    return {"type": "gaussian", "noise_multiplier": float(noise_multiplier)}


def dp_sgd(*, n: int, batch_size: int, noise_multiplier: float, epochs: int) -> dict[str, Any]:
    """The event of a DP-SGD run: Poisson sampling at rate batch_size / n, ceil(epochs * n / batch_size) steps."""
    return {"type": "dp_sgd", "n": int(n), "batch_size": int(batch_size),
            "noise_multiplier": float(noise_multiplier), "epochs": int(epochs)}  # fmt: skip


def to_dp_event(event: dict[str, Any]) -> Any:
    """The dp-accounting event of a ledger event."""
    import dp_accounting

    from tfppml.dp.accounting import dp_sgd_event

    if event.get("type") == "gaussian":
        return dp_accounting.GaussianDpEvent(float(event["noise_multiplier"]))
    if event.get("type") == "dp_sgd":
        return dp_sgd_event(event["n"], event["batch_size"], event["noise_multiplier"], event["epochs"],
                            poisson=True)  # fmt: skip
    raise AuditLogError(f"unknown ledger event {event!r:.80}")


def _rdp(event: dict[str, Any]) -> np.ndarray:
    """The RDP curve of one ledger event at the accountant's orders (`tfppml.dp.accounting`'s, each value a
    proven upper bound: a huge noise multiplier rounds dp-accounting's subsampled figure below zero).

    Why not keep one accountant per budget and compose into it: checking a budget needs "spent + this event"
    without committing it, and copying an accountant copies its whole event history, so every charge would cost
    time in the number of charges so far (43 ms after 100 releases, and a hostile identity's stream of small
    releases would hold the ledger lock ever longer). RDP composes by adding curves, so the ledger keeps one
    running curve per budget (tests/remote/test_ledger.py checks the sum against a composing accountant).
    """
    from tfppml.dp.accounting import _RDP_ORDERS, _rdp_curve

    to_dp_event(event)  # an unknown or malformed event is refused the same way
    if event["type"] == "gaussian":
        # One Gaussian release: RDP alpha / (2 z^2) at every order.
        sigma = float(event["noise_multiplier"])
        return np.asarray(_RDP_ORDERS, dtype=np.float64) / (2.0 * sigma * sigma)
    return np.asarray(_rdp_curve(int(event["n"]), int(event["batch_size"]), float(event["noise_multiplier"]),
                                 float(event["epochs"]), True), dtype=np.float64)  # fmt: skip


def _epsilon_of(curve: np.ndarray | None, delta: float) -> float:
    if curve is None:
        return 0.0
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    from tfppml.dp.accounting import _RDP_ORDERS

    return float(compute_epsilon(_RDP_ORDERS, curve, delta)[0])


def cost(event: dict[str, Any], delta: float) -> float:
    """Epsilon at `delta` of one ledger event on its own."""
    return _epsilon_of(_rdp(event), delta)


class PrivacyLedger:
    """The worker's privacy ledger (see the module docstring). Thread-safe.

    Args:
      path: The ledger file.
      key: The worker's audit key.
      expected: True if the audit log shows DP releases: a missing ledger is then a deleted one.
    """

    def __init__(self, path: str | Path, key: AuditKey, *, expected: bool = False) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._curves: dict[tuple[str, str], np.ndarray] = {}  # the RDP spent per budget key
        self._log: AuditLog | None = None
        self.broken: str | None = None
        if expected and not self._path.exists():
            self.broken = f"the privacy ledger {self._path} is missing although the audit log shows DP releases"
            return
        try:
            self._log = AuditLog(self._path, key, purpose="ledger")
            for entry in self._log.entries():
                self._add([tuple(key) for key in entry["charged"]], _rdp(entry["event"]))
        except (AuditLogError, KeyError, TypeError, ValueError) as err:
            self.broken = f"the privacy ledger {self._path} does not verify: {err}"
            if self._log is not None:
                self._log.close()
                self._log = None

    def _add(self, keys: Sequence[tuple[str, str]], curve: np.ndarray) -> None:
        for key in keys:
            self._curves[key] = self._curves[key] + curve if key in self._curves else curve.copy()

    def spent(self, key: tuple[str, str], delta: float) -> float:
        """Epsilon spent so far on `key` (("dataset", name) or ("identity", who)) at `delta`."""
        with self._lock:
            return _epsilon_of(self._curves.get(key), delta)

    def charge(
        self, who: str, datasets: Sequence[str], event: dict[str, Any], budgets: Sequence[Budget], what: str
    ) -> dict[str, float]:
        """Records `event` if every budget holds with it; returns {budget name: epsilon spent with it}.

        Raises:
          PolicyDenied: the ledger is broken (fail closed), or a budget would be exceeded (its rule named);
            nothing is recorded then.
        """
        curve = _rdp(event)
        with self._lock:
            if self.broken is not None or self._log is None:
                raise PolicyDenied(
                    f"policy rule 'ledger': DP releases are refused until the data owner restores the ledger: "
                    f"{self.broken or 'it is closed'}"
                )
            totals = {}
            for budget in budgets:
                spent_curve = self._curves.get(budget.key)
                total = _epsilon_of(curve if spent_curve is None else spent_curve + curve, budget.delta)
                if total > budget.epsilon + 1e-9:
                    spent = _epsilon_of(spent_curve, budget.delta)
                    raise PolicyDenied(
                        f"policy rule '{budget.rule}.epsilon_budget': {what} would bring {budget.key[0]} "
                        f"{budget.key[1]!r} to epsilon={total:.3g} > budget {budget.epsilon:g} (spent so far: "
                        f"{spent:.3g}, delta={budget.delta:g})"
                    )
                totals[budget.name] = total
            # Charged to the budgets it was checked against, and to every data set it read (even one whose
            # budget was not asked for), so that a later, stricter policy still sees it.
            keys = sorted({*(b.key for b in budgets), *(("dataset", d) for d in datasets)})
            self._log.append(who=who, datasets=sorted(datasets), charged=[list(k) for k in keys], event=event)
            self._add(keys, curve)
            return totals

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
