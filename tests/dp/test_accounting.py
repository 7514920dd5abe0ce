"""Accounting matches TF Privacy's privacy statement, is fast, and calibration meets its target."""

import math
import re
import time

import pytest
from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as tfp_lib

from tfppml.dp import accounting
from tfppml.dp.accounting import calibrate_noise, compute_epsilon


def tfp_numbers(n, batch_size, epochs, sigma, delta, accountant="RDP"):
    text = tfp_lib.compute_dp_sgd_privacy_statement(
        n, batch_size, epochs, sigma, delta, used_microbatching=False,
        accountant_type=tfp_lib.AccountantType[accountant],
    )
    shuffled = float(re.search(r"once per epoch:\s+([0-9.]+)", text).group(1))
    poisson = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", text).group(1))
    return shuffled, poisson


@pytest.mark.parametrize(
    "n, batch_size, epochs, sigma, delta",
    [(60000, 256, 60, 1.1, 1e-5), (60000, 256, 15, 0.8, 1e-5), (5000, 64, 3, 1.5, 1e-4), (1797, 32, 2.5, 2.0, 1e-3)],
)
def test_rdp_matches_tf_privacy_statement(n, batch_size, epochs, sigma, delta):
    shuffled, poisson = tfp_numbers(n, batch_size, epochs, sigma, delta)
    assert compute_epsilon(n, batch_size, sigma, epochs, delta, poisson=False) == pytest.approx(shuffled, abs=1e-3)
    assert compute_epsilon(n, batch_size, sigma, epochs, delta, poisson=True) == pytest.approx(poisson, abs=1e-3)


def test_pld_matches_tf_privacy_statement_small_run():
    shuffled, poisson = tfp_numbers(1000, 100, 2, 1.0, 1e-5, "PLD")
    assert compute_epsilon(1000, 100, 1.0, 2, 1e-5, "pld", poisson=False) == pytest.approx(shuffled, abs=2e-3)
    assert compute_epsilon(1000, 100, 1.0, 2, 1e-5, "pld", poisson=True) == pytest.approx(poisson, abs=2e-3)


def test_pld_is_tighter_than_rdp():
    assert compute_epsilon(1000, 100, 1.0, 2, 1e-5, "pld") < compute_epsilon(1000, 100, 1.0, 2, 1e-5, "rdp")


def test_known_value_and_speed():
    start = time.perf_counter()
    eps = compute_epsilon(60000, 256, 1.1, 60, 1e-5, accountant="rdp", poisson=True)
    assert time.perf_counter() - start < 1.0
    assert eps == pytest.approx(2.597, abs=1e-3)  # TF Privacy's statement for the same run


def test_monotone_in_epochs_and_noise():
    assert compute_epsilon(60000, 256, 1.1, 10, 1e-5) < compute_epsilon(60000, 256, 1.1, 20, 1e-5)
    assert compute_epsilon(60000, 256, 1.3, 10, 1e-5) < compute_epsilon(60000, 256, 1.1, 10, 1e-5)


def test_zero_noise_is_infinite_epsilon():
    assert compute_epsilon(100, 10, 0.0, 1, 1e-5) == math.inf


@pytest.mark.parametrize("poisson", [True, False])
@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_calibrate_noise_meets_target(target, poisson):
    sigma = calibrate_noise(target, 1e-5, 60000, 256, 15, poisson=poisson)
    eps = compute_epsilon(60000, 256, sigma, 15, 1e-5, poisson=poisson)
    assert eps <= target
    assert compute_epsilon(60000, 256, sigma - 2e-3, 15, 1e-5, poisson=poisson) > eps  # not wastefully large
    assert eps > 0.97 * target


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n=0), ValueError, "n must be"),
        (dict(n=10.5), TypeError, "n must be"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=2000), ValueError, "batch_size must be <= n"),
        (dict(noise_multiplier=-1.0), ValueError, "noise_multiplier"),
        (dict(epochs=0), ValueError, "epochs"),
        (dict(delta=0.0), ValueError, "delta"),
        (dict(delta=1.0), ValueError, "delta"),
        (dict(accountant="moments"), ValueError, "accountant"),
        (dict(noise_multiplier="1"), TypeError, "noise_multiplier"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = dict(n=1000, batch_size=100, noise_multiplier=1.0, epochs=1, delta=1e-5) | kwargs
    with pytest.raises(error, match=match):
        compute_epsilon(**args)


def test_calibrate_rejects_bad_target():
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_noise(0.0, 1e-5, 1000, 10, 1)


def test_statement_states_assumptions():
    text = accounting.privacy_statement(60000, 256, 1.1, 60, 1e-5)
    for phrase in ("add-or-remove-one", "every model checkpoint", "Poisson", "once per epoch", "14063 steps"):
        assert phrase in text
    assert "56.950" in text and "2.597" in text
