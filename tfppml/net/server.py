"""The server inside every worker process: mutual-TLS gRPC that answers drivers and receives peers' messages.

`WorkerServer` listens on its party's address from the cluster configuration, with a server certificate for its
party name and `require_client_auth`: only holders of a certificate from the cluster's CA get a connection at
all. It serves three methods (see `tfppml.net.transport`):

- Call: decodes the request, passes it to `service.handle(caller, meta, tensors)` with the caller's authenticated
  identity, and returns the encoded reply. A handler exception goes back to the caller as an error carrying the
  exception's type, message and a traceback summary; the worker keeps serving.
- Stream: a peer's long-lived stream of protocol messages; each is stored in the mailbox that the worker's
  `PeerChannel.recv` reads. Only the cluster's parties may open one, and the sender is taken from the TLS
  certificate, never from the message. A malformed or refused message ends the stream with a clear status (the
  peer's next send raises it); a stream that ends wakes the receivers waiting for that peer with an error.
- Ping: name, service and process id, for launchers and health checks.

Malformed or oversized requests are refused with a clear status (INVALID_ARGUMENT / RESOURCE_EXHAUSTED) before
any handler runs.

Example:
    >>> server = WorkerServer("server0", config, "echo")       # doctest: +SKIP
    >>> server.start(); server.wait_for_termination()          # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from concurrent import futures
from typing import Any, Callable, Iterator

import grpc
import numpy as np

from tfppml.errors import PartyUnavailableError, PolicyDenied, ProtocolError
from tfppml.net import codec
from tfppml.net.certs import Identity
from tfppml.net.channel import PeerChannel
from tfppml.net.config import ClusterConfig, parse_address
from tfppml.net.mailbox import DEFAULT_HISTORY, Mailbox, check_tag
from tfppml.net.services import Service, resolve_service
from tfppml.net.transport import (
    SERVICE,
    abort_with,
    channel_options,
    describe_exception,
    server_credentials,
)

__all__ = ["WorkerServer"]

_log = logging.getLogger(__name__)
# Threads kept free for Ping even when every call slot is busy.
_SPARE_THREADS = 8
# Every peer's stream holds a server thread for as long as it is open (two per peer: a restarted peer's new stream
# may open before the old one is torn down).  A call that waits for a peer's message must never starve the thread
# that would store that message.
_STREAM_THREADS_PER_PEER = 2

_Failure = tuple[grpc.StatusCode, str, str]


class WorkerServer:
    """A worker's gRPC server (mutual TLS), its mailbox and its peer channel.

    Args:
      name: This worker's party name (a key of `config.parties`).
      config: The cluster configuration.
      service: A service object (anything with `handle(caller, meta, tensors)` that is not a class), or a
        factory `factory(name, config, channel) -> service`, or a registered service name / "module:factory"
        (see `tfppml.net.services`).
      identity: TLS material; default `Identity.load(config.cert_dir, name)`.
      listen: "host:port" to bind; default the party's configured address (use e.g. "0.0.0.0:4000" to accept
        connections on every interface while peers dial the configured name).
      max_concurrent_calls: Driver calls served at once; further calls are refused as busy (RESOURCE_EXHAUSTED)
        rather than queued behind a blocked protocol.
      max_calls_per_identity: Of those, the most one identity may hold at once (default a quarter, at least
        one): a caller flooding the server cannot take every slot from the others.
      service_options: Extra keyword `options=` for the factory (e.g. from `tfppml worker --option k=v`).

    Raises:
      ValueError: `name` is not a party, the TLS material is missing, or `service` cannot be resolved.
    """

    def __init__(
        self,
        name: str,
        config: ClusterConfig,
        service: Service | Callable[..., Service] | str,
        *,
        identity: Identity | None = None,
        listen: str | None = None,
        max_concurrent_calls: int = 16,
        max_calls_per_identity: int | None = None,
        service_options: dict[str, str] | None = None,
    ) -> None:
        self._name = config.check_party(name)
        self._config = config
        self._identity = identity if identity is not None else Identity.load(config.cert_dir, name)
        if self._identity.name != name:
            raise ValueError(f"`identity` is for {self._identity.name!r}, not for worker {name!r}")
        self._listen = listen if listen is not None else config.address(name)
        parse_address(self._listen, arg="`listen`", allow_port_zero=True)
        if (
            isinstance(max_concurrent_calls, bool)
            or not isinstance(max_concurrent_calls, int)
            or max_concurrent_calls < 1
        ):
            raise ValueError(f"`max_concurrent_calls` must be a positive int, got {max_concurrent_calls!r}")
        if max_calls_per_identity is None:
            max_calls_per_identity = max(1, max_concurrent_calls // 4)
        if (
            isinstance(max_calls_per_identity, bool)
            or not isinstance(max_calls_per_identity, int)
            or not 1 <= max_calls_per_identity <= max_concurrent_calls
        ):
            raise ValueError(
                f"`max_calls_per_identity` must be an int in [1, max_concurrent_calls={max_concurrent_calls}], "
                f"got {max_calls_per_identity!r}"
            )
        self._max_calls_per_identity = max_calls_per_identity
        self._calls_by_identity: collections.Counter[str] = collections.Counter()
        self._calls_lock = threading.Lock()
        self._mailbox = Mailbox(name, history=DEFAULT_HISTORY)
        self._channel = PeerChannel(name, config, self._identity, self._mailbox)
        self._service = self._make_service(service, service_options)
        self._call_slots = threading.BoundedSemaphore(max_concurrent_calls)
        self._max_workers = (
            max_concurrent_calls + _SPARE_THREADS + _STREAM_THREADS_PER_PEER * (len(config.party_names) - 1)
        )
        self._streams_lock = threading.Lock()
        self._stream_contexts: set[grpc.ServicerContext] = set()
        self._server: grpc.Server | None = None
        self._port: int | None = None

    @property
    def name(self) -> str:
        """This worker's party name."""
        return self._name

    @property
    def channel(self) -> PeerChannel:
        """The channel to the other parties (also given to the service factory)."""
        return self._channel

    @property
    def service(self) -> Service:
        """The service answering calls."""
        return self._service

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        if self._port is None:
            raise RuntimeError("WorkerServer.port: the server is not started")
        return self._port

    def start(self) -> int:
        """Binds and starts serving in background threads.

        Returns:
          The bound port.

        Raises:
          RuntimeError: Already started, or the address cannot be bound (e.g. in use).
        """
        if self._server is not None:
            raise RuntimeError(f"worker {self._name!r} is already started")
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Call": grpc.unary_unary_rpc_method_handler(self._on_call),
                "Ping": grpc.unary_unary_rpc_method_handler(self._on_ping),
                "Stream": grpc.stream_unary_rpc_method_handler(self._on_stream),
            },
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix=f"tfppml-{self._name}"
            ),
            handlers=[handler],
            # No SO_REUSEPORT: a second worker on a taken port must fail, not silently share the traffic.
            options=[*channel_options(self._config.max_message_bytes), ("grpc.so_reuseport", 0)],
        )
        try:
            port = server.add_secure_port(self._listen, server_credentials(self._identity))
        except RuntimeError as err:
            raise RuntimeError(f"worker {self._name!r} cannot listen on {self._listen}: {err}") from None
        if port == 0:
            raise RuntimeError(f"worker {self._name!r} cannot listen on {self._listen} (address in use?)")
        server.start()
        self._server, self._port = server, port
        _log.info("worker %s listening on %s (port %d)", self._name, self._listen, port)
        return port

    def stop(self, grace: float | None = 1.0) -> None:
        """Stops serving (in-flight calls get `grace` seconds), wakes waiting receives, closes the service."""
        server, self._server = self._server, None
        stopped = server.stop(grace) if server is not None else None
        # Peers' streams never finish on their own while the peers run: end them now rather than after `grace`.
        with self._streams_lock:
            contexts = list(self._stream_contexts)
        for context in contexts:
            context.cancel()
        # Wake handlers blocked in recv now: they would otherwise hold the process open until their timeout.
        self._mailbox.close(f"worker {self._name!r} stopped")
        if stopped is not None:
            stopped.wait()
        self._channel.close()
        close = getattr(self._service, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - shutting down: report, do not mask the reason we stop
                _log.exception("service of %s failed to close", self._name)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Blocks until the server stops (or `timeout`); returns True if it stopped."""
        server = self._server
        return True if server is None else server.wait_for_termination(timeout)

    def __enter__(self) -> WorkerServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- RPC handlers. context.abort raises, so failures are decided inside try blocks and aborted outside them.

    def _on_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        caller = self._caller(context)
        with self._calls_lock:
            mine = self._calls_by_identity[caller] < self._max_calls_per_identity
            if mine:
                self._calls_by_identity[caller] += 1
        if not mine:
            _log.warning("call from %s refused: it holds %d call slots already", caller, self._max_calls_per_identity)
            abort_with(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "PartyUnavailableError",
                f"worker {self._name!r} is busy for {caller!r}: it has {self._max_calls_per_identity} calls running "
                f"(the most one identity may hold)",
            )
        if not self._call_slots.acquire(blocking=False):
            self._release_identity(caller)
            abort_with(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "PartyUnavailableError",
                f"worker {self._name!r} is busy: all call slots are in use",
            )
        try:
            reply, failure = self._serve_call(caller, request)
        finally:
            self._call_slots.release()
            self._release_identity(caller)
        if failure is not None:
            abort_with(context, *failure)
        return reply

    def _release_identity(self, caller: str) -> None:
        with self._calls_lock:
            self._calls_by_identity[caller] -= 1
            if self._calls_by_identity[caller] <= 0:
                del self._calls_by_identity[caller]

    def _serve_call(self, caller: str, request: bytes) -> tuple[bytes, _Failure | None]:
        limit = self._config.max_message_bytes
        try:
            meta, tensors = codec.decode_message(request, max_bytes=limit)
        except ProtocolError as err:
            _log.warning("malformed call from %s: %s", caller, err)
            return b"", (grpc.StatusCode.INVALID_ARGUMENT, "ProtocolError", f"malformed request: {err}")
        try:
            result = self._service.handle(caller, meta, tensors)
        except PolicyDenied as err:
            # No traceback for refusals: the caller learns the rule, nothing about the data behind it.
            _log.info("call from %s denied: %s", caller, err)
            return b"", (grpc.StatusCode.PERMISSION_DENIED, "PolicyDenied", str(err))
        except PartyUnavailableError as err:
            _log.warning("call from %s: %s", caller, err)
            return b"", (grpc.StatusCode.UNAVAILABLE, "PartyUnavailableError", str(err))
        except (
            Exception
        ) as err:  # noqa: BLE001 - any handler failure goes back to the caller; we keep serving
            if isinstance(err, ProtocolError):
                # A refused or cancelled request (bad arguments, a query not sent to every server): the caller's
                # doing, cheap to provoke, so one line and no traceback (a flood must not flood the log).
                _log.info("call from %s refused: %s: %.300s", caller, type(err).__name__, err)
            else:
                _log.exception("call from %s failed", caller)
            return b"", (grpc.StatusCode.INTERNAL, type(err).__name__, describe_exception(err))
        try:
            reply_meta, reply_tensors = _check_reply(result)
            return codec.encode_message(reply_meta, reply_tensors, max_bytes=limit), None
        except (TypeError, ValueError) as err:
            _log.error("service of %s returned an invalid reply: %s", self._name, err)
            return b"", (
                grpc.StatusCode.INTERNAL,
                "ProtocolError",
                f"the service returned an invalid reply: {err}",
            )

    def _on_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        sender = self._caller(context)
        if sender not in self._config.parties or sender == self._name:
            abort_with(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "ProtocolError",
                f"{sender!r} is not a peer of {self._name!r}: only cluster parties send protocol messages",
            )
        with self._streams_lock:
            self._stream_contexts.add(context)
        self._mailbox.connected(sender)
        failure: _Failure | None = None
        ended = f"the stream from {sender!r} ended"
        try:
            for request in requests:
                failure = self._store(sender, request)
                if failure is not None:
                    ended = f"a message from {sender!r} was refused ({failure[2]})"
                    break
        except grpc.RpcError:  # the peer's process or connection went away mid-stream
            ended = f"the connection from {sender!r} was lost"
        finally:
            self._mailbox.disconnected(sender, ended)
            with self._streams_lock:
                self._stream_contexts.discard(context)
        if failure is not None:
            abort_with(context, *failure)
        return b""

    def _store(self, sender: str, request: bytes) -> _Failure | None:
        try:
            # Views, not copies: protocol code never writes into a received array (they are read-only, so a
            # write would raise rather than corrupt), and a copy of every byte received was ~5% of a server's CPU.
            meta, tensors = codec.decode_message(request, max_bytes=self._config.max_message_bytes, copy=False)
            tag = meta.get("tag")
            if set(meta) != {"tag"} or set(tensors) != {"value"}:
                raise ProtocolError(
                    f"a peer message holds meta {sorted(meta)} and tensors {sorted(tensors)}; expected 'tag' and 'value'"
                )
            try:
                check_tag(tag)
            except (TypeError, ValueError) as err:
                raise ProtocolError(f"bad tag in peer message: {err}") from None
            self._mailbox.put(sender, tag, tensors["value"])
        except ProtocolError as err:
            _log.warning("message from %s refused: %s", sender, err)
            return grpc.StatusCode.INVALID_ARGUMENT, "ProtocolError", str(err)
        return None

    def _on_ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._caller(context)
        return codec.encode_message(
            {"name": self._name, "service": type(self._service).__name__, "pid": os.getpid()}
        )

    def _caller(self, context: grpc.ServicerContext) -> str:
        names = context.auth_context().get("x509_common_name") or []
        if len(names) != 1:
            abort_with(
                context, grpc.StatusCode.UNAUTHENTICATED, "ProtocolError", "no client certificate identity"
            )
        return names[0].decode("utf-8", "replace")

    def _make_service(self, service: Any, options: dict[str, str] | None) -> Service:
        if isinstance(service, str):
            service = resolve_service(service)
        if not isinstance(service, type) and callable(getattr(service, "handle", None)):
            if options:
                raise ValueError("`service_options` needs a service factory, not a ready service object")
            return service
        if not callable(service):
            raise TypeError(
                f"`service` must be a service, a factory or a service name, got {type(service).__name__}"
            )
        made = service(
            self._name, self._config, self._channel, **({"options": dict(options)} if options else {})
        )
        if not callable(getattr(made, "handle", None)):
            raise TypeError(
                f"service factory {service!r} returned {type(made).__name__}, which has no handle()"
            )
        return made


def _check_reply(result: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"handle() must return (meta, tensors), got {type(result).__name__}")
    meta, tensors = result
    if not isinstance(meta, dict) or not isinstance(tensors, dict):
        raise TypeError(
            f"handle() must return (dict, dict), got ({type(meta).__name__}, {type(tensors).__name__})"
        )
    return meta, tensors
