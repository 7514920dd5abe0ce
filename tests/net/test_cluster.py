"""Real worker processes on loopback: a 3-worker echo cluster, refusals, a killed worker, and clean-up.

Every worker is a `python -m tfppml.cli worker` process started by `Cluster`. Each start imports TensorFlow in
each worker (through `import tfppml`), so the tests share clusters where they can.
"""

import os
import signal
import time

import numpy as np
import pytest

from tfppml.errors import PartyUnavailableError, ProtocolError
from tfppml.net import codec
from tfppml.net.certs import Identity
from tfppml.net.client import RemoteParty
from tfppml.net.cluster import Cluster, Worker
from tfppml.net.config import load_config
from tfppml.net.transport import RemoteError

from .conftest import process_alive, processes_mentioning

MAX_BYTES = 32 * 1024 * 1024


def _loopback_workers(count):
    return [Worker("127.0.0.1:0") for _ in range(count)]


@pytest.fixture(scope="module")
def echo_cluster(cert_dir):
    # Given certificates (the kill test below covers certificates the cluster makes itself).
    cluster = Cluster(
        *_loopback_workers(3), service="echo", timeout=2, max_message_bytes=MAX_BYTES, cert_dir=cert_dir
    )
    cluster.start()
    workdir = str(cluster.config_path.parent)
    pids = [process.pid for process in cluster.processes.values()]
    yield cluster
    cluster.stop()
    # Nothing is left behind: no process, no temporary directory.
    assert not any(process_alive(pid) for pid in pids)
    assert processes_mentioning(workdir) == []
    assert not os.path.exists(workdir)


@pytest.fixture(scope="module")
def drivers(echo_cluster):
    parties = {name: echo_cluster.remote(name) for name in echo_cluster.names}
    yield parties
    for party in parties.values():
        party.close()


def test_each_worker_answers_as_itself(echo_cluster, drivers):
    for name, party in drivers.items():
        meta, tensors = party.call({"op": "echo", "n": 1}, {"x": np.arange(5, dtype=np.int64)})
        assert meta == {"op": "echo", "n": 1, "party": name, "caller": "driver"}
        np.testing.assert_array_equal(tensors["x"], np.arange(5))
        assert party.ping()["pid"] == echo_cluster.processes[name].pid
    with echo_cluster.remote("server1", identity="model_owner") as party:
        assert party.call({"op": "echo"})[0]["caller"] == "model_owner"


def test_workers_exchange_peer_messages(drivers):
    for round_ in range(3):
        values = {name: np.full((2, 3), 10**i + round_, np.uint64) for i, name in enumerate(drivers)}
        pending = {
            name: party.call_async({"op": "ring", "round": round_}, {"x": values[name]})
            for name, party in drivers.items()
        }
        sums = {name: call.result()[1]["sum"] for name, call in pending.items()}
        np.testing.assert_array_equal(sums["server0"], values["server0"] + values["server2"])
        np.testing.assert_array_equal(sums["server1"], values["server1"] + values["server0"])
        np.testing.assert_array_equal(sums["server2"], values["server2"] + values["server1"])


def test_8mb_uint64_send_between_processes(drivers):
    array = np.random.default_rng(0).integers(0, 2**64, size=1 << 20, dtype=np.uint64, endpoint=False)
    repeat = 5
    meta, _ = drivers["server0"].call(
        {"op": "send_timed", "peer": "server1", "tag": "bench", "repeat": repeat}, {"x": array}, timeout=60
    )
    _, tensors = drivers["server1"].call(
        {"op": "recv_all", "peer": "server0", "tag": "bench", "repeat": repeat}
    )
    np.testing.assert_array_equal(tensors["x"], array)
    seconds = sorted(meta["seconds"])
    print(f"\n8 MB uint64 send, TLS loopback, worker to worker: median {seconds[repeat // 2] * 1e3:.1f} ms, "
          f"min {seconds[0] * 1e3:.1f} ms, {array.nbytes / seconds[repeat // 2] / 1e6:.0f} MB/s")  # fmt: skip
    assert seconds[repeat // 2] < 2.0  # generous: a busy shared machine; a broken path takes far longer


def test_foreign_or_missing_certificate_is_refused(echo_cluster, drivers, foreign_cert_dir):
    with RemoteParty("server0", echo_cluster.config, Identity.load(foreign_cert_dir, "driver")) as party:
        with pytest.raises(PartyUnavailableError):
            party.call({"op": "echo"})
    import grpc

    ca = echo_cluster.identity("driver").ca_pem
    with grpc.secure_channel(
        echo_cluster.config.address("server0"), grpc.ssl_channel_credentials(ca)
    ) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/tfppml.net.Worker/Call")(codec.encode_message({"op": "echo"}), timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert drivers["server0"].call({"op": "echo"})[0]["party"] == "server0"


def test_malformed_oversized_and_failing_requests_get_clear_errors(drivers):
    party = drivers["server2"]
    with pytest.raises(ProtocolError, match="malformed request.*bad magic"):
        party.raw_call(b"\x16\x03\x01 definitely not a tfppml message")
    with pytest.raises(ProtocolError, match="malformed request.*truncated"):
        party.raw_call(codec.encode_message({"op": "echo"}, {"x": np.zeros(100)})[:-1])
    with pytest.raises(ProtocolError, match="refused call"):
        party.raw_call(codec.encode_message({}, {"x": np.zeros(MAX_BYTES + 100_000, np.uint8)}))
    with pytest.raises(RemoteError, match="ValueError: kaboom.*remote traceback"):
        party.call({"op": "fail", "message": "kaboom"})
    with pytest.raises(RemoteError, match="unknown op"):
        party.call({"op": "no-such-op"})
    assert party.call({"op": "echo"})[0]["party"] == "server2"  # still serving


def test_cluster_files_and_external_view(echo_cluster):
    config = load_config(echo_cluster.config_path)
    assert config == echo_cluster.config
    assert config.timeout == 2.0 and config.max_message_bytes == MAX_BYTES
    for name in echo_cluster.names:
        stdout = (echo_cluster.config_path.parent / f"{name}.stdout").read_text()
        assert stdout.startswith(f"TFPPML-READY name={name} port=")
    # The same workers seen as a not-auto-managed cluster (as a driver on another host would see them).
    external = Cluster.from_config(echo_cluster.config_path).start()
    assert external.config.parties == echo_cluster.config.parties
    assert external.remote("server1").ping()["name"] == "server1"
    external.stop()
    assert all(process.poll() is None for process in echo_cluster.processes.values())


def test_killed_worker_makes_peers_and_drivers_fail_fast_and_nothing_is_left(tmp_path):
    cluster = Cluster(*_loopback_workers(2), service="echo", timeout=2)
    with pytest.raises(RuntimeError, match="driver gave up"):
        with cluster:
            workdir = str(cluster.config_path.parent)
            pids = [process.pid for process in cluster.processes.values()]
            server0, server1 = cluster.remote("server0"), cluster.remote("server1")
            waiting = server0.call_async({"op": "recv", "peer": "server1", "tag": "t"}, timeout=10)
            time.sleep(0.3)
            os.kill(cluster.processes["server1"].pid, signal.SIGKILL)
            cluster.processes["server1"].wait(5)

            start = time.monotonic()
            with pytest.raises(PartyUnavailableError, match=r"message 't' from 'server1'"):
                waiting.result()  # a receive that was waiting when the peer died: within the 2 s timeout
            with pytest.raises(PartyUnavailableError, match=r"message 't2' from 'server1'"):
                server0.call({"op": "recv", "peer": "server1", "tag": "t2"})
            assert time.monotonic() - start < 6.0
            start = time.monotonic()
            with pytest.raises(PartyUnavailableError, match=r"'server1'.*unavailable for message 'u'"):
                server0.call({"op": "send", "peer": "server1", "tag": "u"}, {"x": np.zeros(3)})
            with pytest.raises(
                PartyUnavailableError, match=r"'server1' at 127.0.0.1:\d+ is unavailable for call"
            ):
                server1.call({"op": "echo"})
            assert time.monotonic() - start < 1.5
            assert server0.call({"op": "echo"})[0]["party"] == "server0"
            raise RuntimeError("driver gave up")
    assert not any(process_alive(pid) for pid in pids)
    assert processes_mentioning(workdir) == []
    assert not os.path.exists(workdir)
    assert not cluster.running


def test_unknown_service_module_fails_before_launching():
    cluster = Cluster(Worker("127.0.0.1:0"), service="no_such_module_xyz:make")
    with pytest.raises(ValueError, match="no module named 'no_such_module_xyz'"):
        cluster.start()
    with pytest.raises(ValueError, match="unknown service 'nope'"):
        Cluster(Worker("127.0.0.1:0"), service="nope").start()
    assert not cluster.running and cluster.processes == {}


# Slow only because each worker imports TensorFlow (through `import tfppml`) before it can fail.
@pytest.mark.slow
def test_worker_that_cannot_start_is_reported_with_its_stderr():
    cluster = Cluster(Worker("127.0.0.1:0"), service="tfppml.net.testing:no_such_factory", start_timeout=120)
    with pytest.raises(
        PartyUnavailableError, match=r"(?s)'server0' exited with code 2.*no callable 'no_such_factory'"
    ):
        cluster.start()
    assert not cluster.running and cluster.processes == {}


def test_start_timeout_kills_workers_and_raises(monkeypatch):
    import tfppml.net.cluster as cluster_module

    launched = []
    real_popen = cluster_module.subprocess.Popen

    def recording_popen(*args, **kwargs):
        launched.append(real_popen(*args, **kwargs))
        return launched[-1]

    monkeypatch.setattr(cluster_module.subprocess, "Popen", recording_popen)
    cluster = Cluster(*_loopback_workers(2), service="echo", start_timeout=0.3)
    with pytest.raises(PartyUnavailableError, match=r"were not ready within 0.3 s"):
        cluster.start()
    assert len(launched) == 2
    assert not any(process_alive(process.pid) for process in launched)
    assert cluster.processes == {} and not cluster.running


def test_cluster_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one Worker"):
        Cluster()
    with pytest.raises(ValueError, match="duplicate names"):
        Cluster(Worker("127.0.0.1:1", "a"), Worker("127.0.0.1:2", "a"))
    with pytest.raises(ValueError, match="Worker address"):
        Worker("localhost")
    with pytest.raises(ValueError, match="Worker name"):
        Worker("127.0.0.1:1", "bad name")
    with pytest.raises(ValueError, match="field 'timeout'"):
        Cluster(Worker("127.0.0.1:0"), timeout=-1)
    with pytest.raises(ValueError, match="`cert_dir` is required"):
        Cluster(Worker("127.0.0.1:1"), auto_managed=False)
    with pytest.raises(ValueError, match="no TLS material for identity 'server0'"):
        Cluster(Worker("127.0.0.1:0"), service="echo", cert_dir=tmp_path).start()
    with pytest.raises(RuntimeError, match="start\\(\\) the auto-managed cluster first"):
        Cluster(Worker("127.0.0.1:0")).config
