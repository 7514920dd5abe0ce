"""tfppml.serving.ServingPeriod: the quota counts input rows, the declared batch size holds, reservations are
atomic (concurrent queries cannot overspend) and a failed query is refunded."""

import doctest
import threading

import pytest

import tfppml.serving
from tfppml.errors import PolicyDenied, ProtocolError, QuotaExceeded
from tfppml.serving import ServingPeriod


def _run(period, rows):
    with period.admit(rows):
        pass


def test_docstring_examples_run():
    result = doctest.testmod(tfppml.serving, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_a_period_counts_rows_and_ends_when_its_quota_is_served():
    period = ServingPeriod("digits")
    assert period.status() == {"serving": False, "quota": None, "started": 0, "served": 0}
    with pytest.raises(QuotaExceeded, match="'digits' is not serving .no serving period was opened"):
        _run(period, 1)
    period.open(10)
    _run(period, 4)
    assert period.status() == {"serving": True, "quota": 10, "started": 4, "served": 4}
    with pytest.raises(QuotaExceeded, match="a query of 7 rows exceeds the 6 row.* left .*4 answered, 0 in flight"):
        _run(period, 7)
    assert period.status()["started"] == 4  # a refused query reserves nothing
    _run(period, 6)
    assert period.status() == {"serving": False, "quota": 10, "started": 10, "served": 10}
    with pytest.raises(QuotaExceeded, match="not serving .it answered 10 of 10 rows"):
        _run(period, 1)
    period.open(3)  # a fully served period has ended: the next one opens without a stop
    assert period.status() == {"serving": True, "quota": 3, "started": 0, "served": 0}


def test_stop_ends_the_period_and_keeps_its_figures():
    period = ServingPeriod("m")
    assert period.stop() == 0  # nothing open: nothing changes
    period.open(5)
    _run(period, 2)
    assert period.stop() == 2
    assert period.stop() == 2
    assert period.status() == {"serving": False, "quota": 5, "started": 2, "served": 2}
    with pytest.raises(QuotaExceeded, match="stopped; it answered 2 of 5 rows"):
        _run(period, 1)
    period.open(1)
    assert period.status() == {"serving": True, "quota": 1, "started": 0, "served": 0}


def test_opening_while_open_is_refused():
    period = ServingPeriod("m")
    period.open(5)
    with period.admit(5):  # every row reserved, none served: still open (a failure would free them)
        with pytest.raises(ProtocolError, match="'m' is already serving .answered 0 of 5 rows, 5 in flight.; stop"):
            period.open(100)
    assert period.status() == {"serving": False, "quota": 5, "started": 5, "served": 5}


@pytest.mark.parametrize("bad", [0, -3, True, False, 1.0, "2", None])
def test_num_requests_and_rows_must_be_positive_ints(bad):
    period = ServingPeriod("m")
    with pytest.raises(ValueError, match="num_requests"):
        period.open(bad)
    assert period.status()["quota"] is None
    period.open(4)
    with pytest.raises(ValueError, match="rows must be an int >= 1"):
        _run(period, bad)
    assert period.status()["started"] == 0


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"max_rows": -1}, "max_rows"),
        ({"batch_size": 8, "max_rows": 4}, "must not exceed"),
    ],
)
def test_constructor_arguments_are_checked(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ServingPeriod("m", **kwargs)
    with pytest.raises(TypeError, match="name"):
        ServingPeriod(None)


def test_the_declared_batch_size_is_enforced_before_the_quota():
    period = ServingPeriod("one", batch_size=1)
    period.open(10)
    for rows in (2, 10):
        with pytest.raises(PolicyDenied, match="declares batch size 1: a query of .* rows is refused") as info:
            _run(period, rows)
        assert not isinstance(info.value, QuotaExceeded)
    _run(period, 1)
    assert period.status() == {"serving": True, "quota": 10, "started": 1, "served": 1}
    period.stop()
    with pytest.raises(PolicyDenied, match="declares batch size 1"):
        _run(period, 3)  # the static rule first, whether serving or not


def test_max_rows_caps_one_query():
    period = ServingPeriod("m", max_rows=8)
    period.open(100)
    with pytest.raises(PolicyDenied, match="at most 8 rows per query, got 9"):
        _run(period, 9)
    _run(period, 8)
    assert period.status()["served"] == 8


def test_a_failed_query_is_refunded():
    period = ServingPeriod("m")
    period.open(3)
    with pytest.raises(RuntimeError, match="model failed"):
        with period.admit(3):
            assert period.status() == {"serving": True, "quota": 3, "started": 3, "served": 0}
            raise RuntimeError("model failed")
    assert period.status() == {"serving": True, "quota": 3, "started": 0, "served": 0}
    with pytest.raises(KeyboardInterrupt):  # any exception, not only Exception
        with period.admit(2):
            raise KeyboardInterrupt
    assert period.status()["started"] == 0
    _run(period, 3)  # the refunded rows can be spent
    assert period.status()["served"] == 3


def test_queries_of_a_previous_period_do_not_move_the_next_one():
    period = ServingPeriod("m")
    period.open(4)
    with period.admit(3):
        assert period.stop() == 0
        period.open(2)
        _run(period, 2)
    assert period.status() == {"serving": False, "quota": 2, "started": 2, "served": 2}
    period.open(4)
    with pytest.raises(ValueError):
        with period.admit(4):
            period.stop()
            period.open(4)
            raise ValueError("fails after the period changed")
    assert period.status() == {"serving": True, "quota": 4, "started": 0, "served": 0}  # no refund into it


def test_an_admitted_query_finishes_after_stop_and_counts_in_its_period():
    period = ServingPeriod("m")
    period.open(5)
    with period.admit(2):
        assert period.stop() == 0
        with pytest.raises(QuotaExceeded, match="stopped"):
            _run(period, 1)
    assert period.status() == {"serving": False, "quota": 5, "started": 2, "served": 2}


@pytest.mark.parametrize("rows", [1, 3])
def test_concurrent_queries_cannot_overspend(rows):
    quota, threads_n, per_thread = 100, 16, 20
    period = ServingPeriod("m")
    period.open(quota)
    barrier = threading.Barrier(threads_n)
    admitted, refused, lock = [0], [0], threading.Lock()
    inside, peak = [0], [0]

    def client():
        barrier.wait()
        for _ in range(per_thread):
            try:
                with period.admit(rows):
                    with lock:
                        inside[0] += rows
                        peak[0] = max(peak[0], inside[0], period.status()["started"])
                    with lock:
                        inside[0] -= rows
            except QuotaExceeded:
                with lock:
                    refused[0] += 1
            else:
                with lock:
                    admitted[0] += rows

    threads = [threading.Thread(target=client) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert admitted[0] == (quota // rows) * rows  # as many whole queries as fit, never one more
    assert refused[0] == threads_n * per_thread - quota // rows
    assert peak[0] <= quota
    status = period.status()
    assert status["served"] == status["started"] == admitted[0]


def test_concurrent_failures_are_all_refunded():
    period = ServingPeriod("m")
    period.open(50)
    barrier = threading.Barrier(10)
    outcomes = []

    def client(i):
        barrier.wait()
        for k in range(20):
            try:
                with period.admit(1):
                    if (i + k) % 2:
                        raise RuntimeError("boom")
            except RuntimeError:
                outcomes.append("failed")
            except QuotaExceeded:
                outcomes.append("refused")
            else:
                outcomes.append("served")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    status = period.status()
    # Failures never used up the quota: 100 attempts would succeed, so exactly the 50 rows were served.
    assert outcomes.count("served") == status["served"] == status["started"] == 50
    assert len(outcomes) == 200 and outcomes.count("failed") >= 1
