"""A hostile HE client evading the owner's quota with one query of many rows (issue #17, point 5).

The owner limits model extraction by how many inputs the "ckks" worker answers. A crafty client packs many inputs
into one encrypted query (a batch of rows, or extra leading axes), or sends a batch of 2 to a model declared with
batch size 1, hoping each query counts once. Each attack is shown to succeed against a deliberately weakened
service that counts one row per query (the request-counting quota of before), the control, and to be refused by
the real one, which spends nothing on the refused query and keeps serving honest clients.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfppml import he
from tfppml.errors import PolicyDenied, QuotaExceeded
from tfppml.he import service as service_module
from tfppml.he.service import CKKSService, context_id, program_to_wire

L = tf.keras.layers


@pytest.fixture(scope="module")
def keras_models():
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float64)
    tf.keras.utils.set_random_seed(7)
    any_batch = tf.keras.Sequential([tf.keras.Input((64,)), L.Dense(8, activation=he.square), L.Dense(10)])
    one = tf.keras.Sequential([tf.keras.Input((64,), batch_size=1), L.Dense(8, activation=he.square), L.Dense(10)])
    one.set_weights(any_batch.get_weights())
    return any_batch, one, x[:64]


@pytest.fixture(scope="module")
def ctx(keras_models):
    return he.CKKSContext(**he.compile_model(keras_models[0]).context_parameters("batch"))


def _service(model, name, num_requests):
    service = CKKSService("server0")
    structure, tensors = program_to_wire(he.compile_model(model))
    service.handle("model_owner", {"op": "register", "name": name, "program": structure}, tensors)
    service.handle("model_owner", {"op": "serve", "name": name, "num_requests": num_requests}, {})
    return service


def _attack(service, ctx, name, x):
    """What the hostile client sends: one query holding every row of `x`; returns the decrypted answers."""
    public = ctx.public_context().serialize()
    meta = {"op": "query", "name": name, "context_id": context_id(public)}
    enc = ctx.encrypt(x, layout="batch").serialize()
    tensors = {"context": np.frombuffer(public, np.uint8), "input": np.frombuffer(enc, np.uint8)}
    _, reply = service.handle("hostile_client", meta, tensors)
    return ctx.decrypt(ctx.deserialize_cipher(reply["output"].tobytes()))


def _status(service, name):
    return service.handle("model_owner", {"op": "status", "name": name}, {})[0]


@pytest.fixture()
def weakened(monkeypatch):
    """The control: a service that counts every query as one row, whatever its batch."""
    monkeypatch.setattr(service_module, "_rows", lambda shape: 1)


def _shapes(x):
    return {"batch of 48": x[:48], "leading axes 4x12": x[:48].reshape(4, 12, 64)}


@pytest.mark.parametrize("shape", ["batch of 48", "leading axes 4x12"])
def test_control_one_query_of_many_rows_evades_a_request_counting_quota(weakened, keras_models, ctx, shape):
    model, _, x = keras_models
    service = _service(model, "digits", 2)
    rows = _shapes(x)[shape]
    got = _attack(service, ctx, "digits", rows)
    # 48 model outputs (extraction material) for one unit of a quota of 2.
    want = model(rows.reshape(-1, 64)).numpy().reshape(rows.shape[:-1] + (10,))
    np.testing.assert_allclose(got, want, atol=1e-2)
    assert _status(service, "digits")["served"] == 1


@pytest.mark.parametrize("shape", ["batch of 48", "leading axes 4x12"])
def test_the_real_service_counts_every_row(keras_models, ctx, shape):
    model, _, x = keras_models
    service = _service(model, "digits", 2)
    with pytest.raises(QuotaExceeded, match="query of 48 rows exceeds the 2 row"):
        _attack(service, ctx, "digits", _shapes(x)[shape])
    assert _status(service, "digits") == {"serving": True, "quota": 2, "started": 0, "served": 0}
    # Honest use is unaffected: two rows, then nothing more.
    np.testing.assert_allclose(_attack(service, ctx, "digits", x[:2]), model(x[:2]).numpy(), atol=1e-2)
    with pytest.raises(QuotaExceeded, match="answered 2 of 2 rows"):
        _attack(service, ctx, "digits", x[:1])


def test_control_a_batch_of_two_passes_a_model_declared_with_batch_size_one(weakened, keras_models, ctx):
    _, one, x = keras_models
    service = _service(one, "one", 10)
    np.testing.assert_allclose(_attack(service, ctx, "one", x[:2]), one(x[:2]).numpy(), atol=1e-2)


def test_the_real_service_enforces_the_declared_batch_size(keras_models, ctx):
    _, one, x = keras_models
    service = _service(one, "one", 10)
    for rows in (2, 10):
        with pytest.raises(PolicyDenied, match=f"declares batch size 1: a query of {rows} rows is refused"):
            _attack(service, ctx, "one", x[:rows])
    assert _status(service, "one")["started"] == 0
    np.testing.assert_allclose(_attack(service, ctx, "one", x[:1]), one(x[:1]).numpy(), atol=1e-2)
    assert _status(service, "one")["served"] == 1
