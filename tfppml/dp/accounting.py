"""Privacy accounting for DP-SGD on dp-accounting 0.4.3 (RDP and PLD), with the assumptions stated.

What is accounted is the Gaussian mechanism of DP-SGD with per-example clipping (sensitivity = the clip norm,
no microbatches), under **add-or-remove-one-example adjacency**, protecting every intermediate model (all
checkpoints), not only the final one.  Two sampling assumptions are supported and must match what training
actually did:

* ``poisson=True`` (the default of every function here, of :class:`tfppml.dp.PrivacyBudget` and of
  ``tfppml privacy``): every example joins each batch independently with probability ``q = batch_size / n``
  (what :func:`tfppml.dp.poisson_sample` produces); privacy amplification by subsampling applies, and
  ``ceil(epochs * n / batch_size)`` steps are composed.
* ``poisson=False``: the data are shuffled into fixed-size batches, each example used once per epoch
  (``Model.fit`` with ``shuffle=True``).  No amplification is claimed: every epoch counts as one Gaussian
  mechanism over the whole data set, and ``ceil(epochs)`` of them are composed.  This is the conservative
  bound TF Privacy's ``compute_dp_sgd_privacy_statement`` reports as "each example occurring once per epoch".

The mathematics is dp-accounting's; this module builds the right ``DpEvent``, checks every argument (finite,
in range), guards against dp-accounting's numerical corners (negative RDP from rounding at a huge noise
multiplier, PLD grids too large for memory at a tiny one) and, under ``"pld"``, reports the smaller of the
PLD and RDP bounds, saying which (:class:`Epsilon`).

Example:
    >>> round(compute_epsilon(60000, 256, 1.1, 60, 1e-5), 2)  # RDP, Poisson sampling
    2.6
    >>> sigma = calibrate_noise(3.0, 1e-5, 60000, 256, 60)
    >>> compute_epsilon(60000, 256, sigma, 60, 1e-5) <= 3.0
    True
"""

from __future__ import annotations

import math
import numbers
import textwrap

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import optimize

__all__ = [
    "ACCOUNTANTS",
    "Epsilon",
    "calibrate_noise",
    "compute_epsilon",
    "dp_sgd_event",
    "make_accountant",
    "privacy_statement",
    "steps_for",
]

ACCOUNTANTS = ("rdp", "pld")

# RDP orders: dp-accounting's defaults extended with a fine grid where DP-SGD optima usually lie.
_RDP_ORDERS = sorted(
    set([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [80, 96, 128, 192, 256, 384, 512, 1024])
)

# PLD discretisation.  dp-accounting's default interval (1e-4) is kept up to 1e5 steps, so short runs give
# exactly TF Privacy's PLD figures.  Its pessimistic rounding error grows with the number of compositions
# (at 3.07M steps, q = 1/60000, sigma 2: 0.143 at 1e-4 against RDP's 0.087 and 0.049 at 1e-5), so longer runs
# get an interval shrinking like 1/sqrt(steps), down to 1e-5.  The grid may also need too many bins (sigma 1e-3
# asked for 38 GiB): its width is estimated from the RDP curve (the composed privacy loss exceeds the RDP
# epsilon at delta 1e-15 with probability below 1e-15, and dp-accounting truncates its FFT at a tail of 1e-15),
# and the interval is widened until the estimate fits _PLD_MAX_BINS.  A wider interval is still a valid
# (pessimistic) bound, only looser; past _PLD_MAX_INTERVAL it would be useless and PLD is not run at all.
_PLD_DEFAULT_INTERVAL = 1e-4
_PLD_FINEST_INTERVAL = 1e-5
_PLD_FINE_FROM_STEPS = 100_000
_PLD_MAX_BINS = 2**23  # ~8.4M bins: FFT arrays of ~130 MB each
_PLD_MAX_INTERVAL = 1e-2
_PLD_TAIL_DELTA = 1e-15

# Where calibrate_noise stops looking: below this noise multiplier DP-SGD is not private in any useful sense,
# above the upper one no (epsilon, delta) target of interest is still unmet.
_CALIBRATION_MIN_SIGMA = 1e-3
_CALIBRATION_MAX_SIGMA = 1e12

# Above this noise multiplier dp-accounting squares sigma into an OverflowError (sigma 1e300); its amplified
# figures would be rounding noise anyway, so the closed-form unsampled bound is used (see _rdp_curve).
_CLOSED_FORM_FROM_SIGMA = 1e10


class Epsilon(float):
    """An epsilon (a plain ``float`` for every arithmetic and comparison) that says which bound it is.

    :func:`compute_epsilon` returns one.  Under ``accountant="pld"`` both the PLD and the RDP bounds are valid
    upper bounds on the same run's epsilon; the smaller is reported, and ``accountant`` says which it was.

    Attributes:
        accountant: ``"rdp"`` or ``"pld"``: the accountant whose bound this value is.
        requested: The accountant the caller asked for.
        bounds: Every valid bound computed, by accountant (e.g. ``{"pld": 2.38, "rdp": 2.60}``).
        note: Why this bound was reported when it is not the requested one ("" otherwise).
    """

    accountant: str
    requested: str
    bounds: dict
    note: str

    def __new__(cls, value: float, accountant: str = "rdp", requested: str | None = None,
                bounds: dict | None = None, note: str = ""):  # fmt: skip
        self = super().__new__(cls, value)
        self.accountant = accountant
        self.requested = accountant if requested is None else requested
        self.bounds = dict(bounds) if bounds is not None else {accountant: float(value)}
        self.note = note
        return self


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value, *, low: float, low_open: bool, high: float = math.inf) -> float:
    # Every real argument here is finite: an infinite noise multiplier made dp-accounting's RDP series loop
    # forever, infinite epochs overflowed the step count, and NaN compares false with every bound.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite real number, got {type(value).__name__} {value!r}")
    value = float(value)
    bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number {bound}, got {value}")
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_common(n, batch_size, epochs, delta, accountant):
    n = _check_int("n", n)
    batch_size = _check_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(f"batch_size must be <= n (the number of examples), got batch_size={batch_size}, n={n}")
    epochs = _check_real("epochs", epochs, low=0.0, low_open=True)
    delta = _check_real("delta", delta, low=0.0, low_open=True, high=1.0)
    if delta >= 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return n, batch_size, epochs, delta


def _check_poisson(poisson) -> bool:
    # A truthy string ("False") or an int would silently pick the wrong sampling assumption.
    if not isinstance(poisson, bool):
        raise TypeError(f"poisson must be a bool, got {type(poisson).__name__} {poisson!r}")
    return poisson


def _check_noise(noise_multiplier) -> float:
    return _check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=False)


def steps_for(n: int, batch_size: int, epochs: float) -> int:
    """Number of DP-SGD steps of ``epochs`` passes over ``n`` examples at ``batch_size``: ceil(epochs*n/bs).

    Raises:
        TypeError, ValueError: an argument has the wrong type or is out of range (``epochs`` must be finite).

    Example:
        >>> steps_for(60000, 256, 1)
        235
    """
    n = _check_int("n", n)
    batch_size = _check_int("batch_size", batch_size)
    epochs = _check_real("epochs", epochs, low=0.0, low_open=True)
    return int(math.ceil(epochs * n / batch_size))


def make_accountant(accountant: str = "rdp") -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant (add-or-remove-one adjacency): ``"rdp"`` or ``"pld"``.

    This is the raw accountant (PLD at dp-accounting's default discretisation, no bound taken against RDP);
    :func:`compute_epsilon` is the guarded way to get a DP-SGD run's epsilon.

    Raises:
        ValueError: ``accountant`` is neither ``"rdp"`` nor ``"pld"``.
    """
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant(_RDP_ORDERS)
    if accountant == "pld":
        return dp_accounting.pld.PLDAccountant()
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def dp_sgd_event(
    n: int, batch_size: int, noise_multiplier: float, epochs: float, *, poisson: bool = True
) -> dp_accounting.DpEvent:
    """The dp-accounting event of a DP-SGD run (see the module docstring for the assumptions).

    Args:
        n: Number of training examples.
        batch_size: Examples per batch (the expected batch size under Poisson sampling).
        noise_multiplier: Noise standard deviation divided by the clip norm, finite and >= 0.
        epochs: Passes over the data, finite and > 0; may be fractional.
        poisson: Poisson sampling (True, the default) or shuffled fixed-size batches with no amplification
            (False).

    Returns:
        A ``dp_accounting.DpEvent``.

    Raises:
        TypeError, ValueError: an argument has the wrong type or is out of range (the message names it).
    """
    steps = steps_for(n, batch_size, epochs)
    gaussian = dp_accounting.GaussianDpEvent(_check_noise(noise_multiplier))
    if _check_poisson(poisson):
        sampled = dp_accounting.PoissonSampledDpEvent(sampling_probability=batch_size / n, event=gaussian)
        return dp_accounting.SelfComposedDpEvent(sampled, steps)
    return dp_accounting.SelfComposedDpEvent(gaussian, int(math.ceil(epochs)))


def _rdp_curve(n: int, batch_size: int, sigma: float, epochs: float, poisson: bool) -> np.ndarray:
    """RDP of the run at every order of _RDP_ORDERS, each value a proven upper bound (sigma > 0, finite)."""
    count = steps_for(n, batch_size, epochs) if poisson else int(math.ceil(epochs))
    orders = np.asarray(_RDP_ORDERS)
    with np.errstate(over="ignore"):
        unsampled = count * (orders / (2.0 * sigma * sigma))  # 0 once sigma^2 overflows: the bound is ~1e-600
    if sigma > _CLOSED_FORM_FROM_SIGMA:
        return unsampled
    acc = make_accountant("rdp")
    acc.compose(dp_sgd_event(n, batch_size, sigma, epochs, poisson=poisson))
    rdp = acc.rdp
    # The subsampled Gaussian's RDP is log(1 + tiny) summed from binomial terms; for a huge sigma rounding
    # leaves it slightly negative (-1.9e-12 at sigma 1e6), which dp-accounting's conversion rejects.  Sampling
    # never increases RDP, so the unsampled Gaussian's count * order / (2 sigma^2) is a proven bound to use
    # wherever the amplified figure is negative (or, by rounding, above it).
    return np.where(rdp < 0.0, unsampled, np.minimum(rdp, unsampled))


def _rdp_to_epsilon(rdp: np.ndarray, delta: float) -> float:
    return float(rdp_privacy_accountant.compute_epsilon(_RDP_ORDERS, rdp, delta)[0])


def _pld_interval(steps: int, rdp: np.ndarray, sigma: float) -> float:
    """The PLD discretisation interval for a run (see _PLD_DEFAULT_INTERVAL above for the reasons)."""
    interval = _PLD_DEFAULT_INTERVAL
    if steps > _PLD_FINE_FROM_STEPS:
        interval = max(_PLD_FINEST_INTERVAL, _PLD_DEFAULT_INTERVAL * math.sqrt(_PLD_FINE_FROM_STEPS / steps))
    # Loss range: twice the composed range (the loss is also negative) and at least one step's Gaussian tail.
    loss_range = max(2.0 * _rdp_to_epsilon(rdp, _PLD_TAIL_DELTA), 20.0 / sigma)
    return max(interval, loss_range / _PLD_MAX_BINS)


def _epsilon(
    n: int, batch_size: int, sigma: float, epochs: float, delta: float, accountant: str, poisson: bool
) -> Epsilon:
    """compute_epsilon without the argument checks (arguments already valid)."""
    if sigma == 0.0:
        return Epsilon(math.inf, accountant, bounds={accountant: math.inf})
    rdp = _rdp_curve(n, batch_size, sigma, epochs, poisson)
    eps_rdp = _rdp_to_epsilon(rdp, delta)
    if accountant == "rdp":
        return Epsilon(eps_rdp, "rdp")
    if sigma > _CLOSED_FORM_FROM_SIGMA:
        note = f"PLD not run for noise_multiplier > {_CLOSED_FORM_FROM_SIGMA:g}: the closed-form RDP bound is reported"
        return Epsilon(eps_rdp, "rdp", requested="pld", bounds={"rdp": eps_rdp}, note=note)
    steps = steps_for(n, batch_size, epochs) if poisson else int(math.ceil(epochs))
    interval = _pld_interval(steps, rdp, sigma)
    if interval > _PLD_MAX_INTERVAL:
        note = (
            f"PLD not run: fitting its grid in {_PLD_MAX_BINS} bins would need a discretisation interval of "
            f"{interval:.3g} (> {_PLD_MAX_INTERVAL:g}, too coarse to help); the RDP bound is reported"
        )
        return Epsilon(eps_rdp, "rdp", requested="pld", bounds={"rdp": eps_rdp}, note=note)
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=interval)
    acc.compose(dp_sgd_event(n, batch_size, sigma, epochs, poisson=poisson))
    eps_pld = float(acc.get_epsilon(delta))
    bounds = {"pld": eps_pld, "rdp": eps_rdp}
    if eps_pld <= eps_rdp:
        return Epsilon(eps_pld, "pld", requested="pld", bounds=bounds)
    note = (
        f"the PLD bound ({eps_pld:.4g}, discretisation interval {interval:.3g}) is looser than the RDP bound "
        f"({eps_rdp:.4g}) for this run; both are valid, the smaller is reported"
    )
    return Epsilon(eps_rdp, "rdp", requested="pld", bounds=bounds, note=note)


def compute_epsilon(
    n: int,
    batch_size: int,
    noise_multiplier: float,
    epochs: float,
    delta: float,
    accountant: str = "rdp",
    poisson: bool = True,
) -> Epsilon:
    """Epsilon of a DP-SGD run at ``delta``, add-or-remove-one adjacency, all checkpoints released.

    Args:
        n: Number of training examples.
        batch_size: Examples per batch (expected batch size under Poisson sampling).
        noise_multiplier: Noise standard deviation / clip norm, finite and >= 0; 0 means no noise, and
            epsilon is infinite.  ``math.inf`` is refused (no mechanism adds infinite noise; such a value is a
            bug upstream, and certifying it as epsilon 0 would hide it).  A huge finite value gives a tiny
            epsilon (0 when ``delta`` already covers the whole difference between the output distributions).
        epochs: Passes over the data, finite and > 0 (may be fractional).
        delta: Target delta, in (0, 1); usually well below 1/n.
        accountant: ``"rdp"`` (fast, slightly loose) or ``"pld"``.  Under ``"pld"`` both bounds are computed
            and the smaller is returned; ``result.accountant`` says which it was and ``result.note`` why
            (the PLD bound can be the looser one after millions of steps, or not computable for a tiny
            noise multiplier, whose grid would not fit in memory).
        poisson: True (default) for Poisson sampling (:func:`tfppml.dp.poisson_sample`); False for shuffled
            fixed-size batches (``Model.fit``), with no amplification claimed.

    Returns:
        Epsilon as an :class:`Epsilon`, a ``float`` (``math.inf`` when ``noise_multiplier`` is 0) that also
        carries ``accountant``, ``bounds`` and ``note``.

    Raises:
        TypeError, ValueError: an argument has the wrong type, is not finite or is out of range (the message
            names it).

    Example:
        >>> round(compute_epsilon(60000, 256, 1.1, 60, 1e-5, poisson=False), 1)  # shuffled batches
        57.0
        >>> eps = compute_epsilon(60000, 256, 1.1, 60, 1e-5, accountant="pld")
        >>> round(eps, 2), eps.accountant
        (2.38, 'pld')
    """
    n, batch_size, epochs, delta = _check_common(n, batch_size, epochs, delta, accountant)
    noise_multiplier = _check_noise(noise_multiplier)
    return _epsilon(n, batch_size, noise_multiplier, epochs, delta, accountant, _check_poisson(poisson))


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    n: int,
    batch_size: int,
    epochs: float,
    accountant: str = "rdp",
    poisson: bool = True,
    tol: float = 1e-4,
) -> float:
    """Smallest noise multiplier (within ``tol``) whose :func:`compute_epsilon` is at most ``target_epsilon``.

    The returned value always satisfies ``compute_epsilon(...) <= target_epsilon`` for the same arguments.
    The search is bracketed by RDP, which is cheap at any noise multiplier: the RDP answer is an upper end for
    ``"pld"`` too (its figure is never above RDP's), and PLD is only evaluated just below it, never at the
    tiny noise multipliers whose PLD grid would not fit in memory.

    Args:
        target_epsilon: The epsilon budget, finite and > 0.
        delta: Target delta, in (0, 1).
        n: Number of training examples.
        batch_size: Examples per batch.
        epochs: Passes over the data, finite and > 0.
        accountant: ``"rdp"`` or ``"pld"``.
        poisson: Sampling assumption, as in :func:`compute_epsilon`: True (default) for Poisson sampling,
            False for shuffled fixed-size batches.
        tol: Absolute tolerance on the noise multiplier, finite and > 0.

    Returns:
        The noise multiplier.

    Raises:
        TypeError, ValueError: an argument has the wrong type or is out of range, or ``target_epsilon`` is met
            even at a noise multiplier of 1e-3 or unmet even at 1e12.

    Example:
        >>> round(calibrate_noise(3.0, 1e-5, 60000, 256, 60), 2)
        1.01
    """
    n, batch_size, epochs, delta = _check_common(n, batch_size, epochs, delta, accountant)
    target_epsilon = _check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
    tol = _check_real("tol", tol, low=0.0, low_open=True)
    poisson = _check_poisson(poisson)

    def gap(sigma: float, acc: str) -> float:
        return _epsilon(n, batch_size, sigma, epochs, delta, acc, poisson) - target_epsilon

    def lower_end(high: float, acc: str, factor: float) -> tuple[float, float]:
        # Shrink by factor until the target is missed: (low, high) then brackets the boundary.
        low = high * factor
        while gap(low, acc) <= 0:
            high, low = low, low * factor
            if low < _CALIBRATION_MIN_SIGMA:
                raise ValueError(
                    f"target_epsilon={target_epsilon:g} is met even at noise_multiplier {_CALIBRATION_MIN_SIGMA:g} "
                    f"(delta={delta:g}): a budget this large constrains nothing; use a smaller target_epsilon"
                )
        return low, high

    def settle(acc: str, low: float, high: float) -> float:
        sigma = optimize.brentq(lambda s: gap(s, acc), low, high, xtol=tol)
        # Brent's method returns a point within tol of the boundary; step up until the budget provably holds
        # (high, where it holds, caps the walk).
        while sigma < high and gap(sigma, acc) > 0:
            sigma = min(sigma + tol, high)
        return sigma

    high = 1.0
    while gap(high, "rdp") > 0:
        high *= 2.0
        if high > _CALIBRATION_MAX_SIGMA:
            raise ValueError(
                f"target_epsilon={target_epsilon:g} is not met even at noise_multiplier "
                f"{_CALIBRATION_MAX_SIGMA:g} (delta={delta:g}); raise target_epsilon or delta"
            )
    sigma = settle("rdp", *lower_end(high, "rdp", 0.5))
    if accountant == "pld":
        # The RDP answer meets the target under "pld" too (min(PLD, RDP) <= RDP): the bracket's upper end.  PLD's
        # answer is usually 4-7% below it, and its cost grows as sigma falls, so the bracket shrinks gently.
        sigma = settle("pld", *lower_end(sigma, "pld", 0.8))
    return float(sigma)


def privacy_statement(
    n: int,
    batch_size: int,
    noise_multiplier: float,
    epochs: float,
    delta: float,
    accountant: str = "rdp",
) -> str:
    """A plain-text statement of the guarantee, in the spirit of TF Privacy's privacy statement.

    It states the mechanism, the adjacency, what is protected, and epsilon under both sampling assumptions.

    Example:
        >>> print(privacy_statement(60000, 256, 1.1, 60, 1e-5))  # doctest: +ELLIPSIS
        DP-SGD with per-example clipping over 60000 examples...
    """
    n, batch_size, epochs, delta = _check_common(n, batch_size, epochs, delta, accountant)
    noise_multiplier = _check_noise(noise_multiplier)
    eps_shuffled = compute_epsilon(n, batch_size, noise_multiplier, epochs, delta, accountant, poisson=False)
    eps_poisson = compute_epsilon(n, batch_size, noise_multiplier, epochs, delta, accountant, poisson=True)
    head = textwrap.fill(
        f"DP-SGD with per-example clipping over {n} examples, {batch_size} examples per step "
        f"({steps_for(n, batch_size, epochs)} steps), noise multiplier {noise_multiplier:g}, {epochs:g} epochs, "
        f"no microbatching.",
        width=80,
    )
    scope = textwrap.fill(
        "The guarantee protects the release of every model checkpoint, not only the final model. "
        f"Example-level DP, add-or-remove-one adjacency, delta = {delta:g}, {accountant.upper()} accounting "
        "(dp-accounting 0.4.3):",
        width=80,
    )
    table = (
        f"    Epsilon, each example once per epoch (shuffled batches): {eps_shuffled:12.3f}\n"
        f"    Epsilon, Poisson sampling with q = batch_size / n:       {eps_poisson:12.3f}"
    )
    foot = textwrap.fill(
        "The Poisson figure holds only if batches were Poisson-sampled (tfppml.dp.poisson_sample); for "
        "shuffled fixed-size batches only the first figure is proven.",
        width=80,
    )
    notes = "".join(
        "\n" + textwrap.fill(f"{label}: {eps.note}.", width=80) + "\n"
        for label, eps in (("Shuffled batches", eps_shuffled), ("Poisson sampling", eps_poisson))
        if eps.note
    )
    return f"{head}\n\n{scope}\n{table}\n{notes}\n{foot}\n"
