"""The privacy ledger: budgets per data set shared by every identity, each identity's cap, fail-closed storage
(issue #18, attack 4: two identities, or every certificate under `default`, used to multiply epsilon)."""

import pytest

from tfppml.errors import PolicyDenied
from tfppml.remote.audit import generate_key
from tfppml.remote.ledger import Budget, PrivacyLedger, cost, gaussian
from tfppml.remote.policy import Policy, calibrate_gaussian

POLICY = {
    "datasets": {"patients": {"dp": {"epsilon_budget": 1.0, "delta": 1e-5}}},
    "identities": {who: {"datasets": ["patients"], "dp": {"epsilon_budget": 1.0, "delta": 1e-5}}
                   for who in ("alice", "bob")},
}


@pytest.fixture
def ledger(tmp_path):
    return PrivacyLedger(tmp_path / "logs" / "ledger", generate_key(tmp_path / "keys" / "k"))


def _spend_until_refused(ledger, budgets_of, who, epsilon=0.4):
    spent = 0
    multiplier = calibrate_gaussian(epsilon, 1e-5)
    try:
        while True:
            ledger.charge(who, ["patients"], gaussian(multiplier), budgets_of(who), f"a release ({epsilon})")
            spent += 1
    except PolicyDenied as err:
        return spent, str(err)


def test_two_identities_share_one_data_set_budget(ledger):
    policy = Policy.from_dict(POLICY)
    alice, _ = _spend_until_refused(ledger, lambda w: policy.dp_budgets(w, ["patients"]), "alice")
    bob, why = _spend_until_refused(ledger, lambda w: policy.dp_budgets(w, ["patients"]), "bob")
    assert alice >= 2 and bob == 0
    assert "'datasets.patients.dp.epsilon_budget'" in why and "dataset 'patients'" in why
    assert ledger.spent(("dataset", "patients"), 1e-5) <= 1.0 + 1e-9


def test_control_per_identity_budgets_let_each_identity_spend_it(ledger):
    """The weakened rule (before #18): each identity's own budget only."""
    policy = Policy.from_dict(POLICY)
    only_mine = lambda who: policy.dp_budgets(who, ["patients"])[:1]  # noqa: E731
    alice, _ = _spend_until_refused(ledger, only_mine, "alice")
    bob, _ = _spend_until_refused(ledger, only_mine, "bob")
    assert alice == bob >= 2  # together twice the data set's epsilon
    assert ledger.spent(("dataset", "patients"), 1e-5) > 1.0


def test_charges_survive_a_reopen_and_a_broken_ledger_fails_closed(tmp_path):
    key = generate_key(tmp_path / "keys" / "k")
    path = tmp_path / "logs" / "ledger"
    budgets = [Budget(("dataset", "patients"), 1.0, 1e-5, "datasets.patients.dp")]
    first = PrivacyLedger(path, key)
    first.charge("alice", ["patients"], gaussian(6.0), budgets, "a release")
    first.close()
    again = PrivacyLedger(path, key)
    assert again.spent(("dataset", "patients"), 1e-5) == pytest.approx(cost(gaussian(6.0), 1e-5))
    again.close()
    assert PrivacyLedger(tmp_path / "logs" / "other", key, expected=True).broken.endswith(
        "is missing although the audit log shows DP releases"
    )
    path.write_text(path.read_text().replace('"alice"', '"bob"'))
    broken = PrivacyLedger(path, key)
    assert "does not verify" in broken.broken
    with pytest.raises(PolicyDenied, match="'ledger': DP releases are refused"):
        broken.charge("alice", ["patients"], gaussian(6.0), budgets, "a release")


def test_the_running_rdp_curve_equals_a_composing_accountant_and_survives_a_reopen(tmp_path):
    """The ledger adds one RDP curve per budget instead of re-composing every past release on each charge; the
    epsilon must equal dp-accounting composing the same mixed events (Gaussian releases and a DP-SGD run)."""
    from tfppml.dp.accounting import make_accountant
    from tfppml.remote.ledger import dp_sgd, to_dp_event

    key = generate_key(tmp_path / "keys" / "k")
    budgets = [Budget(("dataset", "patients"), 1e6, 1e-5, "datasets.patients.dp")]
    events = [gaussian(2.0 + index / 7) for index in range(30)]
    events.insert(11, dp_sgd(n=1000, batch_size=50, noise_multiplier=1.1, epochs=3))
    reference = make_accountant("rdp")
    ledger = PrivacyLedger(tmp_path / "logs" / "ledger", key)
    for event in events:
        total = ledger.charge("alice", ["patients"], event, budgets, "a release")["dataset:patients"]
        reference.compose(to_dp_event(event))
        assert total == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    ledger.close()
    reopened = PrivacyLedger(tmp_path / "logs" / "ledger", key)
    assert reopened.spent(("dataset", "patients"), 1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert reopened.spent(("identity", "bob"), 1e-5) == 0.0


def test_a_run_with_huge_noise_is_charged_almost_nothing_instead_of_failing(ledger):
    # dp-accounting's subsampled RDP rounds below zero at sigma 1e6; the ledger uses tfppml.dp's proven bound.
    from tfppml.remote.ledger import dp_sgd

    budgets = [Budget(("dataset", "patients"), 1.0, 1e-5, "datasets.patients.dp")]
    event = dp_sgd(n=1000, batch_size=10, noise_multiplier=1e6, epochs=5)
    spent = ledger.charge("alice", ["patients"], event, budgets, "a quiet run")["dataset:patients"]
    assert 0.0 <= spent < 1e-6
