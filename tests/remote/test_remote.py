"""The remote service through a real worker process on loopback: pointers, policy, audit, robustness, GC."""

import gc
import json

import grpc
import numpy as np
import pytest
import tensorflow as tf

import tfppml.remote
from tfppml.errors import PartyUnavailableError, PolicyDenied, ProtocolError
from tfppml.net import codec
from tfppml.net.certs import Identity, generate_certificates
from tfppml.net.transport import CALL, RemoteError, channel_options
from tfppml.remote.audit import load_key, read_entries, verify_log

from .conftest import MAX_MESSAGE_BYTES


@pytest.fixture(scope="module")
def analyst(hospital):
    cluster, _ = hospital
    remote = tfppml.remote.connect(cluster, worker="hospital", identity="analyst")
    yield remote
    remote.close()


def _entries(options):
    return [entry for _, entry in read_entries(options["audit"])]


def _still_serves(remote):
    assert (tfppml.remote.send([1.0, 2.0], remote) + 1.0).get().tolist() == [2.0, 3.0]


def _leaks(text: str, values: np.ndarray) -> list[str]:
    """Data values (in a few renderings) that occur in `text`."""
    found = []
    for value in np.asarray(values).ravel()[:200]:
        for rendering in {f"{value:.3f}", repr(float(value)), f"{value:.6g}"}:
            if rendering in text:
                found.append(rendering)
    return found


# -- pointer arithmetic on the client's own tensors


def test_send_arithmetic_and_get(analyst):
    x = tfppml.remote.send(tf.constant([1.0, 2.0, 3.0, 4.0]), analyst)
    y = tfppml.remote.send(np.array([10.0, 20.0, 30.0, 40.0], np.float32), analyst)
    assert isinstance(x, tfppml.remote.Pointer) and x.shape == (4,) and x.dtype == "float32"
    z = x + y
    np.testing.assert_allclose(z.get(), [11, 22, 33, 44])
    np.testing.assert_allclose((y - x).get(), [9, 18, 27, 36])
    np.testing.assert_allclose((x * y).get(), [10, 40, 90, 160])
    np.testing.assert_allclose((y / x).get(), [10, 10, 10, 10])
    np.testing.assert_allclose((2.0 * x - 1.0).get(), [1, 3, 5, 7])
    np.testing.assert_allclose((-x).get(), [-1, -2, -3, -4])
    assert float(z.sum().get()) == pytest.approx(110)
    assert float(z.mean().get()) == pytest.approx(27.5)
    assert float(x.max().get()) == 4.0


def test_matmul_reshape_and_axis_reductions(analyst):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(5, 2))
    pa, pb = tfppml.remote.send(a, analyst), tfppml.remote.send(b, analyst)
    np.testing.assert_allclose((pa @ pb).get(), a @ b)
    np.testing.assert_allclose(pa.reshape([15]).reshape([3, 5]).get(), a)
    np.testing.assert_allclose(pa.sum(axis=1).get(), a.sum(axis=1))
    np.testing.assert_allclose(pa.mean(axis=0).get(), a.mean(axis=0))
    np.testing.assert_allclose(pa.reshape([5, 3]).get(), a.reshape(5, 3))
    np.testing.assert_allclose(abs(pa).square().sqrt().get(), np.abs(a))


# -- policy on data sets


def test_dataset_aggregates_are_returned(analyst, data):
    x = analyst.dataset("patients")
    assert x.shape == (200, 4) and x.label == {"raw": ["patients"]}
    np.testing.assert_allclose(x.mean(axis=0).get(), data["patients"].mean(axis=0))
    np.testing.assert_allclose(x.sum().get(), data["patients"].sum())
    w = tfppml.remote.send(np.ones((4, 1)), analyst)
    np.testing.assert_allclose((x @ w).mean().get(), (data["patients"] @ np.ones((4, 1))).mean())
    assert set(analyst.datasets()) == {"patients", "labels", "tiny"}


def test_denied_get_reveals_nothing_of_the_data(hospital, analyst, data):
    _, options = hospital
    x = analyst.dataset("patients")
    derived = (x * 2.0 + 1.0).max(axis=1)
    for pointer in (x, derived, x.max(axis=0)):
        with pytest.raises(PolicyDenied) as info:
            pointer.get()
        text = str(info.value)
        assert isinstance(info.value, PermissionError)
        assert "identities.analyst.raw_read" in text and pointer.id in text
        assert "traceback" not in text
        assert _leaks(text, data["patients"]) == []
    denied = [e for e in _entries(options) if e.get("allowed") is False and e["op"] == "get"]
    assert denied and denied[-1]["rule"] == "identities.analyst.raw_read"
    # Every field of every entry but its wall-clock time, whose digits can match a value by chance (a time of
    # ...1549.988 once "leaked" 49.988).
    entries = [{k: v for k, v in entry.items() if k != "time"} for entry in _entries(options)]
    assert _leaks(json.dumps(entries), data["patients"]) == []


def test_aggregate_over_too_few_rows_is_denied(analyst, data):
    tiny = analyst.dataset("tiny")
    with pytest.raises(PolicyDenied, match=r"identities\.analyst\.unsafe_aggregates\.min_rows"):
        tiny.mean(axis=0).get()


def test_row_selection_tricks_do_not_count_as_aggregates(analyst):
    x = analyst.dataset("patients")
    mask = np.zeros((200, 1))
    mask[17] = 1.0
    selected = (x * tfppml.remote.send(mask, analyst)).sum(axis=0)  # = row 17, dressed as a sum over 200 rows
    selector = tfppml.remote.send(mask.T, analyst) @ x  # the same through matmul
    flat = x.reshape([800]).reshape([200, 4]).sum(axis=0)  # reshape removes the row certification
    for pointer in (selected, selector, flat):
        with pytest.raises(PolicyDenied, match="raw_read"):
            pointer.get()
    # Broadcasting a per-column tensor keeps the rows: a scaled mean is an aggregate.
    scaled = (x * tfppml.remote.send(np.full((1, 4), 2.0), analyst)).mean(axis=0)
    assert scaled.get().shape == (4,)


def test_raw_read_rule_allows_raw_values(hospital, data):
    cluster, _ = hospital
    with tfppml.remote.connect(cluster, worker="hospital", identity="driver") as driver:
        np.testing.assert_array_equal(driver.dataset("patients").get(), data["patients"])
        with pytest.raises(PolicyDenied, match=r"identities\.driver\.datasets"):
            driver.dataset("labels")


def test_identities_without_rules_or_datasets_are_refused(hospital):
    cluster, _ = hospital
    with tfppml.remote.connect(cluster, worker="hospital", identity="nobody") as nobody:
        with pytest.raises(PolicyDenied, match="rule 'identities'.*'nobody'"):
            tfppml.remote.send([1.0], nobody)
    with tfppml.remote.connect(cluster, worker="hospital", identity="stranger") as stranger:
        with pytest.raises(PolicyDenied, match=r"identities\.stranger\.datasets"):
            stranger.dataset("patients")
        with pytest.raises(PolicyDenied, match=r"identities\.stranger\.datasets"):
            stranger.dataset("no-such-data")  # same answer: existence is not revealed
        _still_serves(stranger)  # its own data is fine


def test_rate_limit(hospital):
    cluster, options = hospital
    with tfppml.remote.connect(cluster, worker="hospital", identity="limited") as limited:
        for _ in range(4):
            limited.info()
        with pytest.raises(PolicyDenied, match=r"identities\.limited\.rate_limit"):
            limited.info()
    assert _entries(options)[-1]["rule"] == "identities.limited.rate_limit"


def test_dp_mean_and_budget(hospital, analyst, data):
    _, options = hospital
    x = analyst.dataset("patients")
    noisy = x.dp_mean(lower=0, upper=100, epsilon=1.0)
    assert noisy.label == {"dp": ["patients"]}
    value = noisy.get()
    assert value.shape == (4,) and np.all(np.isfinite(value))
    assert not np.allclose(value, data["patients"].mean(axis=0))  # noise was added
    assert np.all(np.abs(value - data["patients"].mean(axis=0)) < 60)  # sigma ~ 4.4 here
    with pytest.raises(PolicyDenied, match=r"identities\.analyst\.dp\.epsilon_budget"):
        x.dp_sum(lower=0, upper=100, epsilon=5.0)
    # A DP release of data whose rows are not certified individuals is refused.
    mask = tfppml.remote.send(np.eye(200)[:, :1], analyst)
    with pytest.raises(PolicyDenied, match=r"identities\.analyst\.dp'.*not certified"):
        (x * mask).dp_sum(lower=0, upper=100, epsilon=0.1)
    entries = [e for e in _entries(options) if e["op"] == "dp"]
    assert entries[0]["allowed"] and entries[0]["epsilon"] == 1.0 and entries[0]["noise_multiplier"] > 0
    assert entries[1]["allowed"] is False


def test_keras_fit_predict_evaluate(analyst, data):
    x, y = analyst.dataset("patients"), analyst.dataset("labels")
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
    before = [w.copy() for w in model.get_weights()]
    model_ptr = analyst.fit(
        model, x, y, epochs=3, batch_size=50, loss="mse", optimizer="sgd", learning_rate=1e-5
    )
    assert model_ptr.label == {"weights": ["labels", "patients"]}
    for old, new in zip(before, model.get_weights()):  # the local model is untouched
        np.testing.assert_array_equal(old, new)
    trained = model_ptr.get()
    assert not np.allclose(trained.get_weights()[0], before[0])
    # On the analyst's own rows, evaluate and predict answer (only the weights rule is involved) ...
    mine_x, mine_y = data["patients"][:20] + 1.0, data["labels"][:20]
    evaluation = model_ptr.evaluate(tfppml.remote.send(mine_x, analyst), tfppml.remote.send(mine_y, analyst))
    assert evaluation.names == ["loss"]
    local_loss = np.mean((trained.predict(mine_x, verbose=0) - mine_y) ** 2)
    assert float(evaluation.get()[0]) == pytest.approx(local_loss, rel=1e-3)
    # ... on the data set, a model's outputs and losses are non-linear functions of each row (a crafted model
    # selects rows): per-patient predictions, their mean and the mean loss are all row-level data.
    predictions = model_ptr.predict(x)
    for pointer in (predictions, predictions.mean(), model_ptr.evaluate(x, y)):
        with pytest.raises(PolicyDenied, match="raw_read.*non-linear"):
            pointer.get()


def test_models_with_code_are_refused(analyst):
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Lambda(lambda t: t * 2)])
    with pytest.raises(RemoteError, match="class 'Lambda'.*not allowed"):
        tfppml.remote.send(model, analyst)
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(1)])
    with pytest.raises(RemoteError, match="compile.loss"):
        tfppml.remote.send_model(model, analyst, loss="my_custom_loss")
    _still_serves(analyst)


# -- robustness


def test_unknown_pointers_and_wrong_dtypes_get_clear_errors(analyst):
    x = tfppml.remote.send([1.0, 2.0], analyst)
    x.delete()
    with pytest.raises(RemoteError, match=r"LookupError.*`x`: unknown object '" + x.id):
        x.get()
    with pytest.raises(RemoteError, match=r"LookupError.*`x`: unknown object 'forged'"):
        analyst.call({"op": "get", "x": "forged"})
    floats = tfppml.remote.send(np.ones(3, np.float32), analyst)
    ints = tfppml.remote.send(np.ones(3, np.int64), analyst)
    with pytest.raises(RemoteError, match="`add` needs operands of one dtype: `a` is float32, `b` is int64"):
        floats + ints
    with pytest.raises(RemoteError, match="`value` has dtype uint8"):
        analyst.call({"op": "put"}, {"value": np.ones(3, np.uint8)})
    with pytest.raises(TypeError, match="dtype bool"):
        tfppml.remote.send(np.ones(3, bool), analyst)
    with pytest.raises(RemoteError, match=r"`matmul` needs 2-D operands \[n, k\] @ \[k, m\]"):
        floats @ floats
    with pytest.raises(RemoteError, match="`op` must be one of"):
        analyst.call({"op": "exec", "code": "import os"})
    _still_serves(analyst)


def test_other_identities_objects_are_unknown(hospital, analyst):
    cluster, _ = hospital
    mine = tfppml.remote.send([5.0], analyst)
    with tfppml.remote.connect(cluster, worker="hospital", identity="stranger") as stranger:
        with pytest.raises(RemoteError, match="unknown object"):
            stranger.call({"op": "get", "x": mine.id})
    assert mine.get().tolist() == [5.0]


def test_oversized_payloads_are_refused(hospital, analyst):
    cluster, _ = hospital
    with pytest.raises(ValueError, match="more than max_bytes"):
        tfppml.remote.send(np.zeros(MAX_MESSAGE_BYTES // 8 + 10), analyst)  # refused before sending
    with pytest.raises(
        RemoteError, match="max_object_bytes"
    ):  # under the message limit, over the object limit
        tfppml.remote.send(np.zeros(5 * 1024 * 1024 // 8), analyst)
    big = tfppml.remote.send(np.zeros((2000, 1)), analyst)
    with pytest.raises(RemoteError, match=r"shape \[2000, 2000\].*max_object_bytes"):
        big @ tfppml.remote.send(np.zeros((1, 2000)), analyst)
    # A message over the worker's limit sent raw: refused by the network layer, the worker keeps serving.
    party = cluster.remote("hospital", "analyst")
    with pytest.raises(ProtocolError):
        party.raw_call(b"TFPM" + b"\0" * (MAX_MESSAGE_BYTES + 1000))
    party.close()
    _still_serves(analyst)


def test_unauthenticated_clients_are_refused(hospital, analyst, tmp_path):
    cluster, _ = hospital
    generate_certificates(tmp_path, ["analyst"])  # same name, another CA
    with tfppml.remote.connect(
        cluster, worker="hospital", identity=Identity.load(tmp_path, "analyst")
    ) as fake:
        with pytest.raises(PartyUnavailableError):
            fake.dataset("patients")
    address = cluster.config.address("hospital")
    with grpc.insecure_channel(address, options=channel_options(MAX_MESSAGE_BYTES)) as channel:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary(CALL)(codec.encode_message({"op": "dataset", "name": "patients"}), timeout=5)
    _still_serves(analyst)


def test_objects_are_freed_on_gc_and_delete(analyst):
    gc.collect()
    start = analyst.object_count()
    pointers = [tfppml.remote.send([float(i)], analyst) for i in range(5)]
    assert analyst.object_count() == start + 5
    pointers[0].delete()
    assert analyst.object_count() == start + 4
    del pointers
    gc.collect()
    assert analyst.object_count() == start
    # Temporaries of an expression are collected too.
    x = tfppml.remote.send([1.0, 2.0], analyst)
    ((x + 1.0) * 2.0).sum().get()
    gc.collect()
    assert analyst.object_count() == start + 1


def test_audit_log_of_the_live_worker_verifies(hospital, analyst):
    _, options = hospital
    result = verify_log(options["audit"], load_key(options["audit_key"]))
    entries = _entries(options)
    assert result.entries == len(entries) > 20
    for entry in entries:
        assert {"who", "op", "allowed", "seq", "prev", "mac"} <= set(entry)
    assert {e["who"] for e in entries} >= {"analyst", "driver", "stranger", "nobody", "limited"}
    gets = [e for e in entries if e["op"] == "get" and e.get("allowed") and "error" not in e]
    assert all(e["result_bytes"] >= 0 and e["objects"] for e in gets)
