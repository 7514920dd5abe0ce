"""Privacy accounting for DP-SGD on dp-accounting 0.4.3 (RDP and PLD), with the assumptions stated.

What is accounted is the Gaussian mechanism of DP-SGD with per-example clipping (sensitivity = the clip norm,
no microbatches), under **add-or-remove-one-example adjacency**, protecting every intermediate model (all
checkpoints), not only the final one.  Two sampling assumptions are supported and must match what training
actually did:

* ``poisson=True``: every example joins each batch independently with probability ``q = batch_size / n``
  (what :func:`tfppml.dp.poisson_sample` produces); privacy amplification by subsampling applies, and
  ``ceil(epochs * n / batch_size)`` steps are composed.
* ``poisson=False``: the data are shuffled into fixed-size batches, each example used once per epoch
  (``Model.fit`` with ``shuffle=True``).  No amplification is claimed: every epoch counts as one Gaussian
  mechanism over the whole data set, and ``ceil(epochs)`` of them are composed.  This is the conservative
  bound TF Privacy's ``compute_dp_sgd_privacy_statement`` reports as "each example occurring once per epoch".

The mathematics is dp-accounting's; this module only builds the right ``DpEvent`` and checks arguments.

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

__all__ = [
    "ACCOUNTANTS",
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


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_real(name: str, value, *, low: float, low_open: bool, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or value < low or (low_open and value == low) or value > high:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high != math.inf else "")
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


def steps_for(n: int, batch_size: int, epochs: float) -> int:
    """Number of DP-SGD steps of ``epochs`` passes over ``n`` examples at ``batch_size``: ceil(epochs*n/bs).

    Example:
        >>> steps_for(60000, 256, 1)
        235
    """
    return int(math.ceil(epochs * n / batch_size))


def make_accountant(accountant: str = "rdp") -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant (add-or-remove-one adjacency): ``"rdp"`` or ``"pld"``.

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
        noise_multiplier: Noise standard deviation divided by the clip norm.
        epochs: Passes over the data; may be fractional.
        poisson: Poisson sampling (True) or shuffled fixed-size batches with no amplification (False).

    Returns:
        A ``dp_accounting.DpEvent``.
    """
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if poisson:
        sampled = dp_accounting.PoissonSampledDpEvent(sampling_probability=batch_size / n, event=gaussian)
        return dp_accounting.SelfComposedDpEvent(sampled, steps_for(n, batch_size, epochs))
    return dp_accounting.SelfComposedDpEvent(gaussian, int(math.ceil(epochs)))


def compute_epsilon(
    n: int,
    batch_size: int,
    noise_multiplier: float,
    epochs: float,
    delta: float,
    accountant: str = "rdp",
    poisson: bool = True,
) -> float:
    """Epsilon of a DP-SGD run at ``delta``, add-or-remove-one adjacency, all checkpoints released.

    Args:
        n: Number of training examples.
        batch_size: Examples per batch (expected batch size under Poisson sampling).
        noise_multiplier: Noise standard deviation / clip norm; 0 means no noise, and epsilon is infinite.
        epochs: Passes over the data (may be fractional).
        delta: Target delta, in (0, 1); usually well below 1/n.
        accountant: ``"rdp"`` (fast, slightly loose) or ``"pld"`` (tighter, slower for many steps).
        poisson: True for Poisson sampling; False for shuffled fixed-size batches (no amplification claimed).

    Returns:
        Epsilon (``math.inf`` when ``noise_multiplier`` is 0).

    Raises:
        TypeError, ValueError: an argument has the wrong type or is out of range (the message names it).

    Example:
        >>> round(compute_epsilon(60000, 256, 1.1, 60, 1e-5, poisson=False), 1)
        57.0
    """
    n, batch_size, epochs, delta = _check_common(n, batch_size, epochs, delta, accountant)
    noise_multiplier = _check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=False)
    if noise_multiplier == 0.0:
        return math.inf
    acc = make_accountant(accountant)
    acc.compose(dp_sgd_event(n, batch_size, noise_multiplier, epochs, poisson=bool(poisson)))
    return float(acc.get_epsilon(delta))


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

    Args:
        target_epsilon: The epsilon budget, > 0.
        delta: Target delta, in (0, 1).
        n: Number of training examples.
        batch_size: Examples per batch.
        epochs: Passes over the data.
        accountant: ``"rdp"`` or ``"pld"``.
        poisson: Sampling assumption, as in :func:`compute_epsilon`.
        tol: Absolute tolerance on the noise multiplier.

    Returns:
        The noise multiplier.

    Raises:
        TypeError, ValueError: an argument has the wrong type or is out of range.

    Example:
        >>> round(calibrate_noise(3.0, 1e-5, 60000, 256, 60), 2)
        1.01
    """
    n, batch_size, epochs, delta = _check_common(n, batch_size, epochs, delta, accountant)
    target_epsilon = _check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
    tol = _check_real("tol", tol, low=0.0, low_open=True)

    def make_event(sigma: float) -> dp_accounting.DpEvent:
        return dp_sgd_event(n, batch_size, sigma, epochs, poisson=bool(poisson))

    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(accountant),
        make_event,
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=tol,
    )
    # Brent's method returns a point within tol of the boundary; step up until the budget provably holds.
    while compute_epsilon(n, batch_size, sigma, epochs, delta, accountant, poisson) > target_epsilon:
        sigma += tol
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
    noise_multiplier = _check_real("noise_multiplier", noise_multiplier, low=0.0, low_open=False)
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
    return f"{head}\n\n{scope}\n{table}\n\n{foot}\n"
