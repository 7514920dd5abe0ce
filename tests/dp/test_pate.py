"""PATE: hand-computed privacy analyses (Papernot et al. 2017 and 2018), known qualitative facts, the noisy
aggregators' answer distributions, and argument checks.

The references below are the papers' formulas written out in plain arithmetic (math module only), or numbers
worked out by hand from them; none comes from running tfppml.dp.pate.
"""

import math

import dp_accounting
import numpy as np
import pytest

from tfppml.dp import pate

LOG_1E5 = math.log(1e5)  # log(1 / delta) for delta = 1e-5


def unanimous(num_teachers, num_examples, label=0):
    return np.full((num_teachers, num_examples), label, dtype=np.int64)


def votes(counts, num_examples=1):
    """teacher_preds giving every example the vote histogram `counts` (teachers vote in blocks)."""
    labels = np.concatenate([np.full(c, j) for j, c in enumerate(counts)])
    return np.tile(labels[:, None], (1, num_examples)).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------
# LNMax, Papernot et al. (2017): Theorem 3 (q), Theorem 2 (data-dependent log-moment), eps-DP moments bound.
# ------------------------------------------------------------------------------------------------------------
def moment_by_hand(counts, gamma, l):
    """One query's log-moment bound of order l, term by term from the paper."""
    top = max(counts)
    winner = counts.index(top)
    gaps = [top - c for j, c in enumerate(counts) if j != winner]
    q = sum((2 + gamma * d) / (4 * math.exp(gamma * d)) for d in gaps)
    q = min(q, 1 - 1 / len(counts))
    eps = 2 * gamma  # one teacher moves two counts
    bound = min(eps * eps * l * (l + 1) / 2, eps * l)
    if q < (math.exp(eps) - 1) / (math.exp(2 * eps) - 1):
        theorem_2 = math.log((1 - q) * ((1 - q) / (1 - math.exp(eps) * q)) ** l + q * math.exp(eps * l))
        bound = min(bound, theorem_2)
    return bound


def epsilons_by_hand(counts, queries, gamma, delta=1e-5, moments=8):
    orders = range(1, moments + 1)
    dep = min((queries * moment_by_hand(counts, gamma, l) + math.log(1 / delta)) / l for l in orders)
    ind = min(
        (queries * min(2 * gamma**2 * l * (l + 1), 2 * gamma * l) + math.log(1 / delta)) / l
        for l in orders
    )
    return dep, ind


def test_unanimous_single_query_worked_by_hand():
    # 100 teachers, 10 labels, all vote 0; gamma = 0.1.  Theorem 3: nine gaps of gamma * 100 = 10:
    q = 9 * (2 + 10) / (4 * math.exp(10))  # = 0.0012258
    assert q == pytest.approx(0.0012258, rel=1e-4)
    # Theorem 2 at l = 8 (eps = 0.2): (1-q)/(1-e^0.2 q) = 1.000272, ^8 -> 1.002178; plus q e^1.6 = 0.006071:
    alpha8 = math.log((1 - q) * ((1 - q) / (1 - math.exp(0.2) * q)) ** 8 + q * math.exp(1.6))  # = 0.006997
    assert alpha8 == pytest.approx(0.006997, rel=1e-3)
    # epsilon = min_l (alpha(l) + log 1e5) / l: l = 8 wins, (0.006997 + 11.51293) / 8 = 1.43999.
    # Data-independent: min(2 gamma^2 l (l+1), 2 gamma l) = 1.44 at l = 8 -> (1.44 + 11.51293) / 8 = 1.61912.
    dep, ind = pate.perform_analysis(unanimous(100, 1), [0], noise_eps=0.1, delta=1e-5, num_labels=10)
    assert dep == pytest.approx((alpha8 + LOG_1E5) / 8, rel=1e-9)
    assert dep == pytest.approx(1.43999, abs=1e-5)
    assert ind == pytest.approx(1.61912, abs=1e-5)


def test_unanimous_hundred_queries_tiny_versus_data_independent():
    # 100 answered queries: data-dependent (100 * 0.006997 + 11.51293) / 8 = 1.5266; data-independent: 100
    # queries of 2 gamma^2 l (l+1) = 0.02 l (l+1) -> best l = 2: (100 * 0.12 + 11.51293) / 2 = 11.7565.
    preds = unanimous(100, 100)
    dep, ind = pate.perform_analysis(preds, np.arange(100), noise_eps=0.1, delta=1e-5, num_labels=10)
    assert dep == pytest.approx(1.5266, abs=1e-4)
    assert ind == pytest.approx(11.7565, abs=1e-4)
    assert dep < ind / 7


def test_split_vote_worked_by_hand():
    # Votes [70, 20, 10], gamma = 0.05: gaps 2.5 and 3 -> q = 4.5/(4 e^2.5) + 5/(4 e^3) = 0.092346 + 0.062234.
    q = 4.5 / (4 * math.exp(2.5)) + 5 / (4 * math.exp(3))
    assert q == pytest.approx(0.154579, rel=1e-5)
    assert q < 1 / (math.exp(0.1) + 1)  # Theorem 2 applies (threshold 0.475)
    # l = 8: (1-q)/(1-e^0.1 q) = 1.019605 -> ^8 = 1.168040; 0.845421 * 1.168040 + q e^0.8 = 1.331496,
    # log -> 0.286319.
    # That beats the data-independent 0.5 * 0.1^2 * 72 = 0.36, and l = 8 is the best order:
    # dependent (0.286319 + 11.512925) / 8 = 1.474906, independent (0.36 + 11.512925) / 8 = 1.484116.
    dep, ind = pate.perform_analysis(votes([70, 20, 10]), [0], noise_eps=0.05, delta=1e-5)
    assert dep == pytest.approx(1.474906, abs=2e-6)
    assert ind == pytest.approx(1.484116, abs=2e-6)
    np.testing.assert_allclose(pate.laplace_q([70, 20, 10], 0.05), [q], rtol=1e-12)


@pytest.mark.parametrize(
    "counts, gamma, queries",
    [
        ([50, 30, 20], 0.1, 3),
        ([90, 5, 5, 0], 0.05, 40),
        ([12, 11, 2], 0.2, 7),
        ([250, 0], 0.02, 1000),
        ([3, 2], 1.0, 5),
    ],
)
def test_laplace_analysis_matches_the_formulas(counts, gamma, queries):
    dep, ind = pate.perform_analysis(
        votes(counts, queries), np.arange(queries), noise_eps=gamma, delta=1e-5, num_labels=len(counts)
    )
    ref_dep, ref_ind = epsilons_by_hand(counts, queries, gamma)
    assert dep == pytest.approx(ref_dep, rel=1e-10)
    assert ind == pytest.approx(ref_ind, rel=1e-10)


def test_q_above_theorem_2_threshold_falls_back_to_data_independent():
    # Votes [34, 33, 33], gamma = 0.1: q = 2 * 2.1 / (4 e^0.1) = 0.950, capped at 1 - 1/3, which is above
    # Theorem 2's threshold 1/(e^0.2 + 1).
    dep, ind = pate.perform_analysis(votes([34, 33, 33], 5), np.arange(5), noise_eps=0.1, delta=1e-5)
    assert dep == ind


def test_repeated_indices_count_as_separate_queries():
    preds = votes([60, 40], 2)
    once = pate.laplace_analysis(preds, [0], noise_eps=0.1)
    thrice = pate.laplace_analysis(preds, [0, 0, 1], noise_eps=0.1)
    np.testing.assert_allclose(thrice.data_dependent, 3 * once.data_dependent)
    assert thrice.queries == 3


def test_unvoted_labels_still_count():
    preds = votes([90, 10], 10)
    two = pate.perform_analysis(preds, np.arange(10), noise_eps=0.1)
    ten = pate.perform_analysis(preds, np.arange(10), noise_eps=0.1, num_labels=10)
    assert ten[0] > two[0] and ten[1] == two[1]


# ------------------------------------------------------------------------------------------------------------
# GNMax, Papernot et al. (2018): Proposition 7 (q), Theorem 6 (data-dependent RDP), Proposition 8, and
# dp-accounting's RDP -> (epsilon, delta) conversion: eps = rdp + log(1 - 1/a) - log(delta a) / (a - 1)
# (Canonne, Kamath & Steinke 2020, Prop. 12), or eps = 0 when the total variation bound sqrt(1 - e^-rdp) of
# Bretagnolle-Huber is already <= delta.
# ------------------------------------------------------------------------------------------------------------
def gnmax_rdp_by_hand(counts, sigma, order):
    top = max(counts)
    winner = counts.index(top)
    q = sum(0.5 * math.erfc((top - c) / (2 * sigma)) for j, c in enumerate(counts) if j != winner)
    q = min(q, 1 - 1 / len(counts))
    independent = order / sigma**2
    mu2 = sigma * math.sqrt(math.log(1 / q))
    mu1 = mu2 + 1
    eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
    condition = q <= math.exp((mu2 - 1) * eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1)) ** mu2
    if mu2 <= 1 or order >= mu1 or not condition or q * math.exp(eps2) >= 1:
        return independent
    a = (1 - q) / (1 - (q * math.exp(eps2)) ** ((mu2 - 1) / mu2))
    b = math.exp(eps1) / q ** (1 / (mu1 - 1))
    return min(independent, math.log((1 - q) * a ** (order - 1) + q * b ** (order - 1)) / (order - 1))


def rdp_to_epsilon_by_hand(rdp, orders, delta):
    def one(r, a):
        if math.sqrt(-math.expm1(-r)) < delta:
            return 0.0
        return r + math.log(1 - 1 / a) - math.log(delta * a) / (a - 1)

    return max(0.0, min(one(r, a) for r, a in zip(rdp, orders)))


ORDERS = [1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 32.0, 50.0, 80.0]


def test_gnmax_unanimous_worked_by_hand():
    # 100 teachers agree, 2 labels, sigma = 10: q = erfc(100 / 20) / 2 = 7.6875e-13, log q = -27.894;
    # mu2 = 10 sqrt(27.894) = 52.81, mu1 = 53.81, eps2 = 0.5281, eps1 = 0.5381.
    q = 0.5 * math.erfc(5.0)
    assert q == pytest.approx(7.6875e-13, rel=1e-4)
    mu2 = 10 * math.sqrt(-math.log(q))
    assert mu2 == pytest.approx(52.81, abs=0.01)
    # Theorem 6's condition holds:
    # log q = -27.9 <= (mu2 - 1) eps2 - mu2 (log(mu1/(mu1-1)) + log(mu2/(mu2-1))) = 25.4.
    # At order 20: q e^eps2 = 1.304e-12, so A = (1-q) / (1 - (1.304e-12)^(51.815/52.815)) = 1 + 1.4e-12;
    # B = e^0.53815 / q^(1/52.815) = e^(0.53815 + 0.52815) = 2.9045, q B^19 = 7.6875e-13 * e^20.26 = 4.83e-4;
    # the bound log((1-q) A^19 + q B^19) / 19 = log(1 + 4.83e-4) / 19 = 2.54e-5, far below 20/100 = 0.2.
    rdp = pate.gnmax_data_dependent_rdp(pate.gnmax_log_q([100, 0], 10.0), 10.0, ORDERS)[0]
    assert rdp[ORDERS.index(20.0)] == pytest.approx(2.54e-5, rel=0.01)
    # (The plain arithmetic loses ~1e-16 absolute to cancellation in (1-q) A^(order-1) ~ 1 + 1e-12.)
    by_hand = [gnmax_rdp_by_hand([100, 0], 10.0, a) for a in ORDERS]
    np.testing.assert_allclose(rdp, by_hand, rtol=1e-9, atol=1e-15)
    result = pate.gnmax_analysis(unanimous(100, 1), [0], sigma=10.0, delta=1e-5, orders=ORDERS)
    # At order 1.5 the RDP is 2.5e-12: total variation <= sqrt(2.5e-12) = 1.6e-6 < delta, so epsilon = 0.
    assert result.data_dependent_epsilon == rdp_to_epsilon_by_hand(rdp, ORDERS, 1e-5) == 0.0
    # Ten such queries: still 0; a thousand: RDP 2.5e-9 at order 1.5, TV bound 5e-5 > delta, so epsilon > 0.
    preds = unanimous(100, 1000)
    thousand = pate.gnmax_analysis(preds, np.arange(1000), sigma=10.0, delta=1e-5, orders=ORDERS)
    assert thousand.data_dependent_epsilon == pytest.approx(
        rdp_to_epsilon_by_hand([1000 * r for r in rdp], ORDERS, 1e-5), rel=1e-9
    )
    assert thousand.data_dependent_epsilon > 0
    # Data-independent (Proposition 8): order / sigma^2; best at order 32:
    # 0.32 + log(31/32) - log(32e-5)/31 = 0.5478.
    ind = rdp_to_epsilon_by_hand([a / 100 for a in ORDERS], ORDERS, 1e-5)
    assert ind == pytest.approx(0.32 + math.log(31 / 32) - math.log(32e-5) / 31, rel=1e-12)
    assert ind == pytest.approx(0.5478, abs=1e-4)
    assert result.data_independent_epsilon == pytest.approx(ind, rel=1e-12)
    assert result.data_dependent_epsilon < 0.25 * result.data_independent_epsilon


@pytest.mark.parametrize(
    "counts, sigma, queries",
    [([200, 40, 10], 40.0, 10), ([30, 25, 5], 5.0, 3), ([250, 0, 0, 0], 40.0, 100), ([7, 3], 1.0, 20)],
)
def test_gnmax_analysis_matches_the_formulas(counts, sigma, queries):
    preds = votes(counts, queries)
    result = pate.gnmax_analysis(
        preds, np.arange(queries), sigma=sigma, delta=1e-6, num_labels=len(counts), orders=ORDERS
    )
    rdp = [queries * gnmax_rdp_by_hand(counts, sigma, a) for a in ORDERS]
    np.testing.assert_allclose(result.data_dependent, rdp, rtol=1e-9, atol=1e-13)
    assert result.data_dependent_epsilon == pytest.approx(rdp_to_epsilon_by_hand(rdp, ORDERS, 1e-6), rel=1e-9)
    ind = [queries * a / sigma**2 for a in ORDERS]
    ind_eps = rdp_to_epsilon_by_hand(ind, ORDERS, 1e-6)
    assert result.data_independent_epsilon == pytest.approx(ind_eps, rel=1e-9)


def test_gnmax_data_independent_is_the_composed_gaussian_mechanism():
    # Sensitivity sqrt(2) (two counts move by one) with std sigma is dp-accounting's Gaussian with
    # noise multiplier sigma / sqrt(2).
    sigma, queries = 40.0, 300
    result = pate.gnmax_analysis(votes([120, 100, 30], queries), np.arange(queries), sigma=sigma, delta=1e-5)
    accountant = dp_accounting.rdp.RdpAccountant(list(result.orders))
    accountant.compose(dp_accounting.GaussianDpEvent(sigma / math.sqrt(2)), queries)
    assert result.data_independent_epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


# ------------------------------------------------------------------------------------------------------------
# Qualitative facts, for both mechanisms.
# ------------------------------------------------------------------------------------------------------------
def both(preds, indices, num_labels=None):
    lap = pate.perform_analysis(preds, indices, noise_eps=0.05, delta=1e-5, num_labels=num_labels)
    gauss = pate.gnmax_analysis(preds, indices, sigma=20.0, delta=1e-5, num_labels=num_labels)
    return {"laplace": lap, "gnmax": (gauss.data_dependent_epsilon, gauss.data_independent_epsilon)}


@pytest.mark.parametrize("seed", range(5))
def test_data_dependent_never_exceeds_data_independent(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, 200)
    agree = rng.random((150, 200)) < rng.uniform(0.1, 1.0, 200)  # per-example agreement from 10% to 100%
    preds = np.where(agree, truth, rng.integers(0, 10, (150, 200)))
    for dep, ind in both(preds, rng.integers(0, 200, 120), num_labels=10).values():
        assert dep <= ind


def test_more_teachers_with_the_same_agreement_lower_the_data_dependent_bound():
    # 80% agreement; with fewer than ~100 teachers the Laplace data-dependent bound is not better than the
    # data-independent one at gamma = 0.05, so the comparison starts there.
    results = [both(votes([int(0.8 * t), t - int(0.8 * t)], 50), np.arange(50)) for t in (100, 200, 400, 800)]
    for mechanism in ("laplace", "gnmax"):
        deps = [r[mechanism][0] for r in results]
        # Strictly smaller each time, until GNMax's bound reaches exactly 0 (see the worked example above).
        assert all(a > b or a == b == 0.0 for a, b in zip(deps, deps[1:])), (mechanism, deps)
        assert deps[0] > deps[1] > deps[-1]
        assert len({r[mechanism][1] for r in results}) == 1  # the data-independent bound ignores the votes


def test_epsilon_grows_with_the_number_of_answered_queries():
    preds = votes([70, 20, 10], 1000)
    results = [both(preds, np.arange(n)) for n in (1, 10, 100, 1000)]
    for mechanism in ("laplace", "gnmax"):
        for k in (0, 1):
            values = [r[mechanism][k] for r in results]
            assert all(a < b for a, b in zip(values, values[1:])), (mechanism, k, values)


def test_pysyft_style_example():
    # PySyft's own check: random votes, the first ten examples unanimous.
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 10, (100, 50))
    preds[:, :10] = 0
    dep, ind = pate.perform_analysis(preds, np.arange(10), noise_eps=0.1, delta=1e-5, num_labels=10)
    assert dep < ind


# ------------------------------------------------------------------------------------------------------------
# The aggregators: answer distributions match the q of the analyses (exact for two labels), keys.
# ------------------------------------------------------------------------------------------------------------
def minority_rate(aggregate, gap, param, n=40_000, **kwargs):
    teachers = 20
    preds = votes([(teachers + gap) // 2, (teachers - gap) // 2], n)
    return np.mean(aggregate(preds, param, 2, **kwargs) == 1)


def test_noisy_max_answer_distribution():
    # Two labels with gap d: Pr[Lap - Lap' > d] = (2 + gamma d) / (4 e^{gamma d}) exactly; d = 4, gamma = 0.5:
    expected = (2 + 2) / (4 * math.exp(2))  # 0.1353
    rate = minority_rate(pate.noisy_max, 4, 0.5)
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / 40_000)


def test_gnmax_answer_distribution():
    # Pr[N - N' > d] = Pr[N(0, 2 sigma^2) > d] = erfc(d / (2 sigma)) / 2; d = 4, sigma = 3: 0.1729.
    expected = 0.5 * math.erfc(4 / 6)
    rate = minority_rate(pate.gnmax, 4, 3.0)
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / 40_000)


@pytest.mark.parametrize("aggregate, param", [(pate.noisy_max, 0.5), (pate.gnmax, 3.0)])
def test_aggregator_seeds(aggregate, param):
    preds = votes([11, 9], 3000)
    a = aggregate(preds, param, 2, seed=5)
    np.testing.assert_array_equal(a, aggregate(preds, param, 2, seed=5))
    assert not np.array_equal(a, aggregate(preds, param, 2, seed=6))
    assert not np.array_equal(aggregate(preds, param, 2), aggregate(preds, param, 2))  # fresh OS keys


@pytest.mark.parametrize("aggregate, param", [(pate.noisy_max, 100.0), (pate.gnmax, 0.01)])
def test_aggregators_return_the_plurality_under_little_noise(aggregate, param):
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 5, (31, 400))
    counts = pate.vote_counts(preds, 5)
    clear = np.sort(counts, axis=1)[:, -1] > np.sort(counts, axis=1)[:, -2]
    np.testing.assert_array_equal(aggregate(preds, param, 5)[clear], np.argmax(counts, axis=1)[clear])


def test_vote_counts():
    np.testing.assert_array_equal(pate.vote_counts([[0, 1], [0, 0], [2, 0]], 3), [[2, 0, 1], [2, 1, 0]])


# ------------------------------------------------------------------------------------------------------------
# Bad arguments.
# ------------------------------------------------------------------------------------------------------------
GOOD = dict(teacher_preds=votes([6, 4], 3), indices=[0, 1, 2], noise_eps=0.1, delta=1e-5)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(teacher_preds=np.zeros(5, int)), "teacher_preds must have shape"),
        (dict(teacher_preds=np.zeros((3, 0), int)), "teacher_preds must have shape"),
        (dict(teacher_preds=np.zeros((3, 2)) + 0.5), "teacher_preds must hold integer"),
        (dict(teacher_preds=np.full((3, 2), True)), "teacher_preds must hold integer"),
        (dict(teacher_preds=np.array([[0, -1], [1, 1]])), r"teacher_preds must hold labels in \[0, num_"),
        (dict(teacher_preds=np.array([[0, 5], [1, 1]]), num_labels=3), "found 5"),
        (dict(num_labels=1), "num_labels must be an int >= 2"),
        (dict(indices=[0, 3]), r"indices must be example indices in \[0, num_examples=3\)"),
        (dict(indices=[-1]), "indices must be example indices"),
        (dict(indices=[]), "indices must name at least one"),
        (dict(indices=[[0, 1]]), "indices must be a 1-D array"),
        (dict(indices=[0.0, 1.0]), "indices must hold integer"),
        (dict(noise_eps=0.0), "noise_eps must be finite and > 0"),
        (dict(noise_eps=-1.0), "noise_eps"),
        (dict(noise_eps=float("inf")), "noise_eps"),
        (dict(noise_eps="0.1"), "noise_eps must be a real number"),
        (dict(delta=0.0), r"delta must be a number in \(0, 1\)"),
        (dict(delta=1.0), "delta"),
        (dict(delta=-1e-5), "delta"),
        (dict(moments=0), "moments must be an int >= 1"),
        (dict(moments=2.5), "moments"),
        (dict(beta=0.0), "beta must be finite and > 0"),
    ],
)
def test_perform_analysis_bad_arguments(changes, match):
    with pytest.raises(ValueError, match=match):
        pate.perform_analysis(**{**GOOD, **changes})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=0.0), "sigma must be finite and > 0"),
        (dict(sigma=40.0, orders=[1.0, 2.0]), "orders must be"),
        (dict(sigma=40.0, orders=[]), "orders must be"),
        (dict(sigma=40.0, delta=2.0), "delta"),
        (dict(sigma=40.0, indices=[7]), "indices"),
    ],
)
def test_gnmax_analysis_bad_arguments(kwargs, match):
    args = {**dict(teacher_preds=votes([6, 4], 3), indices=[0, 1], delta=1e-5), **kwargs}
    with pytest.raises(ValueError, match=match):
        pate.gnmax_analysis(**args)


@pytest.mark.parametrize("aggregate", [pate.noisy_max, pate.gnmax])
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((votes([6, 4], 3), 0.0, 2), {}, "must be finite and > 0"),
        ((votes([6, 4], 3), 1.0, 1), {}, "num_labels must be an int >= 2"),
        ((votes([6, 4], 3), 1.0, 2), dict(seed=-3), "seed must be None or an int"),
        ((votes([6, 4], 3) + 1, 1.0, 2), {}, "teacher_preds must hold labels"),
    ],
)
def test_aggregator_bad_arguments(aggregate, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        aggregate(*args, **kwargs)


def test_gnmax_analysis_survives_rounding_on_a_confident_vote():
    # Issue #19: votes [240, 5, 5, 0, ...] at sigma 20 gave per-query RDP -2.8e-16 at order 1.1, and
    # dp-accounting's conversion raised "Renyi divergence cannot be negative".
    counts = [240, 5, 5] + [0] * 7
    preds = np.repeat(np.arange(10), counts)[:, None]
    per_query = pate.gnmax_data_dependent_rdp(pate.gnmax_log_q(pate.vote_counts(preds, 10), 20.0), 20.0,
                                              pate.GNMAX_ORDERS)
    assert per_query.min() == 0.0 and per_query.max() > 0.0
    for queries in (1, 100):
        result = pate.gnmax_analysis(np.repeat(preds, queries, axis=1), np.arange(queries), sigma=20.0, delta=1e-5,
                                     num_labels=10)
        assert 0.0 <= result.data_dependent_epsilon <= result.data_independent_epsilon


def test_negative_rdp_beyond_rounding_still_raises():
    with pytest.raises(ValueError, match="negative beyond rounding"):
        pate._clamp_rounding(np.array([0.1, -1e-6]))
