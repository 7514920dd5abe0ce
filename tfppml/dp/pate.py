"""PATE: noisy aggregation of teacher votes and its privacy analysis.

Private Aggregation of Teacher Ensembles trains ``T`` teachers on disjoint parts of the private data; a
student learns from public examples labelled by a *noisy* vote of the teachers.  The privacy cost is that of
the answered queries (one query = one released label).  ``teacher_preds`` is always an int array of shape
``[num_teachers, num_examples]`` (PySyft's layout): ``teacher_preds[t, e]`` is teacher t's label for
example e.

Aggregators (noise from tfppml's cryptographic ChaCha20 generators, keyed from the OS CSPRNG unless a seed is
given for tests):

* :func:`noisy_max` (LNMax; Papernot et al. 2017): ``argmax_j n_j(x) + Lap(1 / noise_eps)``.  One teacher
  changing its vote moves two counts by one, so each answer is ``(2 * noise_eps, 0)``-DP.
* :func:`gnmax` (Papernot et al. 2018): ``argmax_j n_j(x) + N(0, sigma^2)``.

Analyses (all assume the votes ``n_j`` are the true, un-noised counts of the answered examples):

* :func:`perform_analysis` (as ``syft.frameworks.torch.dp.pate.perform_analysis``): the moments accountant of
  Papernot, Abadi, Erlingsson, Goodfellow & Talwar, "Semi-supervised knowledge transfer for deep learning from
  private training data" (ICLR 2017).  Per answered query with ``gamma = noise_eps`` and ``eps = 2 * gamma``:

  - Theorem 3: ``q <= sum_{j != j*} (2 + gamma * (n_j* - n_j)) / (4 * exp(gamma * (n_j* - n_j)))`` bounds the
    probability that the noisy answer is not the plurality label ``j*`` (also capped at ``1 - 1/num_labels``,
    since under i.i.d. noise the plurality label is the likeliest answer);
  - Theorem 2 (data-dependent): if ``q < (e^{2 gamma} - 1) / (e^{4 gamma} - 1)``, the log-moment of order
    ``l`` is at most ``log((1 - q) * ((1 - q) / (1 - e^{2 gamma} q))^l + q * e^{2 gamma l})``;
  - data-independent: an ``eps``-DP mechanism has log-moment at most ``eps^2 l (l + 1) / 2`` and ``eps * l``.

  Log-moments add up over queries (composability), and ``epsilon = min_l (alpha(l) + log(1/delta)) / l`` over
  ``l = 1 .. moments`` (tail bound, Abadi et al. 2016, Theorem 2).
* :func:`gnmax_analysis`: Rényi DP of GNMax from Papernot, Song, Mironov, Raghunathan, Talwar & Erlingsson,
  "Scalable private learning with PATE" (ICLR 2018): data-independent ``(lambda, lambda / sigma^2)``-RDP per
  query (Proposition 8); data-dependent via Proposition 7
  (``q <= sum_{j != j*} erfc((n_j* - n_j) / (2 sigma)) / 2``) and Theorem 6 with
  ``mu2 = sigma * sqrt(log(1/q))``, ``mu1 = mu2 + 1``; RDP adds up over queries and is converted to
  (epsilon, delta) by dp-accounting's ``compute_epsilon`` (Canonne, Kamath & Steinke 2020, Prop. 12).

The data-dependent epsilon is itself a function of the private votes: publishing it leaks a little (Papernot
et al. release it through smooth sensitivity, which tfppml does not implement yet).  The data-independent
epsilon can always be published.

Example:
    >>> import numpy as np
    >>> preds = np.zeros((100, 20), dtype=int)      # 100 teachers agree on label 0 for 20 examples
    >>> dep, indep = perform_analysis(preds, np.arange(20), noise_eps=0.1, delta=1e-5, num_labels=10)
    >>> bool(dep < indep)
    True
    >>> labels = noisy_max(preds, noise_eps=0.1, num_labels=10)  # what the student is taught
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special

from tfppml.ops.gaussian_noise import gaussian_noise
from tfppml.ops.prg import new_seed, prg_uniform

__all__ = [
    "PateAnalysis",
    "gnmax",
    "gnmax_analysis",
    "gnmax_data_dependent_rdp",
    "gnmax_log_q",
    "laplace_analysis",
    "laplace_log_moments",
    "laplace_q",
    "noisy_max",
    "perform_analysis",
    "vote_counts",
]

#: Rényi orders of the GNMax analysis: fine near 1, then up to 10^4 (data-dependent bounds of confident votes
#: are smallest at high orders).
GNMAX_ORDERS = np.unique(
    np.concatenate(
        [np.arange(1.1, 11.0, 0.1), np.arange(11.0, 101.0), np.round(np.geomspace(101, 10_000, 80))]
    )
)


# --------------------------------------------------------------------------------------------------------------
# Argument checks: every message names the argument, what was given and what was expected.
# --------------------------------------------------------------------------------------------------------------
def _as_int_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels/indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number > 0, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _check_delta(delta: Any) -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < float(delta) < 1:
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_preds(teacher_preds: Any, num_labels: int | None) -> tuple[np.ndarray, int]:
    preds = _as_int_array(teacher_preds, "teacher_preds")
    if preds.ndim != 2 or preds.shape[0] < 1 or preds.shape[1] < 1:
        raise ValueError(
            f"teacher_preds must have shape [num_teachers, num_examples] with both >= 1, "
            f"got shape {preds.shape}"
        )
    low, high = int(preds.min()), int(preds.max())
    if num_labels is None:
        num_labels = max(high + 1, 2)
    else:
        num_labels = _check_int("num_labels", num_labels, 2)
    if low < 0 or high >= num_labels:
        bad = low if low < 0 else high
        raise ValueError(f"teacher_preds must hold labels in [0, num_labels={num_labels}), found {bad}")
    return preds, num_labels


def _check_indices(indices: Any, num_examples: int) -> np.ndarray:
    if np.size(indices) == 0:
        raise ValueError(
            "indices must name at least one answered query (an example index), got an empty array"
        )
    idx = _as_int_array(indices, "indices")
    if idx.ndim != 1:
        raise ValueError(f"indices must be a 1-D array of example indices, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= num_examples:
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise ValueError(
            f"indices must be example indices in [0, num_examples={num_examples}) "
            f"(columns of teacher_preds), "
            f"found {bad}"
        )
    return idx


def _seed_words(seed: Any) -> np.ndarray:
    if seed is None:
        return new_seed(256)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**256:
        raise ValueError(f"seed must be None or an int in [0, 2**256), got {seed!r}")
    return np.array([(int(seed) >> (64 * i)) & (2**64 - 1) for i in range(4)], dtype=np.uint64)


# --------------------------------------------------------------------------------------------------------------
# Votes and aggregation.
# --------------------------------------------------------------------------------------------------------------
def vote_counts(teacher_preds: Any, num_labels: int | None = None) -> np.ndarray:
    """Vote histogram ``[num_examples, num_labels]``: entry (e, j) is the number of teachers voting j on e.

    Args:
        teacher_preds: Int labels, shape ``[num_teachers, num_examples]``.
        num_labels: Number of classes; None uses ``max(teacher_preds) + 1`` (at least 2).

    Raises:
        ValueError: ``teacher_preds`` has the wrong shape or dtype, or a label outside [0, num_labels).

    Example:
        >>> vote_counts([[0, 1], [0, 0], [2, 0]], num_labels=3).tolist()
        [[2, 0, 1], [2, 1, 0]]
    """
    preds, num_labels = _check_preds(teacher_preds, num_labels)
    num_examples = preds.shape[1]
    flat = (np.arange(num_examples)[None, :] * num_labels + preds).reshape(-1)
    return np.bincount(flat, minlength=num_examples * num_labels).reshape(num_examples, num_labels)


def noisy_max(
    teacher_preds: Any, noise_eps: float, num_labels: int, *, seed: int | None = None
) -> np.ndarray:
    """LNMax: for each example, ``argmax_j (votes_j + Laplace(scale=1/noise_eps))`` (Papernot et al. 2017).

    Each answer is ``(2 * noise_eps, 0)``-DP with respect to one teacher's training data; account for the
    answers you release with :func:`perform_analysis`.  The Laplace noise is ``(log U1 - log U2) / noise_eps``
    with ``U1, U2`` uniform on (0, 1] from the ChaCha20 keystream (:func:`tfppml.ops.prg_uniform`), keyed from
    the OS CSPRNG at every call unless ``seed`` is given.

    Args:
        teacher_preds: Int labels, shape ``[num_teachers, num_examples]``.
        noise_eps: gamma > 0: the inverse of the Laplace scale.
        num_labels: Number of classes (the answer may be any of them, voted for or not).
        seed: None (fresh cryptographic key: use this for privacy) or an int in [0, 2**256) (tests only).

    Returns:
        int64 array ``[num_examples]`` of aggregated labels.

    Raises:
        ValueError: an argument is invalid (the message names it).

    Example:
        >>> noisy_max([[1, 1, 0], [1, 0, 0], [1, 1, 0]], noise_eps=10.0, num_labels=2, seed=1).tolist()
        [1, 1, 0]
    """
    noise_eps = _check_positive("noise_eps", noise_eps)
    num_labels = _check_int("num_labels", num_labels, 2)
    counts = vote_counts(teacher_preds, num_labels)
    words = prg_uniform(_seed_words(seed), [2, counts.size]).numpy()
    uniforms = ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    laplace = (np.log(uniforms[0]) - np.log(uniforms[1])).reshape(counts.shape) / noise_eps
    return np.argmax(counts + laplace, axis=1).astype(np.int64)


def gnmax(teacher_preds: Any, sigma: float, num_labels: int, *, seed: int | None = None) -> np.ndarray:
    """GNMax: for each example, ``argmax_j (votes_j + N(0, sigma^2))`` (Papernot et al. 2018).

    The noise comes from :func:`tfppml.ops.gaussian_noise` (ChaCha20 + Ziggurat, keyed from the OS CSPRNG at
    every call unless ``seed`` is given).  Account for the released answers with :func:`gnmax_analysis`.

    Args:
        teacher_preds: Int labels, shape ``[num_teachers, num_examples]``.
        sigma: Standard deviation of the Gaussian noise, > 0.
        num_labels: Number of classes.
        seed: None (fresh cryptographic key) or an int in [0, 2**256) (tests only).

    Returns:
        int64 array ``[num_examples]`` of aggregated labels.

    Raises:
        ValueError: an argument is invalid.

    Example:
        >>> gnmax([[1, 1, 0], [1, 0, 0], [1, 1, 0]], sigma=0.01, num_labels=2, seed=1).tolist()
        [1, 1, 0]
    """
    sigma = _check_positive("sigma", sigma)
    num_labels = _check_int("num_labels", num_labels, 2)
    counts = vote_counts(teacher_preds, num_labels)
    if seed is not None:
        _seed_words(seed)  # the same range check as noisy_max
    noise = gaussian_noise(list(counts.shape), sigma, dtype=tf.float64, seed=seed).numpy()
    return np.argmax(counts + noise, axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# The Laplace (LNMax) analysis: moments accountant, Papernot et al. 2017.
# --------------------------------------------------------------------------------------------------------------
def _other_labels(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gaps n_j* - n_j, mask of j != j*) for each row of counts."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    winner = np.argmax(counts, axis=1)
    gaps = counts[np.arange(len(counts)), winner][:, None] - counts
    others = np.ones(counts.shape, dtype=bool)
    others[np.arange(len(counts)), winner] = False
    return gaps, others


def laplace_q(counts: Any, noise_eps: float) -> np.ndarray:
    """Theorem 3 of Papernot et al. (2017): a bound on Pr[LNMax answer != plurality label], per row of counts.

    ``q = min(sum_{j != j*} (2 + gamma d_j) / (4 exp(gamma d_j)), 1 - 1/num_labels)`` with
    ``d_j = n_j* - n_j``.

    Example:
        >>> round(float(laplace_q([10, 0], 0.1)[0]), 5)  # (2 + 1) / (4 e)
        0.27591
    """
    noise_eps = _check_positive("noise_eps", noise_eps)
    gaps, others = _other_labels(counts)
    scaled = noise_eps * gaps
    terms = np.where(others, (2.0 + scaled) / (4.0 * np.exp(scaled)), 0.0)
    return np.minimum(terms.sum(axis=1), 1.0 - 1.0 / gaps.shape[1])


def laplace_log_moments(q: Any, noise_eps: float, orders: Sequence[int]) -> np.ndarray:
    """Per-query log-moment bounds ``alpha(l)`` of LNMax, shape ``[len(q), len(orders)]`` (Papernot 2017).

    ``min(eps^2 l (l+1) / 2, eps l, data-dependent)`` with ``eps = 2 gamma``; the data-dependent term of
    Theorem 2, ``log((1-q) ((1-q) / (1 - e^eps q))^l + q e^{eps l})``, is used only where
    ``q < (e^eps - 1) / (e^{2 eps} - 1)``.  ``q = 1`` gives the data-independent bound.
    """
    noise_eps = _check_positive("noise_eps", noise_eps)
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))[:, None]
    l = np.asarray(orders, dtype=np.float64)[None, :]
    eps = 2.0 * noise_eps
    bound = np.minimum(0.5 * eps * eps * l * (l + 1.0), eps * l) * np.ones_like(q)
    applies = (q < math.expm1(eps) / math.expm1(2.0 * eps))[:, 0]
    if np.any(applies):
        qa = q[applies]
        with np.errstate(divide="ignore"):
            log_q = np.log(qa)
        log_1mq = np.log1p(-qa)
        log_ratio = log_1mq - np.log1p(-math.exp(eps) * qa)
        dependent = np.logaddexp(log_1mq + l * log_ratio, log_q + eps * l)
        bound[applies] = np.minimum(bound[applies], dependent)
    return bound


@dataclass(frozen=True)
class PateAnalysis:
    """The result of a PATE privacy analysis.

    Attributes:
        data_dependent_epsilon: epsilon from the vote counts of the answered queries (itself sensitive).
        data_independent_epsilon: epsilon of the mechanism for any votes (safe to publish).
        delta: the delta both hold at.
        queries: number of answered queries accounted.
        orders: moment orders ``l`` (Laplace) or Rényi orders (GNMax).
        data_dependent: total log-moment (Laplace) or total RDP (GNMax) per order.
        data_independent: the same, data-independent.
        best_order_dependent, best_order_independent: the orders that gave the two epsilons.
        mechanism: ``"laplace"`` or ``"gnmax"``.
    """

    data_dependent_epsilon: float
    data_independent_epsilon: float
    delta: float
    queries: int
    orders: np.ndarray
    data_dependent: np.ndarray
    data_independent: np.ndarray
    best_order_dependent: float
    best_order_independent: float
    mechanism: str


def laplace_analysis(
    teacher_preds: Any,
    indices: Any,
    noise_eps: float,
    delta: float = 1e-5,
    moments: int = 8,
    *,
    num_labels: int | None = None,
) -> PateAnalysis:
    """Moments-accountant analysis of LNMax answers (Papernot et al. 2017); see :func:`perform_analysis`.

    Returns:
        A :class:`PateAnalysis` with the totals per moment order ``l = 1 .. moments``.
    """
    preds, num_labels = _check_preds(teacher_preds, num_labels)
    idx = _check_indices(indices, preds.shape[1])
    noise_eps = _check_positive("noise_eps", noise_eps)
    delta = _check_delta(delta)
    moments = _check_int("moments", moments, 1)
    orders = np.arange(1, moments + 1, dtype=np.float64)
    counts = vote_counts(preds, num_labels)[idx]
    dependent = laplace_log_moments(laplace_q(counts, noise_eps), noise_eps, orders).sum(axis=0)
    independent = len(idx) * laplace_log_moments([1.0], noise_eps, orders)[0]
    eps_dep = (dependent + math.log(1 / delta)) / orders
    eps_ind = (independent + math.log(1 / delta)) / orders
    best_dep, best_ind = int(np.argmin(eps_dep)), int(np.argmin(eps_ind))
    return PateAnalysis(
        data_dependent_epsilon=float(eps_dep[best_dep]),
        data_independent_epsilon=float(eps_ind[best_ind]),
        delta=delta,
        queries=len(idx),
        orders=orders,
        data_dependent=dependent,
        data_independent=independent,
        best_order_dependent=float(orders[best_dep]),
        best_order_independent=float(orders[best_ind]),
        mechanism="laplace",
    )


def perform_analysis(
    teacher_preds: Any,
    indices: Any,
    noise_eps: float,
    delta: float = 1e-5,
    moments: int = 8,
    beta: float = 0.09,
    *,
    num_labels: int | None = None,
) -> tuple[float, float]:
    """``(data_dependent_epsilon, data_independent_epsilon)`` of LNMax answers, as PySyft's function gave.

    The moments accountant of Papernot et al. (2017) (see the module docstring for the formulas): the
    data-dependent bound uses the gap between the plurality label and the others in each answered query, the
    data-independent one only that each answer is ``(2 * noise_eps)``-DP.

    Args:
        teacher_preds: Int labels in [0, num_labels), shape ``[num_teachers, num_examples]``.
        indices: 1-D int array of the examples (columns of ``teacher_preds``) whose noisy-max label was
            released, one entry per answered query (an index may repeat).  Not the aggregated labels
            themselves (PySyft's tutorials sometimes passed those, which analyses the wrong examples).
        noise_eps: gamma > 0 used by :func:`noisy_max` (Laplace scale 1 / gamma).
        delta: Target delta in (0, 1).
        moments: Number of moment orders ``l = 1 .. moments`` tried.  When the best data-dependent order is
            ``moments`` itself (``laplace_analysis(...).best_order_dependent``), a larger value may give a
            smaller epsilon.
        beta: Smoothness of the smooth-sensitivity release of the data-dependent epsilon (Papernot et al.
            2017, App. C), > 0; accepted and checked for compatibility with PySyft, which computed but did not
            return that figure.  tfppml does not compute it.
        num_labels: Number of classes; None uses ``max(teacher_preds) + 1``.  Pass it when some class received
            no vote: every class enters the bound on q, so a smaller count would understate epsilon.

    Returns:
        ``(data_dependent_epsilon, data_independent_epsilon)``; the first is never larger than the second.

    Raises:
        ValueError: an argument is invalid (the message names it).

    Example:
        >>> preds = np.zeros((100, 10), dtype=int)
        >>> dep, indep = perform_analysis(preds, np.arange(10), noise_eps=0.1, delta=1e-5, num_labels=10)
        >>> round(dep, 3), round(indep, 3)
        (1.448, 3.239)
    """
    _check_positive("beta", beta)
    result = laplace_analysis(teacher_preds, indices, noise_eps, delta, moments, num_labels=num_labels)
    return result.data_dependent_epsilon, result.data_independent_epsilon


# --------------------------------------------------------------------------------------------------------------
# The GNMax analysis: Rényi DP, Papernot et al. 2018.
# --------------------------------------------------------------------------------------------------------------
def gnmax_log_q(counts: Any, sigma: float) -> np.ndarray:
    """Proposition 7 of Papernot et al. (2018): log of a bound on Pr[GNMax answer != plurality], per row.

    ``q = min(sum_{j != j*} erfc((n_j* - n_j) / (2 sigma)) / 2, 1 - 1/num_labels)``; computed in log space
    (``erfc(d / (2 sigma)) / 2 = Phi(-d / (sqrt(2) sigma))``).

    Example:
        >>> round(float(np.exp(gnmax_log_q([10, 0], 5.0)[0])), 5)  # erfc(1) / 2
        0.07865
    """
    sigma = _check_positive("sigma", sigma)
    gaps, others = _other_labels(counts)
    log_terms = np.where(others, special.log_ndtr(-gaps / (math.sqrt(2.0) * sigma)), -np.inf)
    return np.minimum(special.logsumexp(log_terms, axis=1), math.log(1.0 - 1.0 / gaps.shape[1]))


# RDP is never negative; Theorem 6's bound for a confident vote is log(1 - q + q * tiny) / (lambda - 1), which
# rounds to about -1e-16 (-2.8e-16 at order 1.1 for votes [240, 5, 5, 0, ...] at sigma 20) and made
# dp-accounting's conversion raise.  Negatives down to this size are rounding and are set to 0; anything more
# negative is a real error and still raises.
_RDP_ROUNDING = 1e-12


def _clamp_rounding(rdp: np.ndarray) -> np.ndarray:
    if np.any(rdp < -_RDP_ROUNDING):
        raise ValueError(f"GNMax RDP is negative beyond rounding ({float(rdp.min()):.3g}); please report this")
    return np.maximum(rdp, 0.0)


def gnmax_data_dependent_rdp(log_q: Any, sigma: float, orders: Sequence[float]) -> np.ndarray:
    """Per-query RDP of GNMax, ``[len(log_q), len(orders)]``: Theorem 6 of Papernot et al. 2018, else Prop. 8.

    With ``mu2 = sigma sqrt(log 1/q)``, ``mu1 = mu2 + 1``, ``eps_i = mu_i / sigma^2`` (GNMax is
    ``(mu, mu / sigma^2)``-RDP), and where ``mu2 > 1``, ``lambda < mu1``, ``q e^{eps2} < 1`` and
    ``q <= e^{(mu2 - 1) eps2} / (mu1/(mu1-1) * mu2/(mu2-1))^mu2``, the RDP of order lambda is at most
    ``log((1-q) A^{lambda-1} + q B^{lambda-1}) / (lambda - 1)`` with
    ``A = (1-q) / (1 - (q e^{eps2})^{(mu2-1)/mu2})`` and ``B = e^{eps1} / q^{1/(mu1-1)}``; the result is never
    above the data-independent ``lambda / sigma^2``.  Negative values down to -1e-12 (rounding, for very
    confident votes) are returned as 0; a more negative value raises ``ValueError``.
    """
    sigma = _check_positive("sigma", sigma)
    orders = np.asarray(orders, dtype=np.float64)
    if orders.ndim != 1 or np.any(orders <= 1):
        raise ValueError(f"orders must be a 1-D array of Rényi orders > 1, got {orders!r:.80}")
    log_q = np.atleast_1d(np.asarray(log_q, dtype=np.float64))
    variance = sigma * sigma
    out = np.tile(orders / variance, (len(log_q), 1))
    for row, lq in enumerate(log_q):
        if lq == -np.inf:
            out[row] = 0.0  # the answer is fixed: no privacy cost
            continue
        mu2 = sigma * math.sqrt(-lq)
        mu1 = mu2 + 1.0
        if mu2 <= 1.0:
            continue
        eps1, eps2 = mu1 / variance, mu2 / variance
        log_threshold = (mu2 - 1.0) * eps2 - mu2 * (math.log(mu1 / (mu1 - 1.0)) + math.log(mu2 / (mu2 - 1.0)))
        if not (lq <= log_threshold and lq + eps2 < 0.0):
            continue
        use = orders < mu1
        lam = orders[use]
        log_1mq = math.log(-math.expm1(lq))  # log(1 - q)
        log_a = log_1mq - math.log(-math.expm1((lq + eps2) * (1.0 - 1.0 / mu2)))
        log_b = eps1 - lq / (mu1 - 1.0)
        bound = np.logaddexp(log_1mq + (lam - 1.0) * log_a, lq + (lam - 1.0) * log_b) / (lam - 1.0)
        out[row, use] = np.minimum(out[row, use], bound)
    return _clamp_rounding(out)


def gnmax_analysis(
    teacher_preds: Any,
    indices: Any,
    sigma: float,
    delta: float = 1e-5,
    *,
    num_labels: int | None = None,
    orders: Sequence[float] | None = None,
) -> PateAnalysis:
    """Rényi-DP analysis of GNMax answers (Papernot et al. 2018): data-dependent and -independent epsilon.

    Args:
        teacher_preds: Int labels in [0, num_labels), shape ``[num_teachers, num_examples]``.
        indices: 1-D int array of the answered examples (columns of ``teacher_preds``), one entry per query.
        sigma: Standard deviation of the GNMax noise, > 0.
        delta: Target delta in (0, 1).
        num_labels: Number of classes (None: ``max(teacher_preds) + 1``; see :func:`perform_analysis`).
        orders: Rényi orders (> 1) to optimise over; default :data:`GNMAX_ORDERS`.

    Returns:
        A :class:`PateAnalysis` (``mechanism="gnmax"``).

    Raises:
        ValueError: an argument is invalid.

    Example:
        >>> preds = np.zeros((250, 100), dtype=int)
        >>> result = gnmax_analysis(preds, np.arange(100), sigma=40.0, delta=1e-5, num_labels=10)
        >>> bool(result.data_dependent_epsilon < result.data_independent_epsilon)
        True
    """
    preds, num_labels = _check_preds(teacher_preds, num_labels)
    idx = _check_indices(indices, preds.shape[1])
    sigma = _check_positive("sigma", sigma)
    delta = _check_delta(delta)
    orders = GNMAX_ORDERS if orders is None else np.asarray(orders, dtype=np.float64)
    if orders.ndim != 1 or orders.size == 0 or np.any(~np.isfinite(orders)) or np.any(orders <= 1.01):
        raise ValueError(
            f"orders must be a non-empty 1-D array of finite Rényi orders > 1.01, got {orders!r:.80}"
        )
    counts = vote_counts(preds, num_labels)[idx]
    dependent = gnmax_data_dependent_rdp(gnmax_log_q(counts, sigma), sigma, orders).sum(axis=0)
    independent = len(idx) * orders / (sigma * sigma)  # Proposition 8, composed
    eps_dep, order_dep = rdp_privacy_accountant.compute_epsilon(orders, dependent, delta)
    eps_ind, order_ind = rdp_privacy_accountant.compute_epsilon(orders, independent, delta)
    return PateAnalysis(
        data_dependent_epsilon=float(eps_dep),
        data_independent_epsilon=float(eps_ind),
        delta=delta,
        queries=len(idx),
        orders=orders,
        data_dependent=dependent,
        data_independent=independent,
        best_order_dependent=float(order_dep),
        best_order_independent=float(order_ind),
        mechanism="gnmax",
    )
