"""In-process channels: the `Channel` interface over queues, for the in-process back end and unit tests.

Semantics match `tfppml.net.channel.PeerChannel` exactly: exact tags, duplicate tags refused, `recv` timeouts raise
`PartyUnavailableError` naming the peer and the tag, and a `send` to a party whose channel was closed (the
in-process stand-in for a dead process) fails at once with `PartyUnavailableError`. Arrays are copied on send, as
the network would, so neither side can change what the other holds.

Example:
    >>> import numpy as np
    >>> channels = make_local_channels(["server0", "server1"])
    >>> channels["server0"].send("server1", "hello", np.arange(3, dtype=np.uint64))
    >>> channels["server1"].recv("server0", "hello").tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from tfppml.errors import PartyUnavailableError, ProtocolError
from tfppml.net.certs import check_identity_name
from tfppml.net.channel import check_array, check_peer, check_timeout
from tfppml.net.config import DEFAULT_TIMEOUT
from tfppml.net.mailbox import CANCEL_LABEL, DEFAULT_HISTORY, Mailbox, check_tag

__all__ = ["LocalChannel", "make_local_channels"]


class _Hub:
    """The parties' mailboxes and which of them are closed."""

    def __init__(self, names: tuple[str, ...], history: int) -> None:
        self.names = names
        self.mailboxes = {name: Mailbox(name, history=history) for name in names}
        self.closed: set[str] = set()
        self.lock = threading.Lock()


class LocalChannel:
    """`Channel` between parties living in one process. Make a set with `make_local_channels`."""

    def __init__(self, name: str, hub: _Hub, timeout: float) -> None:
        self._name = name
        self._hub = hub
        self._timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    @property
    def parties(self) -> tuple[str, ...]:
        return self._hub.names

    def send(self, to: str, tag: str, array: np.ndarray) -> None:
        """See `tfppml.net.channel.Channel.send`."""
        check_peer(self._hub.names, self._name, to, "to")
        check_tag(tag)
        array = check_array(array)
        with self._hub.lock:
            if self._name in self._hub.closed:
                raise ProtocolError(f"channel of {self._name!r} is closed")
            if to in self._hub.closed:
                raise PartyUnavailableError(
                    f"{to!r} is unavailable for message {tag!r}: its channel is closed"
                )
        sent = np.array(array, copy=True, order="C")
        sent.flags.writeable = False  # as the network back end's received arrays (views of the message bytes)
        self._hub.mailboxes[to].put(self._name, tag, sent)

    def recv(self, frm: str, tag: str, timeout: float | None = None) -> np.ndarray:
        """See `tfppml.net.channel.Channel.recv`."""
        check_peer(self._hub.names, self._name, frm, "frm")
        check_tag(tag)
        return self._hub.mailboxes[self._name].get(frm, tag, check_timeout(timeout, self._timeout))

    def discard_pending(self, prefix: str = "") -> int:
        """See `tfppml.net.channel.Channel.discard_pending`."""
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got {type(prefix).__name__}")
        return self._hub.mailboxes[self._name].discard(prefix)

    def cancel(self, scope: str, reason: str) -> None:
        """See `tfppml.net.channel.PeerChannel.cancel`."""
        if not self._hub.mailboxes[self._name].cancel(scope, reason):
            return
        for peer in self._hub.names:
            if peer != self._name:
                try:
                    self.send(peer, f"{scope}|{CANCEL_LABEL}", np.zeros(0, dtype=np.uint64))
                except (PartyUnavailableError, ProtocolError):
                    pass  # a dead peer has nothing to cancel

    def refresh(self) -> None:
        """See `tfppml.net.channel.PeerChannel.refresh` (in process there is nothing to reopen)."""

    def close(self) -> None:
        """Marks this party dead: its pending receives fail, and sends to it raise PartyUnavailableError."""
        with self._hub.lock:
            self._hub.closed.add(self._name)
        self._hub.mailboxes[self._name].close(f"party {self._name!r} closed its channel")


def make_local_channels(
    names: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, history: int = DEFAULT_HISTORY
) -> dict[str, LocalChannel]:
    """Connected in-process channels, one per party.

    Args:
      names: Party names (at least two, distinct), e.g. ["server0", "server1", "server2"].
      timeout: Default seconds a `recv` waits (as the cluster timeout does for `PeerChannel`).
      history: Received (sender, tag) pairs remembered per party to catch duplicates.

    Returns:
      name -> LocalChannel, in the order of `names`.

    Raises:
      ValueError: Fewer than two names, a repeated or invalid name, or a non-positive timeout.
    """
    names = tuple(names)
    if len(names) < 2:
        raise ValueError(f"`names` must list at least two parties, got {list(names)}")
    for index, name in enumerate(names):
        check_identity_name(name, arg=f"names[{index}]")
    if len(set(names)) != len(names):
        raise ValueError(f"`names` repeats a party: {list(names)}")
    timeout = check_timeout(timeout, DEFAULT_TIMEOUT)
    hub = _Hub(names, history)
    return {name: LocalChannel(name, hub, timeout) for name in names}
