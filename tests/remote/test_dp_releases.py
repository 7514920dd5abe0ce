"""DP releases beyond sums and means (issue #18): noised counts, histograms and quantiles with stated bounds and
clamping, each one Gaussian release charged before its noise is drawn.

The worker tests run against a real worker process of their own, with large budgets, so that they neither drain
nor depend on the shared `hospital` fixture's. The functions of `tfppml.remote.releases` are also checked
directly (sensitivities, bins, the quantiles' post-processing), and a control shows the differencing attack that
the noise protects against.
"""

import math

import numpy as np
import pytest

import tfppml.remote
from tfppml.errors import PolicyDenied
from tfppml.net.transport import RemoteError
from tfppml.remote import releases
from tfppml.remote.audit import read_entries
from tfppml.remote.policy import calibrate_gaussian
from tfppml.remote.service import ledger_path

from .conftest import make_hospital, write_setup

DELTA = 1e-5
BIG = {"dp": {"epsilon_budget": 1000.0, "delta": DELTA}}
POLICY = {
    "datasets": {name: BIG for name in ("patients", "labels", "tiny")},
    "identities": {"analyst": {"datasets": ["patients", "labels", "tiny"], **BIG}},
}

# Failure probability of each statistical check below: < 1e-6 (see `_check_std`).
LOG_TERM = math.log(2.5e6)  # two chi-square tails of e^-x each: 2 / 2.5e6 = 8e-7
Z_MEAN = 5.5  # P(|N(0, 1)| > 5.5) = 3.8e-8; 8e-7 + 3.8e-8 < 1e-6


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    options = write_setup(tmp_path_factory.mktemp("releases"), policy=POLICY)
    with make_hospital(options) as cluster:
        yield cluster, options


@pytest.fixture(scope="module")
def analyst(clinic):
    cluster, _ = clinic
    with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as remote:
        yield remote


def _column(remote, j=0):
    """Column j of the patients table as [200, 1]; x @ (a row-constant tensor) keeps the rows certified."""
    pick = np.zeros((4, 1))
    pick[j, 0] = 1.0
    return remote.dataset("patients") @ tfppml.remote.send(pick, remote)


def _charges(options) -> int:
    return sum(1 for _ in read_entries(ledger_path(options["audit"])))


def _check_std(residuals: np.ndarray, sigma: float) -> None:
    """Residuals (noisy - exact) are i.i.d. N(0, sigma^2) with the stated sigma.

    Derivation: for k i.i.d. N(0, sigma^2), S = sum(r^2) / sigma^2 is chi-square with k degrees of freedom, and
    Laurent & Massart (2000, Lemma 1) give, for every x > 0, P(S - k >= 2 sqrt(k x) + 2 x) <= e^-x and
    P(k - S >= 2 sqrt(k x)) <= e^-x. With x = ln(2.5e6) both tails together fail with probability <= 8e-7.
    (For k = 4096 that accepts a sample std within about [0.94, 1.06] sigma; a sensitivity off by sqrt(2), or
    a multiplier of another epsilon, is far outside.) The mean is checked too: sum(r) / (sigma sqrt(k)) is
    N(0, 1), outside +-5.5 with probability 3.8e-8.
    """
    k = residuals.size
    s = float(np.sum(residuals**2)) / sigma**2
    low, high = k - 2 * math.sqrt(k * LOG_TERM), k + 2 * math.sqrt(k * LOG_TERM) + 2 * LOG_TERM
    assert low <= s <= high, f"sample std {math.sqrt(s / k):.4f} sigma (accepted {math.sqrt(low / k):.4f} to " \
        f"{math.sqrt(high / k):.4f}) over {k} residuals"
    assert abs(float(np.sum(residuals)) / (sigma * math.sqrt(k))) <= Z_MEAN


# -- (a) honest use: near the truth at a large epsilon


def test_releases_are_near_the_truth_at_a_large_epsilon(analyst, data):
    table, column = data["patients"], data["patients"][:, 0]
    multiplier = calibrate_gaussian(8.0, DELTA)
    # 6 sigma per entry: each assertion fails with probability < 2e-9 per entry.
    counts = analyst.dataset("patients").dp_count(lower=40, upper=60, epsilon=8.0)
    assert counts.label == {"dp": ["patients"]} and counts.shape == (4,)
    assert counts.privacy["noise_stddev"] == pytest.approx(multiplier * 2.0)  # sqrt(4 columns)
    truth = ((table >= 40) & (table <= 60)).sum(axis=0)
    assert np.all(np.abs(counts.get() - truth) < 6 * multiplier * 2.0)

    edges = [20, 30, 40, 50, 60, 70, 80, 90]
    histogram = _column(analyst).dp_histogram(edges, epsilon=8.0)
    assert histogram.shape == (7,) and histogram.privacy["clamped"] is True
    assert histogram.privacy["noise_stddev"] == pytest.approx(multiplier)
    truth = np.histogram(np.clip(column, 20, 90), edges)[0]  # the column reaches 90.12: clamped into the last bin
    assert np.all(np.abs(histogram.get() - truth) < 6 * multiplier)

    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    quantiles = _column(analyst).dp_quantiles(qs, lower=0, upper=100, epsilon=8.0, bins=20)
    assert quantiles.shape == (5,) and quantiles.privacy["resolution"] == 5.0
    value = quantiles.get()
    assert np.all(np.diff(value) >= 0)
    # Within one bin (5) plus 1: in 20000 simulated releases of this column the largest error was 2.6.
    assert np.all(np.abs(value - np.quantile(column, qs)) < 6.0)

    # sum and mean are unchanged: clipped column sums, the mean divided by the public row count.
    mean = analyst.dataset("patients").dp_mean(lower=0, upper=100, epsilon=8.0)
    # The reported stddev is that of the released mean (the sum's noise divided by the 200 rows).
    assert mean.privacy["noise_stddev"] == pytest.approx(multiplier * 100 * 2.0 / 200)
    assert np.all(np.abs(mean.get() - table.mean(axis=0)) < 6 * multiplier * 100 * 2.0 / 200)


# -- (b) the noise is calibrated: multiplier * sensitivity, i.i.d.


def test_histogram_noise_has_the_stated_std(analyst, data):
    """4 releases x 1024 bins at known counts: 4096 residuals, each N(0, multiplier^2) (sensitivity 1)."""
    column = data["patients"][:, 0]
    edges = np.linspace(0.0003, 100.0003, 1025).tolist()
    truth = np.histogram(column, edges)[0]
    sigma = calibrate_gaussian(1.0, DELTA)  # computed here, not taken from the worker's reply
    residuals = []
    for _ in range(4):
        release = _column(analyst).dp_histogram(edges, epsilon=1.0)
        assert release.privacy["noise_stddev"] == pytest.approx(sigma)
        residuals.append(release.get() - truth)
    _check_std(np.concatenate(residuals), sigma)


def test_count_noise_has_the_stated_std_with_sqrt_columns_sensitivity(analyst, data):
    """4 count releases of a [200, 256] tensor (the 4 columns repeated): 1024 residuals of std multiplier * 16."""
    pick = np.zeros((4, 256))
    pick[np.arange(256) % 4, np.arange(256)] = 1.0
    wide = analyst.dataset("patients") @ tfppml.remote.send(pick, analyst)
    truth = ((data["patients"] @ pick >= 40) & (data["patients"] @ pick <= 60)).sum(axis=0)
    sigma = calibrate_gaussian(1.0, DELTA) * 16.0  # L2 sensitivity sqrt(256)
    residuals = [wide.dp_count(lower=40, upper=60, epsilon=1.0).get() - truth for _ in range(4)]
    _check_std(np.concatenate(residuals), sigma)


# -- (c) clamping


def test_values_outside_the_edges_or_bounds_land_in_the_end_bins(analyst, data):
    # The caller's own tensor is public: released without noise, so the clamping shows exactly.
    values = np.array([-1e9, -5.0, 0.5, np.nan, -np.inf, 1.0, 1.5, 2.0, 7.0, np.inf])
    own = tfppml.remote.send(values, analyst)
    histogram = own.dp_histogram([0, 1, 2], epsilon=1.0)
    assert histogram.privacy == {"epsilon": 1.0, "noise_stddev": 0.0, "clamped": True}
    # [0, 1): -1e9, -5, 0.5, NaN, -inf (below the first edge, or NaN); [1, 2]: 1, 1.5, 2, 7, inf.
    assert histogram.get().tolist() == [5.0, 5.0]
    assert own.dp_count(lower=0, upper=2, epsilon=1.0).get().tolist() == 4.0  # NaN and +-inf in no interval
    quantiles = own.dp_quantiles([0.0, 0.5, 1.0], lower=0, upper=2, epsilon=1.0, bins=2).get()
    assert quantiles.tolist() == [0.0, 1.0, 2.0]  # half the rows clamped to 0 (first bin), half to 2 (last)
    # On the data set: 40 < most of the column < 60 puts the rest in the end bins (20-90 uniform).
    column = data["patients"][:, 0]
    noisy = _column(analyst).dp_histogram([40, 50, 60], epsilon=8.0).get()
    sigma = calibrate_gaussian(8.0, DELTA)
    assert np.all(np.abs(noisy - [np.sum(column < 50), np.sum(column >= 50)]) < 6 * sigma)
    assert abs(noisy.sum() - 200) < 6 * sigma * math.sqrt(2)  # every row counted once


# -- (d) bad arguments: named, and nothing charged


COUNT = {"fn": "count", "lower": 0, "upper": 1, "epsilon": 1}
HISTOGRAM = {"fn": "histogram", "edges": [0, 1], "epsilon": 1}
QUANTILES = {"fn": "quantiles", "qs": [0.5], "lower": 0, "upper": 1, "epsilon": 1}
BAD = [
    ({"fn": "median"}, r"`fn` of a DP release must be one of \['sum', 'mean', 'count', 'histogram', 'quantiles'\]"),
    ({**COUNT, "lower": "0"}, r"`lower` must be a finite number, got '0'"),
    ({**COUNT, "lower": 2}, r"`lower` must be less than `upper`, got lower=2, upper=1"),
    ({**COUNT, "epsilon": 0}, r"`epsilon` must be positive, got 0.0"),
    ({**COUNT, "fn": "sum", "epsilon": True}, r"`epsilon` must be a finite number, got True"),
    ({"fn": "histogram", "epsilon": 1}, r"`edges` must be a list of 2 to 1025 bin edges, got NoneType"),
    ({**HISTOGRAM, "edges": [1.0]}, r"`edges` must be a list of 2 to 1025 bin edges, got 1 items"),
    ({**HISTOGRAM, "edges": list(range(1026))}, r"`edges` .* got 1026 items"),
    ({**HISTOGRAM, "edges": [0, 2, 2, 3]}, r"`edges` must be strictly increasing"),
    ({**HISTOGRAM, "epsilon": -1}, r"`epsilon` must be positive, got -1.0"),
    ({**QUANTILES, "qs": []}, r"`qs` must be a list of 1 to 1024"),
    ({**QUANTILES, "qs": [0.5] * 1025}, r"`qs` .* got 1025 items"),
    ({**QUANTILES, "qs": [0.5, 1.5]}, r"`qs` must be numbers in \[0, 1\], got 1.5"),
    ({**QUANTILES, "bins": 0}, r"`bins` must be an int in \[1, 65536\], got 0"),
    ({**QUANTILES, "bins": 65537}, r"`bins` must be an int in \[1, 65536\], got 65537"),
    ({**QUANTILES, "bins": 2.5}, r"`bins` must be an int in \[1, 65536\], got 2.5"),
    ({**QUANTILES, "lower": -1e308, "upper": 1e308}, r"`upper` - `lower` must be finite"),
]

# JSON metadata carries finite numbers only (the client's encoder refuses NaN and infinities before sending);
# the worker checks them anyway, for a client that writes its own frames.
NON_FINITE = [
    ({**COUNT, "lower": float("nan")}, r"`lower` must be a finite number, got nan"),
    ({**COUNT, "epsilon": float("inf")}, r"`epsilon` must be a finite number, got inf"),
    ({**HISTOGRAM, "edges": [0, float("inf")]}, r"`edges` must hold finite numbers only, got inf"),
    ({**QUANTILES, "qs": [float("nan")]}, r"`qs` must hold finite numbers only, got nan"),
]


@pytest.mark.parametrize("meta, message", NON_FINITE)
def test_non_finite_arguments_are_refused(meta, message):
    with pytest.raises(ValueError, match=message):
        releases.prepare(meta, (10, 1))


def test_bad_arguments_are_refused_by_name_before_anything_is_charged(clinic, analyst):
    _, options = clinic
    column = _column(analyst)
    before = _charges(options)
    for meta, message in BAD:
        with pytest.raises(RemoteError, match="ValueError.*" + message):
            analyst.call({"op": "dp", "x": column.id, **meta})
    # Shape-only checks: a histogram or quantiles of more than one column, a sum of a scalar.
    with pytest.raises(RemoteError, match=r"a DP histogram needs one column, x of shape \[n\] or \[n, 1\], got \[200, 4\]"):
        analyst.dataset("patients").dp_histogram([0, 1], epsilon=1.0)
    with pytest.raises(RemoteError, match=r"a DP quantiles needs one column.*got \[200, 4\]"):
        analyst.dataset("patients").dp_quantiles([0.5], lower=0, upper=1, epsilon=1.0)
    with pytest.raises(RemoteError, match="a DP sum runs over the rows .* got a scalar"):
        analyst.dataset("patients").sum().dp_sum(lower=0, upper=1, epsilon=1.0)
    # Refused on the client before sending: a nested list is not a list of edges.
    with pytest.raises(ValueError, match=r"`edges` must be a flat sequence of numbers, got shape \[2, 2\]"):
        column.dp_histogram([[0, 1], [2, 3]], epsilon=1.0)
    with pytest.raises(ValueError, match=r"`meta\['edges'\]\[1\]` is inf; JSON metadata carries finite numbers"):
        column.dp_histogram([0, np.inf], epsilon=1.0)
    assert _charges(options) == before  # nothing charged
    refused = [e for _, e in read_entries(options["audit"]) if e["op"] == "dp"][-(len(BAD) + 3):]
    assert all(e.get("error") == "ValueError" and "epsilon_spent" not in e for e in refused)
    spent = column.dp_count(lower=0, upper=1, epsilon=0.5).privacy["epsilon_spent"]  # the counter does count
    assert _charges(options) == before + 1 and spent > 0


# -- (e) uncertified rows


def test_uncertified_objects_are_refused_without_a_charge(clinic, analyst):
    _, options = clinic
    x = analyst.dataset("patients")
    column = _column(analyst)
    mask = tfppml.remote.send(np.eye(200)[:, :1], analyst)  # varies along the rows: selects row 0
    before = _charges(options)
    refusals = [
        lambda: (x * mask).dp_count(lower=0, upper=100, epsilon=1.0),
        lambda: (column * mask).dp_histogram([0, 50, 100], epsilon=1.0),
        lambda: (column * mask).dp_quantiles([0.5], lower=0, upper=100, epsilon=1.0),
        lambda: x.reshape([800]).dp_histogram([0, 50, 100], epsilon=1.0),  # the row axis reshaped away
        lambda: x.reshape([100, 8]).dp_count(lower=0, upper=100, epsilon=1.0),
        lambda: x.sum(axis=0).dp_quantiles([0.5], lower=0, upper=100, epsilon=1.0),  # an aggregate
        lambda: column.dp_histogram([0, 100], epsilon=1.0).dp_count(lower=0, upper=10, epsilon=1.0),  # a release
    ]
    for attempt in refusals:
        with pytest.raises(PolicyDenied, match=r"policy rule 'identities\.analyst\.dp'.*not certified"):
            attempt()
    assert _charges(options) == before + 1  # only the histogram released inside the last attempt
    # A reshape that keeps the rows keeps the certification.
    assert column.reshape([200]).dp_histogram([0, 100], epsilon=1.0).shape == (1,)


# -- (f) the control: a release without noise gives a row away


def test_control_a_noise_free_histogram_reveals_the_one_row_an_attacker_does_not_know(analyst, data):
    """The attacker knows every row but row 0 (the adversary DP is defined against) and asks for a fine
    histogram. Without noise (the weakened release: multiplier 0, run in-process through the same release code)
    the histogram minus the known rows' is 1 in exactly the bin of row 0's value: its value to 0.1. The real
    worker's noise (epsilon 1) leaves hundreds of bins as likely."""
    column = data["patients"][:, :1]
    edges = np.linspace(0.0003, 100.0003, 1025)
    known = np.histogram(column[1:, 0], edges)[0]
    weakened = releases.prepare({"fn": "histogram", "edges": edges.tolist(), "epsilon": 1.0}, column.shape)
    difference = weakened.run(column, multiplier=0.0) - known
    (bin_of_row,) = np.flatnonzero(difference > 0.5)
    assert difference.tolist().count(1.0) == 1 and difference.tolist().count(0.0) == 1023
    assert edges[bin_of_row] <= column[0, 0] < edges[bin_of_row + 1]  # row 0, to within 0.098

    noisy = _column(analyst).dp_histogram(edges.tolist(), epsilon=1.0).get() - known
    # Each of the 1023 other bins exceeds 0.5 with probability P(N(0, 4.05^2) > 0.5) = 0.45: fewer than 100 of
    # them has probability below 1e-60 (a binomial tail).
    assert np.sum(noisy > 0.5) > 100


# -- the functions of tfppml.remote.releases on their own


def test_sensitivities():
    assert releases.sum_sensitivity(-3, 2, (10, 4)) == 6.0  # max(|lower|, |upper|) * sqrt(4)
    assert releases.sum_sensitivity(0, 5, (10,)) == 5.0
    assert releases.count_sensitivity((10,)) == 1.0 and releases.count_sensitivity((10, 4, 4)) == 4.0
    assert releases.prepare({"fn": "count", "lower": 0, "upper": 1, "epsilon": 1}, (10, 9)).sensitivity == 3.0
    for meta in ({"fn": "histogram", "edges": [0, 1, 2]}, {"fn": "quantiles", "qs": [0.5], "lower": 0, "upper": 1}):
        release = releases.prepare({**meta, "epsilon": 1.0}, (10, 1))
        assert release.sensitivity == 1.0 and release.clamped


def test_bins_follow_numpy_inside_and_clamp_outside():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 10, size=(500, 1))
    edges = np.array([0.0, 1.0, 2.5, 7.0, 10.0])
    assert releases.bin_counts(values, edges).tolist() == np.histogram(values, edges)[0].tolist()
    outside = np.array([-np.inf, -1.0, np.nan, 0.0, 0.999, 1.0, 2.0, 3.0, np.inf])
    assert releases.bin_counts(outside, np.array([0.0, 1.0, 2.0])).tolist() == [5.0, 4.0]
    counts = releases.in_bounds_counts(np.array([[0.0, np.nan], [1.0, 5.0], [2.0, 1.0]]), 0.0, 1.0)
    assert counts.dtype == np.float64 and counts.tolist() == [2.0, 1.0]


def test_quantiles_post_processing_of_a_noise_free_histogram():
    qs = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    # 10 rows in [1, 2), 10 in [2, 3), on 4 bins of [0, 4]: the CDF is linear within each bin.
    assert releases.quantiles_from_counts(np.array([0, 10, 10, 0]), qs, 0.0, 4.0).tolist() == [1, 1.5, 2, 2.5, 3]
    # Negative (noisy) counts count as 0.
    assert releases.quantiles_from_counts(np.array([-5, 10, 10, -3]), qs, 0.0, 4.0).tolist() == [1, 1.5, 2, 2.5, 3]
    # Nothing positive to read: the bounds' uniform quantiles.
    assert releases.quantiles_from_counts(np.array([-1.0, 0.0]), qs, 0.0, 4.0).tolist() == [0, 1, 2, 3, 4]
    # End to end without noise: within the resolution of the true quantiles.
    values = np.random.default_rng(1).normal(50, 10, size=(5000, 1))
    release = releases.prepare({"fn": "quantiles", "qs": [0.1, 0.5, 0.9], "lower": 0, "upper": 100,
                                "bins": 200, "epsilon": 1.0}, values.shape)  # fmt: skip
    assert release.extra["resolution"] == 0.5
    assert np.all(np.abs(release.run(values, 0.0) - np.quantile(values, [0.1, 0.5, 0.9])) <= 0.5)


def test_noisy_counts_are_not_rounded_or_clipped():
    release = releases.prepare({"fn": "count", "lower": 0, "upper": 1, "epsilon": 1.0}, (3, 64))
    noisy = release.run(np.zeros((3, 64)), multiplier=1.0)  # true counts 3, noise std 8
    assert noisy.dtype == np.float64 and np.any(noisy != np.round(noisy)) and np.any(noisy < 0)


def test_sum_and_mean_messages_are_unchanged():
    with pytest.raises(ValueError, match=r"^`lower` must be a finite number, got 'a'$"):
        releases.prepare({"fn": "sum", "lower": "a", "upper": 1, "epsilon": 1}, (3,))
    with pytest.raises(ValueError, match=r"^`lower` must be less than `upper`, got lower=5, upper=1$"):
        releases.prepare({"fn": "mean", "lower": 5, "upper": 1, "epsilon": 1}, (3,))
    with pytest.raises(ValueError, match=r"^a DP mean runs over the rows \(axis 0\) of a tensor with at least 1"):
        releases.prepare({"fn": "mean", "lower": 0, "upper": 1, "epsilon": 1}, ())
