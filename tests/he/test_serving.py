"""Encrypted inference served from its own process (the "ckks" worker service) and its Keras API.

The service's rules are tested in-process (fast: no network), then end to end with a real worker process over
mutual TLS: encrypted predictions against plaintext Keras, the secret key never reaching the worker, clear errors
for wrong contexts and garbage with the worker still serving, and the quota (counted in input rows).
"""

import numpy as np
import pytest
import tensorflow as tf

from tfppml import he
from tfppml.errors import PolicyDenied, ProtocolError, QuotaExceeded
from tfppml.he.service import (
    CKKSService,
    CKKSServing,
    context_id,
    program_from_wire,
    program_to_wire,
    serialized_context_has_secret_key,
)
from tfppml.keras import Client, KerasHook
from tfppml.net.transport import RemoteError

L = tf.keras.layers
KerasHook(tf.keras)


def _digits_model():
    """A small Dense model with square activation, trained on scikit-learn's 8x8 digits (real data)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((64,)), L.Dense(16, activation=he.square), L.Dense(10)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=15, batch_size=64, verbose=0)
    return model, x[1400:]


@pytest.fixture(scope="module")
def digits():
    return _digits_model()


@pytest.fixture(scope="module")
def program(digits):
    return he.compile_model(digits[0])


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


# -- the program on the wire --------------------------------------------------------------------------------


def test_program_travels_as_json_and_arrays(program, digits):
    structure, tensors = program_to_wire(program)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in tensors.values())
    import json

    json.dumps(structure)  # plain JSON, no pickle
    again = program_from_wire(structure, tensors)
    assert (again.depth, again.input_dim, again.output_dim) == (program.depth, 64, 10)
    for (a, *wa), (b, *wb) in zip(program.steps, again.steps):
        assert a == b
        for u, v in zip(wa, wb):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "mutate,words",
    [
        (lambda s, t: s.update(format="pickle"), "format"),
        (lambda s, t: s["steps"].append({"kind": "relu"}), "kind 'relu'"),
        (lambda s, t: t.update(matmul0=np.ones((3, 16))), "[64, m] matrix"),
        (lambda s, t: t.update(extra=np.ones(2)), "not used"),
        (lambda s, t: t.update(add1=np.full(16, np.nan)), "finite"),
        (lambda s, t: s.update(output_dim=11), "output_dim"),
        (lambda s, t: s["steps"].insert(0, {"kind": "poly", "coeffs": ["x"]}), "coefficients"),
    ],
)
def test_malformed_programs_are_refused(program, mutate, words):
    structure, tensors = program_to_wire(program)
    mutate(structure, tensors)
    with pytest.raises(ValueError) as info:
        program_from_wire(structure, tensors)
    assert words in str(info.value)


# -- the service's rules, in-process -----------------------------------------------------------------------


@pytest.fixture()
def service(program):
    service = CKKSService("server0")
    structure, tensors = program_to_wire(program)
    service.handle("model_owner", {"op": "register", "name": "digits", "program": structure}, tensors)
    service.handle("model_owner", {"op": "serve", "name": "digits", "num_requests": 10}, {})
    return service


def test_service_never_holds_a_secret_key(service, program, digits):
    client_ctx = he.CKKSContext(**program.context_parameters("vector"))
    x = digits[1][:2].astype(np.float64)
    enc = _bytes(client_ctx.encrypt(x).serialize())
    secret = client_ctx.serialize(include_secret_key=True)
    assert serialized_context_has_secret_key(secret)
    with pytest.raises(ValueError, match="holds a secret key.*public_context"):
        service.handle("client", {"op": "query", "name": "digits"}, {"context": _bytes(secret), "input": enc})
    assert service.held_contexts() == []  # refused before it was parsed: nothing kept
    assert service.handle("model_owner", {"op": "status", "name": "digits"}, {})[0]["started"] == 0

    public = client_ctx.public_context().serialize()
    assert not serialized_context_has_secret_key(public)
    meta = {"op": "query", "name": "digits", "context_id": context_id(public)}
    _, reply = service.handle("client", meta, {"context": _bytes(public), "input": enc})
    held = service.held_contexts()
    assert len(held) == 1 and not held[0].has_secret_key and held[0].key_id == client_ctx.key_id
    server_view = held[0].deserialize_cipher(reply["output"].tobytes())
    with pytest.raises(he.MissingKeyError, match="no secret key"):
        held[0].decrypt(server_view)  # what the worker holds cannot decrypt its own answer
    np.testing.assert_allclose(client_ctx.decrypt(server_view), digits[0](x).numpy(), atol=1e-2)
    # The second query names the cached context instead of sending it again.
    _, again = service.handle("client", meta, {"input": enc})
    assert again["output"].size > 0
    with pytest.raises(LookupError, match="unknown context_id"):
        service.handle("other_client", meta, {"input": enc})  # contexts are kept per caller


def test_only_the_owner_controls_a_model(service, program):
    for op in ("serve", "stop", "status"):
        with pytest.raises(PolicyDenied, match="only the owner"):
            service.handle("client", {"op": op, "name": "digits", "num_requests": 5}, {})
    structure, tensors = program_to_wire(program)
    with pytest.raises(PolicyDenied, match="another identity"):
        service.handle("client", {"op": "register", "name": "digits", "program": structure}, tensors)
    with pytest.raises(ValueError, match="meta 'op'"):
        service.handle("client", {"op": "decrypt"}, {})


@pytest.fixture(scope="module")
def batch_ctx(program):
    return he.CKKSContext(**program.context_parameters("batch"))


def _query(service, ctx, x, layout="batch", caller="client", name="digits"):
    public = ctx.public_context().serialize()
    meta = {"op": "query", "name": name, "context_id": context_id(public)}
    enc = _bytes(ctx.encrypt(np.asarray(x, dtype=np.float64), layout=layout).serialize())
    return service.handle(caller, meta, {"context": _bytes(public), "input": enc})


def _status(service, name="digits"):
    return service.handle("model_owner", {"op": "status", "name": name}, {})[0]


def test_the_quota_counts_rows_not_queries(service, batch_ctx, digits):
    x = digits[1]
    assert _status(service) == {"serving": True, "quota": 10, "started": 0, "served": 0}
    _query(service, batch_ctx, x[:4])
    assert _status(service) == {"serving": True, "quota": 10, "started": 4, "served": 4}
    with pytest.raises(QuotaExceeded, match="query of 7 rows exceeds the 6 row"):
        _query(service, batch_ctx, x[:7])  # refused whole, nothing spent
    assert _status(service)["started"] == 4
    _query(service, batch_ctx, x[:6])
    assert _status(service) == {"serving": False, "quota": 10, "started": 10, "served": 10}
    with pytest.raises(QuotaExceeded, match="answered 10 of 10 rows"):
        _query(service, batch_ctx, x[:1])
    service.handle("model_owner", {"op": "serve", "name": "digits", "num_requests": 2}, {})  # the period ended
    with pytest.raises(QuotaExceeded, match="query of 3 rows"):
        _query(service, batch_ctx, x[:3])
    _query(service, batch_ctx, x[:1])
    assert service.handle("model_owner", {"op": "stop", "name": "digits"}, {})[0] == {"served": 1}
    assert _status(service) == {"serving": False, "quota": 2, "started": 1, "served": 1}
    with pytest.raises(QuotaExceeded, match="stopped"):
        _query(service, batch_ctx, x[:1])


def test_serve_takes_a_positive_row_count_and_refuses_a_second_open_period(service):
    for bad in (0, -1, True, 2.0, "3", None):
        with pytest.raises(ValueError, match="num_requests"):
            service.handle("model_owner", {"op": "serve", "name": "digits", "num_requests": bad}, {})
    with pytest.raises(ProtocolError, match="already serving"):
        service.handle("model_owner", {"op": "serve", "name": "digits", "num_requests": 100}, {})
    assert service.handle("model_owner", {"op": "stop", "name": "digits"}, {})[0] == {"served": 0}
    service.handle("model_owner", {"op": "serve", "name": "digits", "num_requests": 100}, {})
    assert _status(service)["quota"] == 100
    with pytest.raises(ValueError, match="positive int"):
        CKKSServing.serve(None, "digits", 0)  # the driver checks before sending


def test_a_declared_batch_size_travels_with_the_program_and_is_enforced(digits, batch_ctx):
    model = tf.keras.Sequential([tf.keras.Input((64,), batch_size=1), L.Dense(16, activation=he.square), L.Dense(10)])
    model.set_weights(digits[0].get_weights())
    program = he.compile_model(model)
    assert program.batch_size == 1 and he.compile_model(digits[0]).batch_size is None
    structure, tensors = program_to_wire(program)
    assert structure["batch_size"] == 1 and program_from_wire(structure, tensors).batch_size == 1
    with pytest.raises(ValueError, match="batch_size"):
        program_from_wire({**structure, "batch_size": 0}, tensors)
    service = CKKSService("server0")
    service.handle("model_owner", {"op": "register", "name": "one", "program": structure}, tensors)
    service.handle("model_owner", {"op": "serve", "name": "one", "num_requests": 10}, {})
    x = digits[1]
    with pytest.raises(PolicyDenied, match="declares batch size 1: a query of 2 rows is refused"):
        _query(service, batch_ctx, x[:2], name="one")
    _, reply = _query(service, batch_ctx, x[:1], name="one")
    got = batch_ctx.decrypt(batch_ctx.deserialize_cipher(reply["output"].tobytes()))
    np.testing.assert_allclose(got, model(x[:1]).numpy(), atol=1e-2)
    assert _status(service, "one") == {"serving": True, "quota": 10, "started": 1, "served": 1}


# -- a real worker process -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    from tfppml.net.cluster import Cluster, Worker

    with Cluster(Worker("127.0.0.1:0"), service="ckks", timeout=60,
                 identities=("driver", "model_owner", "client", "other_client")) as running:
        yield running


@pytest.fixture(scope="module")
def served(cluster, digits):
    model = digits[0]
    model.share(cluster, name="digits", protocol="ckks")
    yield model
    model.stop()


def test_encrypted_predictions_agree_with_plaintext(cluster, served, digits):
    x = digits[1][:48]
    plain = served(x).numpy()
    served.serve(6 + 48, block=False, protocol="ckks")  # rows: a query of 6, then one of 48
    vector = Client().connect_to_model(
        served.input_shape, served.output_shape, cluster, model_name="digits", protocol="ckks"
    )
    assert vector.he_context.has_secret_key
    got = vector.query_model(x[:6])
    np.testing.assert_allclose(got, plain[:6], atol=1e-2)
    np.testing.assert_array_equal(got.argmax(-1), plain[:6].argmax(-1))
    # Many samples in one query, packed along the slots.
    batch = Client("other_client").connect_to_model(
        served.input_shape, served.output_shape, cluster, model_name="digits", protocol="ckks", layout="batch"
    )
    got = batch.query_model(x)
    np.testing.assert_array_equal(got.argmax(-1), plain.argmax(-1))
    assert served._tfppml_shared.protocol.program_status("digits") == {
        "serving": False, "quota": 54, "started": 54, "served": 54  # all rows served: the period ended by itself
    }


def test_worker_refuses_a_secret_key_and_holds_only_public_contexts(cluster, served, program, digits):
    served.serve(1, block=False)
    me = CKKSServing(cluster, "client")
    ctx = he.CKKSContext(**program.context_parameters("vector"))
    enc = _bytes(ctx.encrypt(digits[1][:1]).serialize())
    with pytest.raises(RemoteError, match="holds a secret key") as info:
        me._call({"op": "query", "name": "digits"},
                 {"context": _bytes(ctx.serialize(include_secret_key=True)), "input": enc})
    assert info.value.remote_type == "ValueError"
    assert all(c["key_id"] != f"{ctx.key_id:032x}" for c in me.held_contexts())
    me.query("digits", ctx, ctx.encrypt(digits[1][:1]))  # the public part is accepted
    held = me.held_contexts()
    assert any(c["key_id"] == f"{ctx.key_id:032x}" for c in held)
    assert not any(c["has_secret_key"] for c in held)


def test_bad_inputs_get_clear_errors_and_the_worker_keeps_serving(cluster, served, program, digits):
    served.serve(1, block=False)
    me = CKKSServing(cluster, "client")
    ctx = he.CKKSContext(**program.context_parameters("vector"))
    other = he.CKKSContext(**program.context_parameters("vector"))
    public = _bytes(ctx.public_context().serialize())
    x = digits[1][:1]
    cases = [
        ({"context": _bytes(b"garbage" * 20), "input": _bytes(ctx.encrypt(x).serialize())}, "ValueError",
         "serialized tfppml.he context"),
        ({"context": public[: len(public) // 2], "input": _bytes(ctx.encrypt(x).serialize())}, "ValueError", ""),
        ({"context": public, "input": _bytes(other.encrypt(x).serialize())}, "ContextMismatchError", ""),
        ({"context": public, "input": _bytes(ctx.encrypt(np.ones((1, 5))).serialize())}, "ValueError",
         "(batch, 64)"),
        ({"context": public, "input": _bytes(b"\x00" * 100)}, "ValueError", ""),
        ({"context": public.astype(np.int32), "input": _bytes(b"")}, "ValueError", "uint8"),
    ]
    for tensors, kind, words in cases:
        with pytest.raises(RemoteError) as info:
            me._call({"op": "query", "name": "digits"}, tensors)
        assert info.value.remote_type == kind, info.value
        assert words in str(info.value)
    shallow = he.CKKSContext(8192, [60, 40, 60], 2.0**40, galois_steps=program.rotation_steps)
    with pytest.raises(RemoteError, match=f"depth 1, model 'digits' needs {program.depth}"):
        me.query("digits", shallow, shallow.encrypt(x))
    with pytest.raises(RemoteError, match="no model named 'nope'"):
        me.query("nope", ctx, ctx.encrypt(x))
    # None of that used up the quota; a good query still gets its answer.
    status = served._tfppml_shared.protocol.program_status("digits")
    assert status == {"serving": True, "quota": 1, "started": 0, "served": 0}
    np.testing.assert_allclose(ctx.decrypt(me.query("digits", ctx, ctx.encrypt(x))), served(x).numpy(), atol=1e-2)


def test_quota_stop_and_restart(cluster, served, digits):
    client = Client().connect_to_model((None, 64), (None, 10), cluster, model_name="digits", protocol="ckks")
    x = digits[1][:1]
    served.stop()
    with pytest.raises(PolicyDenied, match="not serving"):
        client.query_model(x)
    served.serve(2, block=False)
    client.query_model(x)
    client.query_model(x)
    with pytest.raises(PolicyDenied, match="answered 2 of 2 rows"):
        client.query_model(x)
    with pytest.raises(PolicyDenied, match="only the owner"):
        client.protocol.serve("digits", 100)  # a client cannot grant itself queries
    served.serve(3, block=False)
    with pytest.raises(PolicyDenied, match="query of 4 rows exceeds the 3 row"):
        client.query_model(digits[1][:4])  # rows count, not calls: a batch of 4 does not fit a quota of 3
    client.query_model(x)
    with pytest.raises(RemoteError, match="already serving") as info:
        served.serve(5, block=False)  # a period is open (2 rows left): stop it first
    assert info.value.remote_type == "ProtocolError"
    assert served.stop() == 1
    with pytest.raises(PolicyDenied, match="stopped"):
        client.query_model(x)
    with pytest.raises(ValueError, match="shared with 'ckks'"):
        served.serve(1, protocol="aby3")
    with pytest.raises(ValueError, match="64 features"):
        Client().connect_to_model((None, 63), (None, 10), cluster, model_name="digits", protocol="ckks")
