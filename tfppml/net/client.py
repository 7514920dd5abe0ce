"""Driver side: command a worker (as a model owner, a client, a data scientist...) over mutual TLS.

Example:
    >>> party = RemoteParty("server0", cluster.config, cluster.identity("driver"))     # doctest: +SKIP
    >>> meta, tensors = party.call({"op": "echo"}, {"x": np.arange(3)})                 # doctest: +SKIP
    >>> pending = [RemoteParty(n, cfg, me).call_async({"op": "run"}) for n in cfg.parties]  # doctest: +SKIP
    >>> results = [p.result() for p in pending]                                         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping, NoReturn

import grpc
import numpy as np

from tfppml.errors import PartyUnavailableError, ProtocolError
from tfppml.net import codec
from tfppml.net.certs import Identity
from tfppml.net.channel import check_timeout
from tfppml.net.config import ClusterConfig
from tfppml.net.transport import CALL, PING, raise_for_rpc_error, secure_channel

__all__ = ["PendingCall", "RemoteParty"]

Message = tuple[dict[str, Any], dict[str, np.ndarray]]


class PendingCall:
    """A call in flight (from `RemoteParty.call_async`); `result()` returns or raises like `RemoteParty.call`."""

    def __init__(self, party: RemoteParty, future: grpc.Future, action: str, timeout: float) -> None:
        self._party = party
        self._future = future
        self._action = action
        self._timeout = timeout

    def done(self) -> bool:
        """True once the reply (or failure) is in."""
        return self._future.done()

    def cancel(self) -> bool:
        """Cancels the call if it is still running; returns True if it was cancelled."""
        return self._future.cancel()

    def result(self) -> Message:
        """Waits for the reply (the call's own deadline bounds the wait) and decodes it.

        Raises:
          The same errors as `RemoteParty.call`.
        """
        try:
            data = self._future.result()
        except grpc.RpcError as err:
            self._party._raise(err, self._action, self._timeout)
        except grpc.FutureCancelledError:
            raise PartyUnavailableError(f"{self._action} to {self._party.name!r} was cancelled") from None
        return self._party._decode(data)


class RemoteParty:
    """A connection from a driver identity to one worker.

    Args:
      name: The worker's party name (a key of `config.parties`); its certificate must carry this name.
      config: The cluster configuration.
      identity: This driver's TLS material, or an identity name to load from `config.cert_dir`.

    Raises:
      ValueError: `name` is not a party, or the identity's files are missing.
    """

    def __init__(self, name: str, config: ClusterConfig, identity: Identity | str) -> None:
        self._name = config.check_party(name)
        self._config = config
        self._identity = (
            identity if isinstance(identity, Identity) else Identity.load(config.cert_dir, identity)
        )
        self._address = config.address(name)
        self._channel = secure_channel(
            self._address, self._identity, target_name=name, max_message_bytes=config.max_message_bytes
        )
        # A call's default deadline is a little longer than the cluster timeout: when a protocol step inside the
        # worker waits the full timeout for a silent peer, the worker's own report (naming that peer and the
        # message) arrives before the driver gives up on the worker itself.
        self._call_timeout = config.timeout + max(1.0, 0.25 * config.timeout)
        self._call = self._channel.unary_unary(CALL)
        self._ping = self._channel.unary_unary(PING)

    @property
    def name(self) -> str:
        """The worker's party name."""
        return self._name

    def call(
        self,
        meta: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Sends a request to the worker's service and returns its reply.

        Args:
          meta: JSON metadata of the request (see `tfppml.net.codec.encode_message`).
          tensors: Arrays of the request.
          timeout: Seconds to wait for the reply; default the cluster's timeout plus a margin (25%, at least 1 s),
            so that a worker's report of a silent peer arrives first. Long computations should pass their own.

        Returns:
          `(meta, tensors)` of the reply.

        Raises:
          PartyUnavailableError: The worker cannot be reached (down, or refused our certificate) or did not
            answer within `timeout`.
          tfppml.net.transport.RemoteError: The worker's handler raised (a ProtocolError carrying the remote type,
            message and traceback summary).
          PolicyDenied: The worker's policy refused the request.
          ProtocolError: The worker refused the request itself (malformed or too large), or its reply is
            malformed.
          TypeError, ValueError: `meta`/`tensors` cannot be encoded, or the request exceeds the message limit.
        """
        wait = check_timeout(timeout, self._call_timeout)
        data = codec.encode_message(meta, tensors, max_bytes=self._config.max_message_bytes)
        try:
            reply = self._call(data, timeout=wait, wait_for_ready=False)
        except grpc.RpcError as err:
            self._raise(err, "call", wait)
        return self._decode(reply)

    def call_async(
        self,
        meta: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray] | None = None,
        timeout: float | None = None,
    ) -> PendingCall:
        """Like `call`, but returns at once; use `.result()` on the returned `PendingCall`.

        Drivers use it to command all parties of a protocol at the same time.
        """
        wait = check_timeout(timeout, self._call_timeout)
        data = codec.encode_message(meta, tensors, max_bytes=self._config.max_message_bytes)
        return PendingCall(self, self._call.future(data, timeout=wait, wait_for_ready=False), "call", wait)

    def ping(self, timeout: float | None = None, *, wait_for_ready: bool = False) -> dict[str, Any]:
        """Asks the worker who it is: {"name", "service", "pid"}.

        Args:
          timeout: Seconds to wait; default the cluster's timeout.
          wait_for_ready: Keep trying to connect until the timeout (for a worker that is still starting).

        Raises:
          PartyUnavailableError: No answer within the timeout.
        """
        wait = check_timeout(timeout, self._config.timeout)
        try:
            reply = self._ping(codec.encode_message({}), timeout=wait, wait_for_ready=wait_for_ready)
        except grpc.RpcError as err:
            self._raise(err, "ping", wait)
        return self._decode(reply)[0]

    def raw_call(self, data: bytes, timeout: float | None = None) -> bytes:
        """Sends already-encoded bytes as a call and returns the raw reply (for tools and robustness tests).

        Raises:
          The errors of `call`, except that the reply is not decoded.
        """
        wait = check_timeout(timeout, self._call_timeout)
        try:
            return self._call(data, timeout=wait, wait_for_ready=False)
        except grpc.RpcError as err:
            self._raise(err, "call", wait)

    def close(self) -> None:
        """Closes the connection."""
        self._channel.close()

    def __enter__(self) -> RemoteParty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise(self, err: grpc.RpcError, action: str, timeout: float) -> NoReturn:
        raise_for_rpc_error(err, party=self._name, address=self._address, action=action, timeout=timeout)

    def _decode(self, data: bytes) -> Message:
        try:
            return codec.decode_message(data, max_bytes=self._config.max_message_bytes)
        except ProtocolError as err:
            raise ProtocolError(f"malformed reply from {self._name!r}: {err}") from None
