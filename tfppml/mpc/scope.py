"""A served query's own scope: its input and intermediates, and the servers' agreement to run it.

A query's values ("$input", "$0", "$1", ...) live here, not in the party's store: no identity owns them, no
operation outside the query's own steps can name them (ids starting with "$" are refused elsewhere), and they
go when the query ends, whether it answered or failed.  Before a query spends a round, each server sends both
peers a digest of what it was asked (caller, operation id, program, input shape) and waits for theirs: a query
that reached only some servers, or different queries under one id, is cancelled within
`PartyLimits.admission_timeout` instead of running on stale or missing messages.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from tfppml.errors import PartyUnavailableError, ProtocolError, QueryCancelled
from tfppml.mpc.shares import NUM_PARTIES, Share

if TYPE_CHECKING:
    from tfppml.mpc.dispatch import PartyRuntime


def agreement_digest(*fields: Any) -> np.ndarray:
    """Four words naming what a server was asked to run (compared with its peers' before the first round)."""
    text = "\x1f".join(str(f) for f in fields)
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype="<u8").astype(np.uint64)


def _peers(party: "PartyRuntime") -> list[str]:
    return [party.names[(party.index + k) % NUM_PARTIES] for k in (1, 2)]


def send_digest(party: "PartyRuntime", scope_id: str, digest: np.ndarray) -> None:
    """Tells both peers what this server was asked to run under `scope_id`."""
    for peer in _peers(party):
        party.channel.send(peer, f"{scope_id}|agree", digest)


def check_digests(party: "PartyRuntime", scope_id: str, digest: np.ndarray, what: str) -> None:
    """Waits (`admission_timeout`) for both peers' digests under `scope_id` and compares them with `digest`.

    Raises:
        QueryCancelled: a peer did not confirm in time, or confirmed something else.
    """
    timeout = party.limits.admission_timeout
    for peer in _peers(party):
        try:
            theirs = np.asarray(party.channel.recv(peer, f"{scope_id}|agree", timeout))
        except PartyUnavailableError as err:
            raise QueryCancelled(
                f"{what} was cancelled: server {peer} did not confirm it within {timeout:g} s (a request must reach "
                f"all three servers): {err}"
            ) from None
        if theirs.dtype != np.uint64 or theirs.shape != digest.shape or not np.array_equal(theirs, digest):
            raise QueryCancelled(f"{what} was cancelled: server {peer} was asked something else under the same id")


class QueryScope:
    """The values of one running query and its admission (see the module docstring).

    Args:
        party: this server.
        program: the served program (its owner's weights are readable by the steps).
        scope_id: "<caller>/<op_id>".
        digest: what this server was asked, compared with the peers' digests.
    """

    def __init__(self, party: "PartyRuntime", program: Any, scope_id: str, digest: np.ndarray) -> None:
        self.party = party
        self.program = program
        self.scope_id = scope_id
        self._digest = digest
        self.values: dict[str, Share] = {}
        self._admitted = False
        self._lock = threading.Lock()
        self._sent = False

    def open(self) -> None:
        """Sends this server's digest to both peers (their answers are awaited before the first round)."""
        send_digest(self.party, self.scope_id, self._digest)
        self._sent = True

    def await_admission(self) -> None:
        if self._admitted:
            return
        with self._lock:
            if not self._admitted:
                if not self._sent:
                    raise ProtocolError("query scope used before it was opened")
                check_digests(self.party, self.scope_id, self._digest, f"query {self.scope_id!r}")
                self._admitted = True

    def get(self, name: str) -> Share:
        share = self.values.get(name)
        if share is None:
            raise ProtocolError(f"query {self.scope_id!r} has no value {name!r}")
        return share

    def put(self, name: Any, share: Share) -> None:
        if not isinstance(name, str) or not name.startswith("$") or name in self.values:
            raise ProtocolError(f"a query step must write a new '$k' value, got {name!r:.40}")
        share.owner = ""  # nobody's: only this query's steps can name it
        self.values[name] = share

    def close(self) -> None:
        self.values.clear()
