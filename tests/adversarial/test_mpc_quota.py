"""A client that spends a request-counting quota on many inputs at once (issue #17, attack 5).

`num_requests` used to count calls: one query of 100 rows spent one request, and a model declared with batch
size 1 took batches of 2.  The control restores call counting (every query counts as one row, whatever its
batch) and shows the evasion; the real servers count rows and enforce the declared batch size.
"""

import numpy as np
import pytest

from tfppml.errors import PolicyDenied, QuotaExceeded
from tfppml.serving import ServingPeriod

from .helpers import W1, W2, call, decode, owner_with_mlp, pairs


def _ask(prot, op_id, rows, name="mlp"):
    return call(prot, "client", "query", op_id, {"name": name}, pairs(prot, np.ones((rows, 2))))


@pytest.fixture
def call_counting(monkeypatch):
    admit, check = ServingPeriod.admit, ServingPeriod.check
    monkeypatch.setattr(ServingPeriod, "check", lambda self, rows: check(self, 1))
    monkeypatch.setattr(ServingPeriod, "admit", lambda self, rows, **kw: admit(self, 1, **kw))


def test_control_call_counting_quota_answers_a_hundred_rows_for_one_request(call_counting):
    prot = owner_with_mlp(rows=1)
    answers = _ask(prot, "bulk", 100)
    assert all(not isinstance(r, Exception) for r, _ in answers)
    np.testing.assert_allclose(decode(prot, answers), np.maximum(np.ones((100, 2)) @ W1, 0) @ W2, atol=1e-3)
    prot.close()


def test_control_call_counting_takes_a_batch_of_two_for_a_model_of_batch_one(monkeypatch):
    # The weakened build counts a query as one batch of the declared size, whatever it holds.
    admit, check = ServingPeriod.admit, ServingPeriod.check
    monkeypatch.setattr(ServingPeriod, "check", lambda self, rows: check(self, self.batch_size or 1))
    monkeypatch.setattr(ServingPeriod, "admit", lambda self, rows, **kw: admit(self, self.batch_size or 1, **kw))
    prot = owner_with_mlp(rows=10, batch_size=1)
    assert all(not isinstance(r, Exception) for r, _ in _ask(prot, "two", 2))
    prot.close()


def test_rows_are_counted_and_the_declared_batch_enforced():
    prot = owner_with_mlp(rows=3)
    for result, _ in _ask(prot, "bulk", 100):
        assert isinstance(result, QuotaExceeded) and "a query of 100 rows" in str(result)
        assert "row(s) left" in str(result) and "3" not in str(result)  # the owner's figures stay the owner's
    assert all(not isinstance(r, Exception) for r, _ in _ask(prot, "two", 2))
    for result, _ in _ask(prot, "two.more", 2):
        assert isinstance(result, QuotaExceeded)
    assert all(not isinstance(r, Exception) for r, _ in _ask(prot, "last", 1))
    status = prot.program_status("mlp")
    assert (status["served"], status["quota"], status["serving"]) == (3, 3, False)
    prot.close()

    fixed = owner_with_mlp(rows=10, batch_size=1)
    for result, _ in _ask(fixed, "two", 2):
        assert isinstance(result, PolicyDenied) and "declares batch size 1" in str(result)
    assert all(not isinstance(r, Exception) for r, _ in _ask(fixed, "one", 1))
    assert fixed.program_status("mlp")["served"] == 1
    fixed.close()


def test_oversized_and_misshaped_inputs_are_refused_before_the_quota(monkeypatch):
    prot = owner_with_mlp(rows=10**6)
    for party in prot.backend.parties:
        party.limits.max_query_rows = 64
    for result, _ in _ask(prot, "huge", 65):
        assert "65 rows in one query, more than this server's 64" in str(result)
    for result, _ in call(prot, "client", "query", "shape", {"name": "mlp"}, pairs(prot, np.ones((1, 3)))):
        assert "the input must have shape ['batch', 2]" in str(result)
    for result, _ in call(prot, "client", "query", "extra", {"name": "mlp", "steps": []}, pairs(prot, np.ones((1, 2)))):
        assert "query takes the arguments 'name' and 'input' only" in str(result)
    assert prot.program_status("mlp")["started"] == 0
    prot.close()


def test_keras_model_with_a_declared_batch_refuses_other_batches():
    import tensorflow as tf

    import tfppml

    tfppml.KerasHook(tf.keras)
    model = tf.keras.Sequential([tf.keras.layers.Dense(3, batch_input_shape=(1, 4))])
    prot = owner_with_mlp()
    model.share(prot, name="fixed", identity="driver")
    model.serve(2, block=False)
    client = tfppml.Client().connect_to_model(model.input_shape, (None, 3), prot, model_name="fixed")
    with pytest.raises(PolicyDenied, match="declares batch size 1"):
        client.query_model(np.ones((2, 4)))
    x = np.ones((1, 4))
    np.testing.assert_allclose(client.query_model(x), model(x).numpy(), atol=1e-3)
    prot.close()
