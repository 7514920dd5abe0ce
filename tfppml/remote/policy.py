"""A data owner's policy: who may compute on which data set, and which results may leave the worker.

A policy is a YAML file::

    datasets:                         # DP budgets per data set, shared by every identity
      patients: {dp: {epsilon_budget: 3.0, delta: 1.0e-5}}
    identities:
      analyst:                        # the common name of the caller's TLS certificate
        datasets: [patients]          # data sets this identity may compute on
        raw_read: []                  # data sets whose row-level values may be returned (usually none)
        dp: {epsilon_budget: 1.0, delta: 1.0e-5}   # DP releases (noised sums, counts, histograms..., DP-SGD models)
        unsafe_aggregates: {min_rows: 10}   # opt-in, no formal guarantee: exact linear sums/means over >= 10 rows
        unsafe_weights: true          # opt-in, no formal guarantee: models trained WITHOUT DP (a raw read, in effect)
        rate_limit: {requests: 100, per_seconds: 1.0}
        limits: {max_held_bytes: 1073741824, max_epochs: 50}   # resource limits (see tfppml.remote.limits)
    limits: {max_concurrent: 2}       # resource limits of every identity (an identity's own override them)
    default:                          # optional: rules for identities not listed (same fields)
      datasets: []

Every field of a rule is optional and absent means "no": an identity with an empty rule may only compute on,
and read back, what it sent itself. An identity that is neither listed nor covered by ``default`` is refused
everything. Unknown fields are refused when the file is loaded, so a typo never leaves something open.

What may be returned is decided from each object's `Label` (its provenance), which the worker derives from the
operations and the shapes alone, never from the values: a denial therefore depends on nothing in the data, and
its message names the rule and the object, nothing else.

The two ``unsafe_`` rules are named for what they are.  ``unsafe_weights`` releases models trained on the data
without DP, and such weights can be the data: one full-batch SGD step with a one-hot `x` and the table as `y`
gives weights that are a fixed multiple of the table, row for row (table / 4 in the attack that prompted the
rename; their predictions and losses leak the same way).  ``unsafe_aggregates`` releases exact sums and means, and a handful of them can rebuild rows (below).

Limits, stated plainly: "aggregates over at least k rows" is the owner's choice of a disclosure rule, not a
formal privacy guarantee (two aggregates over sets differing in one row can reveal that row; the worker refuses
the obvious ways to build such sets, see `tfppml.remote.service`); only the ``dp`` rule gives a formal
guarantee. An aggregate must be a *linear* function of the data set's columns (sums and means of the columns
after adding, subtracting, scaling or matrix-multiplying them with the caller's row-constant tensors): a sum of a
non-linear function of the data is a data-dependent selector (``sum(1 / (1 + exp(s * (age - t))))`` counts the
rows below ``t``; with a bisection on ``t`` and a masked sum it reads single values exactly), so it stays
row-level data (`Label.nonlinear`). Model outputs and losses on the data set count as non-linear.

DP releases are charged to two kinds of budget, both of which must hold: each data set's (``datasets.<name>.dp``,
shared by everyone: asking as two identities does not double it, and a data set without one has no DP
release at all) and the identity's own cap (``dp`` of its rule, its share; identities under ``default``
share one cap). The charges live in the worker's authenticated privacy ledger (`tfppml.remote.ledger`).
DP accounting treats each data set row as one individual (add-or-remove-one adjacency), composes the releases
with dp-accounting's RDP accountant (via `tfppml.dp.accounting`) and treats a data set's row count as public.

Example:
    >>> policy = Policy.from_dict({"identities": {"analyst": {"datasets": ["patients"]}}})
    >>> policy.rules_for("analyst").datasets
    frozenset({'patients'})
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from tfppml.errors import PolicyDenied
from tfppml.remote.limits import Limits, parse_limits

if TYPE_CHECKING:  # pragma: no cover
    from tfppml.remote.ledger import Budget

__all__ = ["DpRule", "IdentityRules", "Label", "Policy", "RateLimit", "calibrate_gaussian"]

_RULE_FIELDS = ("datasets", "raw_read", "unsafe_aggregates", "dp", "unsafe_weights", "rate_limit", "limits")
#: Fields renamed by issue #18, refused with the new name and the reason (never read under the old name).
_RENAMED = {
    "aggregates": ("unsafe_aggregates", "k-row aggregates are not a formal guarantee: a few of them can rebuild rows"),
    "weights": ("unsafe_weights", "weights trained without DP can memorise the table (one SGD step on a one-hot x "
                "returns y / 4); train with a tfppml.dp optimizer under the dp rule instead"),
}


_NONLINEAR = (
    ", derived from them by a non-linear function (a sum of such values is not an aggregate: it can select rows)"
)


@dataclass(frozen=True)
class Label:
    """Provenance of a remote object: what of the data sets it could reveal.

    Attributes:
      raw: Data sets whose individual rows (row-level values) flow into the object.
      rows: For a raw object whose leading axis is still the data set's row axis (one row per individual,
        untouched by client-chosen row selections): the row count. None when not certified.
      aggregate: The smallest number of rows aggregated into it (a sum/mean over the row axis), or None.
      aggregate_of: Data sets aggregated into it.
      dp: Data sets that reach it only through DP-noised releases.
      weights: Data sets that models behind it were trained on.
      nonlinear: Its row-level values went through a non-linear function of the data (a power, exp, abs, a
        product of two row-level values, a per-row max, a model's prediction...). A sum over the rows of such
        an object is not an aggregate: ``sum(exp(-200 * (age - a)**2))`` picks out the rows with age ``a`` and
        ``sum(sigmoid(60 * (age - t)))`` counts the rows below ``t``, so the rows stay certified for a DP release
        (clipping bounds each row's contribution whatever the function) but never become a k-row aggregate.

    An object with every field empty is public: the caller sent it (or derived it from what it sent).
    """

    raw: frozenset[str] = frozenset()
    rows: int | None = None
    aggregate: int | None = None
    aggregate_of: frozenset[str] = frozenset()
    dp: frozenset[str] = frozenset()
    weights: frozenset[str] = frozenset()
    nonlinear: bool = False

    @property
    def public(self) -> bool:
        """True if nothing of any data set is in the object."""
        return not (self.raw or self.aggregate_of or self.dp or self.weights)

    @property
    def datasets(self) -> frozenset[str]:
        """Every data set that reaches the object in any way."""
        return self.raw | self.aggregate_of | self.dp | self.weights

    def join(self, other: Label) -> Label:
        """The label of a value computed from both (row certification is decided by the caller)."""
        aggregates = [k for k in (self.aggregate, other.aggregate) if k is not None]
        return Label(
            raw=self.raw | other.raw,
            rows=None,
            aggregate=min(aggregates) if aggregates else None,
            aggregate_of=self.aggregate_of | other.aggregate_of,
            dp=self.dp | other.dp,
            weights=self.weights | other.weights,
            nonlinear=self.nonlinear or other.nonlinear,
        )

    def transformed(self) -> Label:
        """This label after a non-linear function of its row-level values (see `nonlinear`)."""
        return replace(self, nonlinear=True) if self.raw else self

    def with_rows(self, rows: int | None) -> Label:
        """This label with `rows` set (only meaningful for raw objects)."""
        return replace(self, rows=rows if self.raw else None)

    def aggregated(self) -> Label:
        """The label of a sum/mean over the row axis of this object.

        A raw object with certified rows that is a linear function of the data set's columns becomes an
        aggregate over its row count; an uncertified or non-linearly derived raw object stays raw (its rows
        cannot be trusted to be individuals, or its sum can select rows).
        """
        if not self.raw:
            return self
        if self.rows is None or self.nonlinear:
            return replace(self, rows=None)
        aggregate = self.rows if self.aggregate is None else min(self.aggregate, self.rows)
        return replace(
            self, raw=frozenset(), rows=None, aggregate=aggregate, aggregate_of=self.aggregate_of | self.raw
        )

    def noised(self) -> Label:
        """The label of a DP-noised release computed from this object."""
        return Label(dp=self.datasets)

    def trained(self) -> Label:
        """The label of a model trained on this object (empty if the data were public)."""
        return Label(weights=self.datasets)

    def to_json(self) -> dict[str, Any]:
        """A JSON form for replies and audit entries (names and counts only)."""
        out: dict[str, Any] = {}
        for key in ("raw", "aggregate_of", "dp", "weights"):
            if getattr(self, key):
                out[key] = sorted(getattr(self, key))
        if self.aggregate is not None:
            out["aggregate_rows"] = self.aggregate
        if self.nonlinear and self.raw:
            out["nonlinear"] = True
        return out


@dataclass(frozen=True)
class DpRule:
    """An (epsilon, delta) budget for DP releases: an identity's cap, or a data set's budget."""

    epsilon_budget: float
    delta: float


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` requests in any window of `per_seconds` seconds."""

    requests: int
    per_seconds: float


@dataclass(frozen=True)
class IdentityRules:
    """The rules of one identity (see the module docstring). `name` is the YAML path used in denials."""

    name: str
    datasets: frozenset[str] = frozenset()
    raw_read: frozenset[str] = frozenset()
    min_rows: int | None = None
    dp: DpRule | None = None
    weights: bool = False
    rate_limit: RateLimit | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)


class Policy:
    """A loaded policy plus its running state (rate-limit windows, DP ledgers). Thread-safe.

    Args:
      identities: Identity name -> rules.
      default: Rules for identities not listed, or None (refuse them).
      source: Where the policy came from (for messages).
      dataset_dp: Data set name -> its DP budget, shared by every identity.

    Example:
      >>> policy = Policy.load("policy.yaml")                       # doctest: +SKIP
      >>> policy.check_release("analyst", Label(raw=frozenset({"patients"})), "o1")  # doctest: +SKIP
      Traceback (most recent call last):
      PolicyDenied: ...
    """

    def __init__(
        self,
        identities: Mapping[str, IdentityRules],
        default: IdentityRules | None = None,
        source: str = "policy",
        dataset_dp: Mapping[str, DpRule] | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        self._identities = dict(identities)
        self._default = default
        self._source = source
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._dataset_dp: dict[str, DpRule] = dict(dataset_dp or {})
        self._limits: dict[str, Any] = dict(limits or {})

    # -- construction

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Reads a policy YAML file.

        Args:
          path: The file.

        Returns:
          The policy.

        Raises:
          ValueError: Unreadable, not YAML, or a field is unknown or has a bad value (named with its path).
        """
        import yaml

        file = Path(path)
        try:
            text = file.read_text()
        except OSError as err:
            raise ValueError(f"cannot read policy file {file}: {err.strerror}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"policy file {file} is not valid YAML: {err}") from None
        return cls.from_dict(raw if raw is not None else {}, source=str(file))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "policy") -> Policy:
        """Builds a policy from its parsed YAML/JSON form (see the module docstring).

        Raises:
          ValueError: A field is unknown or has a bad value; the message names the field's path.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: a policy must be a mapping, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {"identities", "default", "datasets", "limits"})
        if unknown:
            raise ValueError(
                f"{source}: unknown top-level field(s) {unknown}; known: ['datasets', 'identities', 'default', "
                "'limits']"
            )
        limits = parse_limits(raw.get("limits"), f"{source}: limits")
        datasets_raw = raw.get("datasets") or {}
        if not isinstance(datasets_raw, dict):
            raise ValueError(f"{source}: 'datasets' must map data set names to their rules")
        dataset_dp = {}
        for name, rules in datasets_raw.items():
            where = f"{source}: datasets.{name}"
            rules = _mapping(rules, where, ("dp",))
            dataset_dp[str(name)] = _dp_rule(rules["dp"], f"{where}.dp")
        identities_raw = raw.get("identities") or {}
        if not isinstance(identities_raw, dict):
            raise ValueError(f"{source}: 'identities' must map identity names to rules")
        identities = {
            str(name): _parse_rules(rules, f"identities.{name}", source)
            for name, rules in identities_raw.items()
        }
        default = None if raw.get("default") is None else _parse_rules(raw["default"], "default", source)
        return cls(identities, default, source, dataset_dp, limits)

    @classmethod
    def deny_all(cls) -> Policy:
        """The policy of a worker started without one: every identity may compute on what it sent itself and
        read that back; no data set may be used."""
        return cls({}, IdentityRules(name="default"), source="built-in default policy")

    # -- checks

    @property
    def source(self) -> str:
        """Where the policy came from."""
        return self._source

    def rules_for(self, who: str) -> IdentityRules:
        """The rules that apply to `who`.

        Raises:
          PolicyDenied: `who` is not listed and there is no ``default``.
        """
        rules = self._identities.get(who, self._default)
        if rules is None:
            raise PolicyDenied(f"policy rule 'identities': identity {who!r} has no rules on this worker")
        return rules

    def limits_for(self, who: str, base: Limits) -> Limits:
        """The resource limits of `who`: `base` (the worker's), then the policy's ``limits``, then its rule's.

        Raises:
          PolicyDenied: `who` has no rules.
        """
        return base.merged(self._limits).merged(self.rules_for(who).limits)

    def check_rate(self, who: str, now: float | None = None) -> None:
        """Counts one request of `who` against its rate limit.

        Raises:
          PolicyDenied: Over the limit (rule '<identity>.rate_limit').
        """
        rules = self.rules_for(who)
        limit = rules.rate_limit
        if limit is None:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._windows.setdefault(who, deque())
            while window and window[0] <= now - limit.per_seconds:
                window.popleft()
            if len(window) >= limit.requests:
                raise PolicyDenied(
                    f"policy rule '{rules.name}.rate_limit': at most {limit.requests} requests per "
                    f"{limit.per_seconds:g} s for identity {who!r}; retry later"
                )
            window.append(now)

    def check_dataset(self, who: str, dataset: str) -> None:
        """Checks that `who` may compute on `dataset`.

        Raises:
          PolicyDenied: Not allowed (rule '<identity>.datasets'); the message does not say whether the data set
            exists.
        """
        rules = self.rules_for(who)
        if dataset not in rules.datasets:
            raise PolicyDenied(
                f"policy rule '{rules.name}.datasets': identity {who!r} may not use data set {dataset!r}"
            )

    def check_release(self, who: str, label: Label, object_id: str) -> str:
        """Checks that an object with `label` may be returned to `who`.

        Args:
          who: The caller.
          label: The object's provenance.
          object_id: Its id (named in the denial).

        Returns:
          The name of the rule that allows it ("public" for the caller's own data).

        Raises:
          PolicyDenied: Naming the rule that refuses it and the object id, nothing about its values.
        """
        rules = self.rules_for(who)
        if label.public:
            return "public"
        allowed: list[str] = []
        if label.raw:
            refused = sorted(label.raw - rules.raw_read)
            if refused:
                raise PolicyDenied(
                    f"policy rule '{rules.name}.raw_read' denies returning object {object_id}: it holds row-level "
                    f"values of data set(s) {refused}{_NONLINEAR if label.nonlinear else ''} (return an aggregate "
                    "or a DP-noised result instead)"
                )
            allowed.append("raw_read")
        if label.aggregate is not None:
            if rules.min_rows is None:
                raise PolicyDenied(
                    f"policy rule '{rules.name}.unsafe_aggregates' denies returning object {object_id}: identity "
                    f"{who!r} may not receive non-DP aggregates of data sets (use a DP release)"
                )
            if label.aggregate < rules.min_rows:
                raise PolicyDenied(
                    f"policy rule '{rules.name}.unsafe_aggregates.min_rows' denies returning object {object_id}: it "
                    f"aggregates fewer than {rules.min_rows} rows"
                )
            allowed.append("unsafe_aggregates")
        if label.weights:
            if not rules.weights:
                raise PolicyDenied(
                    f"policy rule '{rules.name}.unsafe_weights' denies returning object {object_id}: it depends on a "
                    f"model trained without DP on data set(s) {sorted(label.weights)} (train with a tfppml.dp "
                    "optimizer instead)"
                )
            allowed.append("unsafe_weights")
        if label.dp:
            if rules.dp is None:
                raise PolicyDenied(
                    f"policy rule '{rules.name}.dp' denies returning object {object_id}: identity {who!r} may not "
                    "receive DP-noised results"
                )
            allowed.append("dp")
        return "+".join(allowed)

    # -- differential privacy

    def dp_rule(self, who: str) -> DpRule:
        """The DP budget of `who`.

        Raises:
          PolicyDenied: `who` has no ``dp`` rule.
        """
        rules = self.rules_for(who)
        if rules.dp is None:
            raise PolicyDenied(
                f"policy rule '{rules.name}.dp': identity {who!r} may not request DP-noised results"
            )
        return rules.dp

    def dp_budgets(self, who: str, datasets: Iterable[str]) -> list[Budget]:
        """The budgets a DP release by `who` reading `datasets` is charged to: the identity's cap (shared by
        every identity under ``default``) and each data set's budget (shared by everyone).

        Raises:
          PolicyDenied: `who` has no ``dp`` rule, or a data set has no DP budget (``datasets.<name>.dp``).
        """
        from tfppml.remote.ledger import Budget

        rules = self.rules_for(who)
        rule = self.dp_rule(who)
        budgets = [Budget(("identity", rules.name), rule.epsilon_budget, rule.delta, f"{rules.name}.dp")]
        for name in sorted(datasets):
            budget = self._dataset_dp.get(name)
            if budget is None:
                raise PolicyDenied(
                    f"policy rule 'datasets.{name}.dp': data set {name!r} has no DP budget, so no DP release of it "
                    "is possible (the data owner sets one under datasets: in the policy)"
                )
            budgets.append(Budget(("dataset", name), budget.epsilon_budget, budget.delta, f"datasets.{name}.dp"))
        return budgets


@functools.lru_cache(maxsize=1)
def _unit_gaussian_curve() -> Any:
    """The RDP curve of a Gaussian release with noise multiplier 1 (alpha / 2 at each order)."""
    from tfppml.remote.ledger import _rdp

    return _rdp({"type": "gaussian", "noise_multiplier": 1.0})


# Bounded: the epsilons come from callers, and an unbounded cache would let one grow the worker's memory.
@functools.lru_cache(maxsize=4096)
def calibrate_gaussian(epsilon: float, delta: float) -> float:
    """Smallest noise multiplier (to ~0.1%) whose single Gaussian release is (epsilon, delta)-DP (RDP bound)."""
    from tfppml.remote.ledger import _epsilon_of

    unit = _unit_gaussian_curve()

    def cost(multiplier: float) -> float:
        # A Gaussian's RDP is alpha / (2 z^2): the unit curve scaled, as dp-accounting computes it.
        return _epsilon_of(unit / multiplier**2, delta)

    low, high = 1e-3, 1.0
    while cost(high) > epsilon:
        low, high = high, high * 2
        if high > 1e7:
            raise ValueError(f"`epsilon`={epsilon:g} is too small to calibrate at delta={delta:g}")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if cost(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high


def _names(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where} must be a list of data set names, got {value!r}")
    return frozenset(value)


def _number(
    value: Any, where: str, *, integer: bool = False, low: float = 0.0, high: float = math.inf
) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (low < value < high):
        what = "an int" if integer else "a number"
        raise ValueError(f"{where} must be {what} in ({low:g}, {high:g}), got {value!r}")
    return value


def _mapping(value: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping with {list(fields)}, got {value!r}")
    unknown = sorted(set(value) - set(fields))
    missing = sorted(set(fields) - set(value))
    if unknown or missing:
        raise ValueError(
            f"{where} must have exactly the fields {list(fields)}; unknown {unknown}, missing {missing}"
        )
    return value


def _dp_rule(raw: Any, where: str) -> DpRule:
    rule = _mapping(raw, where, ("epsilon_budget", "delta"))
    return DpRule(
        epsilon_budget=float(_number(rule["epsilon_budget"], f"{where}.epsilon_budget")),
        delta=float(_number(rule["delta"], f"{where}.delta", high=1.0)),
    )


def _parse_rules(raw: Any, name: str, source: str) -> IdentityRules:
    where = f"{source}: {name}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping of rules, got {type(raw).__name__}")
    renamed = sorted(set(raw) & set(_RENAMED))
    if renamed:
        old = renamed[0]
        new, why = _RENAMED[old]
        raise ValueError(f"{where}.{old}: this rule is now called {new!r} ({why}); rename it to opt in")
    unknown = sorted(set(raw) - set(_RULE_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown rule(s) {unknown}; known rules are {list(_RULE_FIELDS)}")
    datasets = _names(raw.get("datasets"), f"{where}.datasets")
    raw_read = _names(raw.get("raw_read"), f"{where}.raw_read")
    if not raw_read <= datasets:
        raise ValueError(
            f"{where}.raw_read names data sets not in {name}.datasets: {sorted(raw_read - datasets)}"
        )
    min_rows = None
    if raw.get("unsafe_aggregates") is not None:
        aggregates = _mapping(raw["unsafe_aggregates"], f"{where}.unsafe_aggregates", ("min_rows",))
        min_rows = _number(aggregates["min_rows"], f"{where}.unsafe_aggregates.min_rows", integer=True, low=0)
    dp = None if raw.get("dp") is None else _dp_rule(raw["dp"], f"{where}.dp")
    weights = raw.get("unsafe_weights", False)
    if not isinstance(weights, bool):
        raise ValueError(f"{where}.unsafe_weights must be true or false, got {weights!r}")
    rate_limit = None
    if raw.get("rate_limit") is not None:
        rate_raw = _mapping(raw["rate_limit"], f"{where}.rate_limit", ("requests", "per_seconds"))
        rate_limit = RateLimit(
            requests=_number(rate_raw["requests"], f"{where}.rate_limit.requests", integer=True),
            per_seconds=float(_number(rate_raw["per_seconds"], f"{where}.rate_limit.per_seconds")),
        )
    return IdentityRules(
        name=name,
        limits=parse_limits(raw.get("limits"), f"{where}.limits"),
        datasets=datasets,
        raw_read=raw_read,
        min_rows=min_rows,
        dp=dp,
        weights=weights,
        rate_limit=rate_limit,
    )
