"""WorkerServer and RemoteParty in this process (real gRPC, mutual TLS, loopback): authentication, error
reporting, malformed and oversized requests, deadlines. After every refusal the worker must still serve."""

import threading
import time

import grpc
import numpy as np
import pytest

from tfppml.errors import PartyUnavailableError, PolicyDenied, ProtocolError
from tfppml.net import codec
from tfppml.net.certs import Identity
from tfppml.net.client import RemoteParty
from tfppml.net.server import WorkerServer
from tfppml.net.transport import CALL, STREAM, RemoteError, channel_options, secure_channel

from .conftest import loopback_config


class Recorder:
    """A service that records callers and can be told to misbehave."""

    def __init__(self):
        self.callers = []
        self.release = threading.Event()

    def handle(self, caller, meta, tensors):
        self.callers.append(caller)
        op = meta.get("op")
        if op == "deny":
            raise PolicyDenied("rule 'no-raw-reads' forbids reading dataset 'patients'")
        if op == "bad_reply":
            return {"x": object()}, {}
        if op == "not_a_tuple":
            return "nope"
        if op == "block":
            self.release.wait(5)
        if op == "big_reply":
            return {}, {"x": np.zeros(meta["n"], np.uint8)}
        return {"ok": True, "caller": caller}, tensors


@pytest.fixture
def worker(cert_dir):
    config = loopback_config(cert_dir)
    service = Recorder()
    server = WorkerServer("server0", config, service, max_concurrent_calls=2, max_calls_per_identity=2)
    server.start()
    yield config, server, service
    service.release.set()
    server.stop(grace=0)


def _still_serves(config, cert_dir):
    with RemoteParty("server0", config, Identity.load(cert_dir, "driver")) as party:
        assert party.call({"op": "ping"})[0]["ok"]


def test_caller_is_the_certificate_identity(worker, cert_dir):
    config, _, service = worker
    for name in ["driver", "model_owner", "server1"]:
        with RemoteParty("server0", config, name) as party:
            meta, tensors = party.call({"op": "x"}, {"t": np.arange(3, dtype=np.uint64)})
        assert meta == {"ok": True, "caller": name}
        np.testing.assert_array_equal(tensors["t"], np.arange(3))
    assert service.callers == ["driver", "model_owner", "server1"]


def test_ping_reports_name_and_pid(worker):
    config, _, _ = worker
    with RemoteParty("server0", config, "driver") as party:
        info = party.ping()
    assert info["name"] == "server0" and info["service"] == "Recorder" and info["pid"] > 0


def test_certificate_from_another_ca_is_refused(worker, cert_dir, foreign_cert_dir):
    config, _, service = worker
    with RemoteParty("server0", config, Identity.load(foreign_cert_dir, "driver")) as party:
        with pytest.raises(PartyUnavailableError, match="unavailable"):
            party.call({"op": "x"})
    assert service.callers == []
    _still_serves(config, cert_dir)


def test_client_without_certificate_is_refused(worker, cert_dir):
    config, _, service = worker
    ca = Identity.load(cert_dir, "driver").ca_pem
    for credentials in [grpc.ssl_channel_credentials(root_certificates=ca), None]:
        options = channel_options(config.max_message_bytes, target_name="server0")
        address = config.address("server0")
        channel = (
            grpc.insecure_channel(address, options=options)
            if credentials is None
            else grpc.secure_channel(address, credentials, options=options)
        )
        with channel:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(CALL)(codec.encode_message({"op": "x"}), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert service.callers == []
    _still_serves(config, cert_dir)


def test_server_with_another_partys_certificate_is_refused(cert_dir):
    # server1's key at server0's address: a driver dialling "server0" must not accept it.
    config = loopback_config(cert_dir)
    impostor = WorkerServer("server0", config, Recorder(), identity=Identity.load(cert_dir, "server0"))
    impostor._identity = Identity.load(
        cert_dir, "server1"
    )  # what a misconfigured or hostile host would present
    impostor.start()
    try:
        with RemoteParty("server0", config, "driver") as party:
            with pytest.raises(PartyUnavailableError, match="server0"):
                party.call({"op": "x"}, timeout=2)
    finally:
        impostor.stop(grace=0)


def test_handler_error_reaches_caller_with_traceback_summary(worker, cert_dir):
    config, _, _ = worker
    with RemoteParty("server0", config, "driver") as party:
        with pytest.raises(RemoteError) as info:
            party.call({"op": "bad_reply"})
        assert isinstance(info.value, ProtocolError)
        assert "invalid reply" in str(info.value) and "object" in str(info.value)
        with pytest.raises(RemoteError, match="must return \\(meta, tensors\\)"):
            party.call({"op": "not_a_tuple"})
    _still_serves(config, cert_dir)


def test_echo_service_failure_carries_type_message_and_traceback(servers):
    config = servers["server0"].channel.config
    with RemoteParty("server0", config, "driver") as party:
        with pytest.raises(RemoteError) as info:
            party.call({"op": "fail", "message": "boom 42"})
    err = info.value
    assert err.party == "server0" and err.remote_type == "ValueError"
    assert "boom 42" in err.remote_message and "remote traceback" in err.remote_message
    assert "testing.py" in err.remote_message


def test_policy_denied_keeps_its_type_and_has_no_traceback(worker):
    config, _, _ = worker
    with RemoteParty("server0", config, "driver") as party:
        with pytest.raises(PolicyDenied, match="no-raw-reads") as info:
            party.call({"op": "deny"})
    assert "traceback" not in str(info.value)


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "malformed request.*truncated"),
        (b"GET / HTTP/1.1\r\n\r\n", "malformed request.*bad magic"),
        (
            codec.encode_message({"op": "x"}, {"t": np.zeros(4, np.uint64)})[:-3],
            "malformed request.*truncated",
        ),
        (codec.encode_message({"op": "x"}) + b"\0", "trailing bytes"),
    ],
)
def test_malformed_requests_get_clear_errors(worker, cert_dir, data, match):
    config, _, service = worker
    with RemoteParty("server0", config, "driver") as party:
        with pytest.raises(ProtocolError, match=match):
            party.raw_call(data)
    assert service.callers == []
    _still_serves(config, cert_dir)


def test_oversized_request_is_refused_and_worker_keeps_serving(worker, cert_dir):
    config, _, service = worker
    too_big = codec.encode_message({}, {"x": np.zeros(config.max_message_bytes + 200_000, np.uint8)})
    with RemoteParty("server0", config, "driver") as party:
        with pytest.raises(ProtocolError, match="refused call.*(larger than max|exceeds)"):
            party.raw_call(too_big)
        # Just over the payload limit but within gRPC's frame slack: refused by the codec's own check.
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            party.raw_call(codec.encode_message({}, {"x": np.zeros(config.max_message_bytes, np.uint8)}))
        with pytest.raises(ValueError, match="max_message_bytes"):
            party.call({}, {"x": np.zeros(config.max_message_bytes, np.uint8)})
        with pytest.raises(RemoteError, match="invalid reply.*max_bytes"):
            party.call({"op": "big_reply", "n": config.max_message_bytes})
    assert service.callers == ["driver"]  # only the big_reply call reached the service
    # A client with a larger send limit than the cluster's: the worker's own gRPC limit refuses the frame.
    generous = secure_channel(
        config.address("server0"),
        Identity.load(cert_dir, "driver"),
        target_name="server0",
        max_message_bytes=4 * config.max_message_bytes,
    )
    with generous:
        with pytest.raises(grpc.RpcError) as info:
            generous.unary_unary(CALL)(too_big, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    assert service.callers == ["driver"]
    _still_serves(config, cert_dir)


def test_deadline_gives_party_unavailable(worker):
    config, _, service = worker
    with RemoteParty("server0", config, "driver") as party:
        start = time.monotonic()
        with pytest.raises(PartyUnavailableError, match="did not answer call within 0.3 s"):
            party.call({"op": "block"}, timeout=0.3)
        assert time.monotonic() - start < 2.0
    service.release.set()


def test_busy_worker_refuses_extra_calls_but_still_takes_peer_messages(worker, cert_dir):
    config, server, service = worker  # max_concurrent_calls=2
    parties = [RemoteParty("server0", config, "driver") for _ in range(3)]
    pending = [party.call_async({"op": "block"}, timeout=5) for party in parties[:2]]
    time.sleep(0.3)
    with pytest.raises(PartyUnavailableError, match="busy"):
        parties[2].call({"op": "x"})
    # A peer's stream is served by its own threads even now.
    peer = secure_channel(config.address("server0"), Identity.load(cert_dir, "server1"), target_name="server0",
                          max_message_bytes=config.max_message_bytes)  # fmt: skip
    stream = peer.stream_unary(STREAM).future(iter([codec.encode_message({"tag": "t"}, {"value": np.ones(2)})]))
    np.testing.assert_array_equal(server.channel.recv("server1", "t", timeout=1), np.ones(2))
    assert stream.result(timeout=2) == b""
    service.release.set()
    assert [p.result()[0]["ok"] for p in pending] == [True, True]
    for party in parties:
        party.close()
    peer.close()


def test_one_identity_cannot_hold_every_call_slot(cert_dir):
    config = loopback_config(cert_dir)
    service = Recorder()
    server = WorkerServer("server0", config, service, max_concurrent_calls=4, max_calls_per_identity=1)
    server.start()
    try:
        flooder = [RemoteParty("server0", config, "driver") for _ in range(2)]
        pending = flooder[0].call_async({"op": "block"}, timeout=5)
        time.sleep(0.3)
        with pytest.raises(PartyUnavailableError, match="busy for 'driver'"):
            flooder[1].call({"op": "x"})
        # Another identity is still served while the flooder holds its one slot.
        with RemoteParty("server0", config, "model_owner") as owner:
            assert owner.call({"op": "ping"})[0]["caller"] == "model_owner"
        service.release.set()
        assert pending.result()[0]["ok"]
        for party in flooder:
            party.close()
    finally:
        service.release.set()
        server.stop(grace=0)


def test_per_identity_call_slots_are_checked(cert_dir):
    config = loopback_config(cert_dir)
    for bad in (0, 5, True, "2"):
        with pytest.raises(ValueError, match="max_calls_per_identity"):
            WorkerServer("server0", config, Recorder(), max_concurrent_calls=4, max_calls_per_identity=bad)


def _stream_of(config, cert_dir, name, messages):
    """Sends `messages` on one stream to server0 as `name`; returns the call's outcome (b"" or the RpcError)."""
    channel = secure_channel(
        config.address("server0"), Identity.load(cert_dir, name), target_name="server0",
        max_message_bytes=config.max_message_bytes,
    )  # fmt: skip
    try:
        return channel.stream_unary(STREAM)(iter(messages), timeout=5)
    except grpc.RpcError as err:
        return err
    finally:
        channel.close()


def test_streams_only_from_parties_and_well_formed(worker, cert_dir):
    config, server, _ = worker
    good = codec.encode_message({"tag": "t"}, {"value": np.ones(2)})
    refused = _stream_of(config, cert_dir, "driver", [good])
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "not a peer" in refused.details()
    bad = [
        codec.encode_message({"tag": "t", "extra": 1}, {"value": np.ones(2)}),
        codec.encode_message({"tag": "t"}, {"other": np.ones(2)}),
        codec.encode_message({"tag": ""}, {"value": np.ones(2)}),
        codec.encode_message({"tag": 5}, {"value": np.ones(2)}),
        b"\x00" * 40,
    ]
    for index, data in enumerate(bad):
        # A bad message ends the stream with INVALID_ARGUMENT; what came before it was stored, nothing after it.
        before = codec.encode_message({"tag": f"before{index}"}, {"value": np.ones(2)})
        after = codec.encode_message({"tag": f"after{index}"}, {"value": np.ones(2)})
        outcome = _stream_of(config, cert_dir, "server1", [before, data, after])
        assert isinstance(outcome, grpc.RpcError) and outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
        np.testing.assert_array_equal(server.channel.recv("server1", f"before{index}", timeout=1), np.ones(2))
    assert server.channel._mailbox.pending == 0
    # A duplicate tag is refused too (the stream ends), the first copy stays.
    outcome = _stream_of(config, cert_dir, "server2", [good, good])
    assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT and "duplicate message" in outcome.details()
    assert server.channel._mailbox.pending == 1
    _still_serves(config, cert_dir)


def test_a_peer_that_disconnects_wakes_its_waiting_receivers(worker, cert_dir):
    config, server, _ = worker
    channel = secure_channel(
        config.address("server0"), Identity.load(cert_dir, "server1"), target_name="server0",
        max_message_bytes=config.max_message_bytes,
    )  # fmt: skip
    gate = threading.Event()

    def messages():
        yield codec.encode_message({"tag": "first"}, {"value": np.ones(2)})
        gate.wait(5)  # keep the stream open until the receiver waits, then drop the connection

    call = channel.stream_unary(STREAM).future(messages())
    np.testing.assert_array_equal(server.channel.recv("server1", "first", timeout=2), np.ones(2))
    threading.Timer(0.3, lambda: (call.cancel(), channel.close())).start()
    start = time.monotonic()
    with pytest.raises(PartyUnavailableError, match="waiting for message 'second' from 'server1' when the"):
        server.channel.recv("server1", "second", timeout=10)
    assert time.monotonic() - start < 3.0
    gate.set()


def test_dead_worker_fails_calls_fast(cert_dir):
    config = loopback_config(cert_dir)
    with RemoteParty("server2", config, "driver") as party:
        start = time.monotonic()
        with pytest.raises(
            PartyUnavailableError, match="'server2' at 127.0.0.1:\\d+ is unavailable for call"
        ):
            party.call({"op": "x"})
        with pytest.raises(PartyUnavailableError):
            party.call_async({"op": "x"}).result()
        with pytest.raises(PartyUnavailableError):
            party.ping(timeout=0.5)
        assert time.monotonic() - start < 2.0


def test_stop_wakes_waiting_receive(servers):
    channel = servers["server1"].channel
    errors = []

    def wait():
        try:
            channel.recv("server0", "never", timeout=10)
        except ProtocolError as err:
            errors.append(err)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    servers["server1"].stop(grace=0)
    thread.join(5)
    assert time.monotonic() - start < 3 and errors and "stopped" in str(errors[0])


def test_constructor_errors(cert_dir):
    config = loopback_config(cert_dir)
    with pytest.raises(ValueError, match="`name` must be one of the cluster's parties"):
        WorkerServer("driver", config, Recorder())
    with pytest.raises(ValueError, match="unknown service 'nope'"):
        WorkerServer("server0", config, "nope")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        WorkerServer("server0", config, "no_such_module_xyz:make")
    with pytest.raises(ValueError, match="`identity` is for 'server1'"):
        WorkerServer("server0", config, Recorder(), identity=Identity.load(cert_dir, "server1"))
    with pytest.raises(ValueError, match="max_concurrent_calls"):
        WorkerServer("server0", config, Recorder(), max_concurrent_calls=0)


def test_address_in_use_is_a_clear_error(worker):
    config, _, _ = worker
    second = WorkerServer("server0", config, Recorder())
    with pytest.raises(RuntimeError, match="cannot listen"):
        second.start()
