"""A party's inbox of tagged protocol messages, shared by the network and the in-process channels.

A message is addressed by (sender, tag) and can only be taken by a receive for exactly that pair. The mailbox
refuses a second message with a pair that is still waiting or was taken recently (a protocol step that runs twice
would otherwise hand one step's data to another), and refuses two receivers waiting on the same pair.  The network
side reports when a sender's connection ends (`connected` / `disconnected`), and the receivers waiting for that
sender at that moment are woken with an error instead of waiting out their timeout.

Scopes: a tag "SCOPE|rest" belongs to the protocol run SCOPE (the MPC runtime's "<caller>/<op_id>").  A run that
failed or was refused at one party is cancelled everywhere: `cancel(scope)` wakes the receivers waiting on that
scope with `QueryCancelled`, drops its waiting messages, and remembers the scope (boundedly), so that its later
messages are dropped on arrival and later receives fail at once.  A peer cancels a scope here by sending the
message "SCOPE|!cancel" (see `CANCEL_LABEL`).
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from tfppml.errors import PartyUnavailableError, ProtocolError, QueryCancelled

__all__ = ["CANCEL_LABEL", "DEFAULT_HISTORY", "MAX_TAG_LENGTH", "Mailbox", "check_tag", "scope_of"]

#: The label of the message by which a peer cancels a scope: tag "SCOPE|!cancel".
CANCEL_LABEL = "!cancel"
#: How many cancelled scopes are remembered.
CANCELLED_HISTORY = 16384


def scope_of(tag: str) -> str | None:
    """The scope of a tag "SCOPE|rest", or None for a tag without one."""
    scope, sep, _ = tag.partition("|")
    return scope if sep else None

#: How many recently received (sender, tag) pairs are remembered to catch a late duplicate.
DEFAULT_HISTORY = 65536
#: Longest tag, in characters.
MAX_TAG_LENGTH = 512


def check_tag(tag: object) -> str:
    """Returns `tag` if it is a valid message tag (non-empty str of at most MAX_TAG_LENGTH characters).

    Raises:
      TypeError: `tag` is not a str.
      ValueError: It is empty or too long.
    """
    if not isinstance(tag, str):
        raise TypeError(f"`tag` must be a str, got {type(tag).__name__}")
    if not tag or len(tag) > MAX_TAG_LENGTH:
        raise ValueError(
            f"`tag` must be a non-empty str of at most {MAX_TAG_LENGTH} characters, got {tag[:60]!r}"
        )
    return tag


class Mailbox:
    """Thread-safe store of messages keyed by (sender, tag).

    Args:
      owner: The receiving party (for error messages).
      history: Number of consumed (sender, tag) pairs remembered for duplicate detection. Memory stays bounded
        in long-running services; a duplicate of a message taken longer ago than that is not detected.

    Example:
      >>> box = Mailbox("server1")
      >>> box.put("server0", "step1", np.arange(3))
      >>> box.get("server0", "step1", timeout=1.0).tolist()
      [0, 1, 2]
    """

    def __init__(self, owner: str, *, history: int = DEFAULT_HISTORY) -> None:
        self._owner = owner
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], np.ndarray] = {}
        self._waiting: set[tuple[str, str]] = set()
        self._taken: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._connections: collections.Counter[str] = collections.Counter()
        # Waiting (sender, tag) pairs whose sender's connection ended while they waited -> why.
        self._lost: dict[tuple[str, str], str] = {}
        self._history = history
        self._closed: str | None = None
        # Cancelled scope -> why (bounded, oldest first out).
        self._cancelled: collections.OrderedDict[str, str] = collections.OrderedDict()

    def put(self, sender: str, tag: str, array: np.ndarray) -> None:
        """Stores a message.

        Raises:
          ProtocolError: A message from `sender` with `tag` is already waiting or was recently received, or the
            mailbox is closed.
        """
        key = (sender, tag)
        scope = scope_of(tag)
        if scope is not None and tag == f"{scope}|{CANCEL_LABEL}":
            self.cancel(scope, f"{sender!r} cancelled it")
            return
        with self._cond:
            if self._closed is not None:
                raise ProtocolError(
                    f"{self._owner!r} is shutting down ({self._closed}); message {tag!r} refused"
                )
            if scope is not None and scope in self._cancelled:
                return  # a late message of a cancelled run: nobody will take it
            if key in self._pending or key in self._taken:
                state = "is still waiting" if key in self._pending else "was already received"
                raise ProtocolError(
                    f"duplicate message: {self._owner!r} got tag {tag!r} from {sender!r} twice (the first "
                    f"{state}); every protocol message needs its own tag"
                )
            self._pending[key] = array
            self._cond.notify_all()

    def get(self, sender: str, tag: str, timeout: float) -> np.ndarray:
        """Takes the message (sender, tag), waiting up to `timeout` seconds for it to arrive.

        Raises:
          PartyUnavailableError: Nothing arrived in time (the message names the peer, the tag and the wait).
          ProtocolError: Another receiver already waits for the same (sender, tag), or the pair was already
            received, or the mailbox was closed while waiting.
        """
        key = (sender, tag)
        deadline = time.monotonic() + timeout
        with self._cond:
            if key in self._waiting:
                raise ProtocolError(f"two receivers on {self._owner!r} wait for tag {tag!r} from {sender!r}")
            if key in self._taken:
                raise ProtocolError(f"{self._owner!r} already received tag {tag!r} from {sender!r}")
            scope = scope_of(tag)
            self._waiting.add(key)
            try:
                while key not in self._pending:
                    if scope is not None and scope in self._cancelled:
                        raise QueryCancelled(
                            f"{self._owner!r} stopped waiting for {tag!r} from {sender!r}: the run was cancelled "
                            f"({self._cancelled[scope]})"
                        )
                    lost = self._lost.pop(key, None)
                    if lost is not None:
                        raise PartyUnavailableError(
                            f"{self._owner!r} was waiting for message {tag!r} from {sender!r} when {lost}"
                        )
                    if self._closed is not None:
                        raise ProtocolError(
                            f"{self._owner!r} stopped waiting for {tag!r} from {sender!r}: {self._closed}"
                        )
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PartyUnavailableError(
                            f"{self._owner!r} waited {timeout:g} s for message {tag!r} from {sender!r}, which did "
                            f"not arrive ({sender!r} may be down, slow, or not running the same step)"
                        )
                    self._cond.wait(remaining)
                array = self._pending.pop(key)
                self._remember(key)
                return array
            finally:
                self._waiting.discard(key)
                self._lost.pop(key, None)

    def connected(self, sender: str) -> None:
        """Counts an open connection (stream) from `sender`."""
        with self._cond:
            self._connections[sender] += 1

    def disconnected(self, sender: str, reason: str) -> None:
        """Counts a connection from `sender` as ended; when it was the last, wakes its waiting receivers.

        Each receiver waiting for `sender` at this moment raises PartyUnavailableError with `reason` (e.g.
        "the connection from 'server2' was lost"), unless its message is already here.  Receivers that start
        waiting later wait as usual (the sender may reconnect, e.g. after a restart) up to their timeout.
        """
        with self._cond:
            self._connections[sender] -= 1
            if self._connections[sender] > 0:
                return
            del self._connections[sender]
            for key in self._waiting:
                if key[0] == sender and key not in self._pending:
                    self._lost[key] = reason
            self._cond.notify_all()

    def discard(self, prefix: str = "") -> int:
        """Drops waiting messages whose tag starts with `prefix` (all if empty); returns how many.

        A protocol run that failed half-way leaves its peers' messages behind; dropping them frees the memory.
        Dropped pairs count as received, so a late copy is still refused as a duplicate.
        """
        with self._cond:
            keys = [key for key in self._pending if key[1].startswith(prefix)]
            for key in keys:
                del self._pending[key]
                self._remember(key)
            return len(keys)

    def cancel(self, scope: str, reason: str) -> bool:
        """Cancels the run `scope` here (see the module docstring); returns False if it was cancelled before."""
        with self._cond:
            if scope in self._cancelled:
                return False
            self._cancelled[scope] = reason
            while len(self._cancelled) > CANCELLED_HISTORY:
                self._cancelled.popitem(last=False)
            for key in [key for key in self._pending if scope_of(key[1]) == scope]:
                del self._pending[key]
                self._remember(key)
            self._cond.notify_all()
            return True

    def close(self, reason: str = "closed") -> None:
        """Refuses further messages and wakes every waiting receiver with a ProtocolError."""
        with self._cond:
            self._closed = reason
            self._pending.clear()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Number of messages received but not yet taken."""
        with self._cond:
            return len(self._pending)

    def _remember(self, key: tuple[str, str]) -> None:
        self._taken[key] = None
        while len(self._taken) > self._history:
            self._taken.popitem(last=False)
