"""Parties and workers as processes: gRPC channels with mutual TLS, cluster configuration and certificates.

The pieces, bottom up:

- `codec`: the wire format (JSON metadata + raw tensors with dtype/shape headers), strictly validated.
- `certs`: a CA and a key + certificate per identity (`tfppml cluster keys`).
- `config`: `ClusterConfig` / `load_config` for cluster.json.
- `channel`: the `Channel` interface protocols use, and `PeerChannel` over the network;
  `local.make_local_channels` gives the same interface in one process.
- `server`: `WorkerServer`, the mutual-TLS gRPC server inside each worker; `services`: what a worker runs.
- `client`: `RemoteParty`, how a driver commands a worker.
- `cluster`: `Cluster` / `Worker`, which start and stop local worker processes (`tfppml worker`).

Example:
    >>> from tfppml.net import Cluster, Worker
    >>> cluster = Cluster(*(Worker("localhost:0") for _ in range(3)), service="echo")
    >>> with cluster:                                                   # doctest: +SKIP
    ...     meta, tensors = cluster.remote("server0").call({"op": "echo"})
"""

from tfppml.net.certs import Identity, generate_certificates
from tfppml.net.channel import Channel, PeerChannel
from tfppml.net.client import PendingCall, RemoteParty
from tfppml.net.cluster import Cluster, Worker
from tfppml.net.codec import decode_message, encode_message
from tfppml.net.config import ClusterConfig, load_config
from tfppml.net.local import LocalChannel, make_local_channels
from tfppml.net.server import WorkerServer
from tfppml.net.services import SERVICES, Service, resolve_service
from tfppml.net.transport import RemoteError

__all__ = [
    "SERVICES",
    "Channel",
    "Cluster",
    "ClusterConfig",
    "Identity",
    "LocalChannel",
    "PeerChannel",
    "PendingCall",
    "RemoteError",
    "RemoteParty",
    "Service",
    "Worker",
    "WorkerServer",
    "decode_message",
    "encode_message",
    "generate_certificates",
    "load_config",
    "make_local_channels",
    "resolve_service",
]
