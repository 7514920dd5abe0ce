"""Policy files, release rules, rate limits and DP budgets (no worker needed)."""

import pytest

from tfppml.errors import PolicyDenied
from tfppml.remote.policy import Label, Policy

PATIENTS = frozenset({"patients"})


def test_load_yaml(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(
        "identities:\n  analyst:\n    datasets: [patients]\n    unsafe_aggregates: {min_rows: 5}\n"
        "    dp: {epsilon_budget: 1.0, delta: 1.0e-6}\n    unsafe_weights: true\n"
    )
    rules = Policy.load(path).rules_for("analyst")
    assert rules.datasets == PATIENTS and rules.min_rows == 5 and rules.weights
    assert rules.dp.epsilon_budget == 1.0 and rules.dp.delta == 1e-6


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"identities": {"a": {"raw_reads": []}}}, r"identities\.a: unknown rule\(s\) \['raw_reads'\]"),
        ({"identity": {}}, r"unknown top-level field\(s\) \['identity'\]"),
        (
            {"identities": {"a": {"raw_read": ["x"]}}},
            r"raw_read names data sets not in identities\.a\.datasets",
        ),
        ({"identities": {"a": {"unsafe_aggregates": {"min_rows": -1}}}}, r"unsafe_aggregates\.min_rows must be an int"),
        ({"identities": {"a": {"dp": {"epsilon_budget": 1}}}}, r"a\.dp must have exactly the fields"),
        ({"identities": {"a": {"dp": {"epsilon_budget": 1, "delta": 2}}}}, r"a\.dp\.delta must be a number"),
        ({"identities": {"a": {"unsafe_weights": "yes"}}}, r"a\.unsafe_weights must be true or false"),
        ({"identities": {"a": {"weights": True}}}, r"a\.weights: this rule is now called 'unsafe_weights'.*memorise"),
        ({"identities": {"a": {"aggregates": {"min_rows": 9}}}}, r"a\.aggregates: this rule is now called 'unsafe_aggregates'"),
        ({"identities": {"a": {"datasets": "patients"}}}, r"a\.datasets must be a list"),
    ],
)
def test_bad_policies_name_the_field(raw, match):
    with pytest.raises(ValueError, match=match):
        Policy.from_dict(raw)


def test_release_rules():
    policy = Policy.from_dict(
        {"identities": {"a": {"datasets": ["patients"], "unsafe_aggregates": {"min_rows": 10}}, "b": {}}}
    )
    assert policy.check_release("a", Label(), "o1") == "public"
    assert policy.check_release("a", Label(aggregate=10, aggregate_of=PATIENTS), "o1") == "unsafe_aggregates"
    with pytest.raises(PolicyDenied, match=r"'identities\.a\.unsafe_aggregates\.min_rows'.*o1"):
        policy.check_release("a", Label(aggregate=9, aggregate_of=PATIENTS), "o1")
    with pytest.raises(PolicyDenied, match=r"'identities\.a\.raw_read'"):
        policy.check_release("a", Label(raw=PATIENTS, rows=100), "o1")
    with pytest.raises(PolicyDenied, match=r"'identities\.a\.unsafe_weights'"):
        policy.check_release("a", Label(weights=PATIENTS), "o1")
    with pytest.raises(PolicyDenied, match=r"'identities\.b\.unsafe_aggregates'"):
        policy.check_release("b", Label(aggregate=100, aggregate_of=PATIENTS), "o1")
    with pytest.raises(PolicyDenied, match=r"rule 'identities': identity 'c'"):
        policy.check_release("c", Label(), "o1")
    with pytest.raises(PolicyDenied, match=r"'identities\.b\.datasets'"):
        policy.check_dataset("b", "patients")


def test_labels():
    raw = Label(raw=PATIENTS, rows=50)
    assert raw.aggregated() == Label(aggregate=50, aggregate_of=PATIENTS)
    assert raw.with_rows(None).aggregated().raw == PATIENTS  # uncertified rows stay row-level data
    assert raw.noised() == Label(dp=PATIENTS) and raw.trained() == Label(weights=PATIENTS)
    assert Label().trained().public


def test_default_rules_and_deny_all():
    policy = Policy.from_dict({"default": {"datasets": []}})
    assert policy.rules_for("anyone").name == "default"
    assert Policy.deny_all().check_release("anyone", Label(), "o1") == "public"
    with pytest.raises(PolicyDenied, match="default.datasets"):
        Policy.deny_all().check_dataset("anyone", "patients")


def test_rate_limit_window():
    policy = Policy.from_dict({"identities": {"a": {"rate_limit": {"requests": 2, "per_seconds": 10}}}})
    policy.check_rate("a", now=0.0)
    policy.check_rate("a", now=1.0)
    with pytest.raises(PolicyDenied, match=r"identities\.a\.rate_limit.*at most 2 requests per 10 s"):
        policy.check_rate("a", now=5.0)
    policy.check_rate("a", now=10.5)  # the first request left the window


def test_dp_budgets_are_the_identity_cap_and_each_data_set_budget():
    policy = Policy.from_dict({
        "datasets": {"patients": {"dp": {"epsilon_budget": 3.0, "delta": 1e-6}}},
        "identities": {"a": {"dp": {"epsilon_budget": 1.0, "delta": 1e-5}}, "b": {}},
        "default": {"dp": {"epsilon_budget": 0.5, "delta": 1e-5}},
    })
    caps = policy.dp_budgets("a", ["patients"])
    assert [(b.key, b.epsilon, b.delta, b.rule) for b in caps] == [
        (("identity", "identities.a"), 1.0, 1e-5, "identities.a.dp"),
        (("dataset", "patients"), 3.0, 1e-6, "datasets.patients.dp"),
    ]
    # Everyone under `default` shares one cap: minting certificates does not multiply it.
    assert policy.dp_budgets("x", [])[0].key == policy.dp_budgets("y", [])[0].key == ("identity", "default")
    with pytest.raises(PolicyDenied, match=r"identities\.b\.dp"):
        policy.dp_budgets("b", ["patients"])
    with pytest.raises(PolicyDenied, match=r"'datasets\.labels\.dp': data set 'labels' has no DP budget"):
        policy.dp_budgets("a", ["labels"])
    with pytest.raises(ValueError, match=r"datasets\.patients\.dp must have exactly the fields"):
        Policy.from_dict({"datasets": {"patients": {"dp": {"epsilon": 1}}}})


def test_a_nonlinear_function_of_rows_never_becomes_an_aggregate():
    rows = Label(raw=PATIENTS, rows=200)
    assert rows.aggregated().aggregate == 200  # a linear column sum
    bent = rows.transformed()
    assert bent.rows == 200 and bent.nonlinear  # still one individual per row, for a DP release
    assert bent.aggregated().raw == PATIENTS and bent.aggregated().aggregate is None
    assert bent.join(Label()).aggregated().aggregate is None and Label().transformed() == Label()
    assert rows.transformed().to_json() == {"raw": ["patients"], "nonlinear": True}
