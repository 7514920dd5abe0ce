"""gRPC plumbing shared by servers and clients: method names, TLS credentials, options and error mapping.

There is no protobuf: every RPC carries the raw bytes of a `tfppml.net.codec` message, through gRPC's generic
handlers. A worker exposes one service with three methods:

    /tfppml.net.Worker/Call      unary: a driver's command, answered by the worker's service
    /tfppml.net.Worker/Stream    client streaming: a peer's protocol messages, each put into the worker's mailbox
    /tfppml.net.Worker/Ping      unary: liveness and identity (answered by the server itself)

Errors travel as gRPC status codes plus a `tfppml-error-type` trailing metadata entry naming the remote
exception class; `raise_for_rpc_error` turns them back into tfppml's domain errors.
"""

from __future__ import annotations

import traceback
from typing import Any, NoReturn

import grpc

from tfppml.errors import PartyUnavailableError, PolicyDenied, ProtocolError
from tfppml.net.certs import Identity

__all__ = [
    "CALL",
    "PING",
    "STREAM",
    "SERVICE",
    "RemoteError",
    "channel_options",
    "client_credentials",
    "raise_for_rpc_error",
    "secure_channel",
    "server_credentials",
]

SERVICE = "tfppml.net.Worker"
CALL = f"/{SERVICE}/Call"
PING = f"/{SERVICE}/Ping"
STREAM = f"/{SERVICE}/Stream"
ERROR_TYPE_KEY = "tfppml-error-type"

# Room for the codec's headers and gRPC framing on top of the payload limit.
_FRAME_SLACK = 64 * 1024
_MAX_DETAILS = 4000  # status details travel in HTTP/2 trailers, which are size-limited


class RemoteError(ProtocolError):
    """A remote handler raised: carries the remote exception's type, message and traceback summary.

    Attributes:
      party: The worker that raised.
      remote_type: The remote exception's class name, e.g. "ValueError".
      remote_message: Its message (with the traceback summary when the worker sent one).
    """

    def __init__(self, party: str, remote_type: str, remote_message: str) -> None:
        super().__init__(f"worker {party!r} failed: {remote_type}: {remote_message}")
        self.party = party
        self.remote_type = remote_type
        self.remote_message = remote_message


def channel_options(max_message_bytes: int, *, target_name: str | None = None) -> list[tuple[str, Any]]:
    """gRPC options for channels and servers of a cluster.

    Args:
      max_message_bytes: The cluster's payload limit (frames may be slightly larger for headers).
      target_name: For client channels: the identity the server's certificate must carry.
    """
    limit = max_message_bytes + _FRAME_SLACK
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Large HTTP/2 frames (the protocol's maximum): fewer frames per multi-megabyte tensor; measured a
        # modestly faster 8 MB send on loopback TLS.
        ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
        # A restarted peer should be reachable again within about a second, not after minutes of backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # gRPC core takes this as the time a connection attempt (TCP and TLS handshake) may take, not as a pause
        # between attempts.  At 100 ms, fresh connections between busy workers failed now and then ("Handshake
        # read failed", "Timeout occurred: FD Shutdown"); a refused connection still fails at once.
        ("grpc.min_reconnect_backoff_ms", 5000),
        # Several protocol channels to one peer must not share one TCP connection's flow-control window.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if target_name is not None:
        # Verify the server's certificate against the identity we mean to reach, not against the host name:
        # a cluster member at the right address but with another member's certificate is refused.
        options.append(("grpc.ssl_target_name_override", target_name))
    return options


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """Mutual TLS server credentials: clients must present a certificate signed by the cluster CA."""
    return grpc.ssl_server_credentials(
        [(identity.key_pem, identity.cert_pem)], root_certificates=identity.ca_pem, require_client_auth=True
    )


def client_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """Mutual TLS client credentials: our certificate, and the cluster CA to check the server against."""
    return grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem, private_key=identity.key_pem, certificate_chain=identity.cert_pem
    )


def secure_channel(
    address: str, identity: Identity, *, target_name: str, max_message_bytes: int
) -> grpc.Channel:
    """A mutual-TLS channel from `identity` to the worker `target_name` at `address`."""
    return grpc.secure_channel(
        address,
        client_credentials(identity),
        options=channel_options(max_message_bytes, target_name=target_name),
    )


def describe_exception(err: BaseException, *, with_traceback: bool = True) -> str:
    """Message plus a short remote traceback summary (file:line in function; no local values)."""
    message = str(err) or "(no message)"
    if with_traceback and err.__traceback__ is not None:
        frames = traceback.extract_tb(err.__traceback__)[-6:]
        summary = "; ".join(
            f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}" for frame in frames
        )
        message = f"{message} [remote traceback: {summary}]"
    if len(message) > _MAX_DETAILS:
        message = message[: _MAX_DETAILS - 15] + " ...(truncated)"
    return message


def raise_for_rpc_error(
    err: grpc.RpcError, *, party: str, address: str, action: str, timeout: float
) -> NoReturn:
    """Translates a failed RPC into tfppml's errors.

    Raises:
      PartyUnavailableError: The worker could not be reached (down, refused TLS, wrong identity) or did not
        answer within `timeout`, or it reported that one of its own peers was unavailable.
      PolicyDenied: The worker's policy refused the request.
      RemoteError: The worker's handler raised anything else (a ProtocolError).
      ProtocolError: The worker refused the message itself (malformed, too large, not allowed).
    """
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    remote_type = _error_type(err)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise PartyUnavailableError(
            f"{party!r} at {address} did not answer {action} within {timeout:g} s"
        ) from None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and remote_type is None:
        hint = (
            " (TLS refused: check that both sides use the same cluster CA)" if "andshake" in details else ""
        )
        raise PartyUnavailableError(
            f"{party!r} at {address} is unavailable for {action}: {details}{hint}"
        ) from None
    if remote_type == "PolicyDenied":
        raise PolicyDenied(details) from None
    if remote_type == "PartyUnavailableError":
        raise PartyUnavailableError(f"worker {party!r} reported: {details}") from None
    if remote_type == "ProtocolError" and code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    ):
        raise ProtocolError(f"{party!r} refused {action}: {details}") from None
    if remote_type is not None:
        raise RemoteError(party, remote_type, details) from None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise ProtocolError(f"{party!r} refused {action}: {details}") from None
    raise ProtocolError(f"{action} to {party!r} at {address} failed with {code}: {details}") from None


def abort_with(
    context: grpc.ServicerContext, code: grpc.StatusCode, error_type: str, message: str
) -> NoReturn:
    """Ends the RPC with `code`, naming the error class in trailing metadata for `raise_for_rpc_error`."""
    context.set_trailing_metadata(((ERROR_TYPE_KEY, error_type),))
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _error_type(err: grpc.RpcError) -> str | None:
    try:
        trailing = err.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - some RpcError flavours have no metadata at all
        return None
    for key, value in trailing:
        if key == ERROR_TYPE_KEY:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None
