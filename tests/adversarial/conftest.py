"""Fixtures of the networked hostile-client tests: certificates, three in-process "mpc" workers on loopback
(real gRPC with mutual TLS, in this process: quick to start, and a server can be weakened or restarted), and
the raw calls a hostile client makes to one server at a time.

Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import portpicker
import pytest

from tfppml.net.certs import Identity, generate_certificates, party_names
from tfppml.net.client import RemoteParty
from tfppml.net.config import ClusterConfig
from tfppml.net.server import WorkerServer

PARTIES = party_names(3)
#: Identities with certificates: the owners, the honest clients and the hostile one.
IDENTITIES = ["driver", "model_owner", "client", *(f"client{i}" for i in range(8)), "mallory"]
W1 = np.array([[1.0, -2.0, 0.5], [0.5, 3.0, -1.0]])
W2 = np.array([[0.25, -1.5], [2.0, 0.5], [-0.75, 1.0]])


def mlp_reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(x, dtype=np.float64) @ W1, 0) @ W2


class LoopbackServers:
    """Three in-process `WorkerServer`s running the "mpc" service on loopback.

    Has what `tfppml.mpc.ABY3` (its `NetworkBackend`) needs of a cluster: `.names` and `.remote(name,
    identity)`.  `service_options` set the servers' `PartyLimits` (see `tfppml.mpc.runtime.make_service`);
    `server_kwargs` go to `WorkerServer` (e.g. max_concurrent_calls, max_calls_per_identity).
    """

    def __init__(self, cert_dir: Path, *, timeout: float = 30.0, service_options=None, **server_kwargs) -> None:
        parties = {name: f"127.0.0.1:{portpicker.pick_unused_port()}" for name in PARTIES}
        self.config = ClusterConfig(parties=parties, cert_dir=cert_dir, timeout=timeout)
        self._service_options = dict(service_options or {})
        self._server_kwargs = server_kwargs
        self.servers: dict[str, WorkerServer] = {}
        self._remotes: list[RemoteParty] = []

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.config.parties)

    def _make(self, name: str) -> WorkerServer:
        return WorkerServer(name, self.config, "mpc", service_options=self._service_options, **self._server_kwargs)

    def start(self) -> "LoopbackServers":
        for name in self.names:
            self.servers[name] = self._make(name)
            self.servers[name].start()
        return self

    def restart(self, name: str) -> WorkerServer:
        """Stops `name` abruptly (no grace: in-flight calls are cut) and starts a new server, with a new runtime
        and no state, on the same address."""
        self.servers[name].stop(grace=0)
        deadline = time.monotonic() + 10
        while True:
            try:
                server = self._make(name)
                server.start()
                break
            except RuntimeError:  # the port may take a moment to be free again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.servers[name] = server
        return server

    def remote(self, name: str, identity: str = "driver") -> RemoteParty:
        remote = RemoteParty(name, self.config, Identity.load(self.config.cert_dir, identity))
        self._remotes.append(remote)
        return remote

    def runtime(self, name: str):
        """The party runtime (`tfppml.mpc.dispatch.PartyRuntime`) of server `name`."""
        return self.servers[name].service

    def stop(self) -> None:
        for remote in self._remotes:
            remote.close()
        for server in self.servers.values():
            server.stop(grace=0)


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("adversarial-certs")
    generate_certificates(directory, PARTIES + IDENTITIES)
    return directory


@pytest.fixture
def loopback(cert_dir):
    """A factory of started `LoopbackServers` (keyword arguments as its constructor's); all stopped at the end."""
    made: list[LoopbackServers] = []

    def make(**kwargs) -> LoopbackServers:
        servers = LoopbackServers(cert_dir, **kwargs).start()
        made.append(servers)
        return servers

    yield make
    for servers in made:
        servers.stop()


def timed(fn, *args, **kwargs):
    """(result or the exception raised, seconds)."""
    start = time.monotonic()
    try:
        result = fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - returned for the test to inspect
        result = err
    return result, time.monotonic() - start
