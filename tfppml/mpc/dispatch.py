"""The party side's front door: which identity may call which operation, the per-identity limits, the sessions
(correlated-randomness keys) and the refusal audit.  `PartyRuntime.handle` is the only way in.

Threat model at this door: the three servers are semi-honest and do not collude, and every *caller* may be
hostile.  Callers are authenticated identities (the certificate's name over mutual TLS; "driver" in process).
`owners` (the cluster configuration's `owners`, default driver and model_owner) may set up, share, compute on
and reveal their own tensors and register and serve programs; any other identity (a client) may only query a
serving program and cancel its own queries.  The capability table is the registry itself: every operation is
registered with `party_op(name, callers=..., program_step=..., session=...)`, and `capability_table()` lists it
(docs/mpc.md prints it; tests/adversarial/test_capabilities.py calls every operation as a client).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import logging
import re
import threading
import time
from typing import Any, Callable

import numpy as np

from tfppml.errors import PolicyDenied, ProtocolError, QuotaExceeded
from tfppml.mpc.shares import NUM_PARTIES, Share

_log = logging.getLogger("tfppml.mpc")

#: Operation ids chosen by callers: no "/" (it separates the caller from the id in a scope), no "|" (it
#: separates a tag's scope from its label), no "$" (a query's scope-local names).
OP_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,160}$")
#: Set-up ids (chosen by the owner, fresh per protocol instance).
SETUP_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class Callers(enum.Enum):
    """Who may call an operation."""

    #: The configured model owners / drivers (PartyRuntime.owners).
    OWNERS = "owners"
    #: Any authenticated identity: clients of served programs.
    ANYONE = "anyone"


OpFunction = Callable[..., tuple[dict, dict]]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """A registered party operation.

    Attributes:
        name: the command a caller sends.
        fn: handler(ctx, args, tensors) -> (meta, tensors).
        callers: who may call it directly.
        program_step: whether a served program may consist of it (local and interactive computation only:
            never data movement to or from a caller, nor program management).
        session: whether it runs under one of the caller's set-ups (meta "session"): everything that draws
            correlated randomness or exchanges protocol messages.
        interactive: whether it exchanges messages with the peers (a failure then cancels its scope there).
        summary: one line for the capability table.
    """

    name: str
    fn: OpFunction
    callers: Callers
    program_step: bool
    session: bool
    interactive: bool
    summary: str


PARTY_OPS: dict[str, OpSpec] = {}


def party_op(
    name: str,
    *,
    callers: Callers = Callers.OWNERS,
    program_step: bool = False,
    session: bool = True,
    interactive: bool | None = None,
) -> Callable[[OpFunction], OpFunction]:
    """Registers a party-side operation under `name` with who may call it (see `OpSpec`; `interactive` defaults
    to `session`)."""

    def register(fn: OpFunction) -> OpFunction:
        if name in PARTY_OPS:
            raise ValueError(f"party operation {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        PARTY_OPS[name] = OpSpec(name, fn, callers, program_step, session,
                                 session if interactive is None else interactive, doc)
        return fn

    return register


def program_step_ops() -> frozenset[str]:
    """The operations a served program may consist of, from their registration."""
    return frozenset(name for name, spec in PARTY_OPS.items() if spec.program_step)


def capability_table() -> list[dict[str, Any]]:
    """Every party operation with who may call it, whether it may be a program step and whether it needs a
    set-up: the table docs/mpc.md shows."""
    return [
        {"op": s.name, "callers": s.callers.value, "program_step": s.program_step, "session": s.session,
         "summary": s.summary}
        for s in sorted(PARTY_OPS.values(), key=lambda s: s.name)
    ]


@dataclasses.dataclass
class PartyLimits:
    """Per-request and per-identity bounds of one server.

    Attributes:
        max_result_bytes: largest tensor (both share components) one request may make or send, checked before
            it is allocated.
        max_store_bytes: shares one identity may keep at this server.
        max_queries_per_identity: queries of one identity running at once.
        max_query_rows: largest batch of one query.
        admission_timeout: seconds a server waits for both peers to confirm a query (or a set-up) before
            cancelling it.
        max_sessions_per_owner: set-ups kept per owner (the oldest goes first; programs keep theirs).
        max_ops_per_session: operation ids remembered per set-up (a reused id would reuse masks): after that
            many the owner must set up anew.
    """

    max_result_bytes: int = 1 << 30
    max_store_bytes: int = 4 << 30
    max_queries_per_identity: int = 4
    max_query_rows: int = 4096
    admission_timeout: float = 5.0
    max_sessions_per_owner: int = 16
    max_ops_per_session: int = 1 << 22

    def check_bytes(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_result_bytes:
            raise QuotaExceeded(
                f"{what} would take {nbytes} bytes, more than this server's per-request bound of "
                f"{self.max_result_bytes} bytes"
            )


class Session:
    """One set-up of an owner: the correlated-randomness keys (k_i, k_{i+1}) and the operation ids used under
    them (an id is never accepted twice: it would reuse masks).

    The ids are counted per calling identity: a client that sends queries by the million (even ones refused at
    once) uses up its own ids under this set-up, never the owner's or another client's.  Each id is kept as an
    8-byte digest (about 70 bytes of memory), and a client may use `MAX_CLIENT_OPS` of them.
    """

    def __init__(self, owner: str, setup_id: str, keys: dict[int, bytes], max_ops: int) -> None:
        self.owner = owner
        self.setup_id = setup_id
        self.keys = keys
        self._seen: dict[str, set[bytes]] = {}
        self._max_ops = max_ops
        self._lock = threading.Lock()

    def claim(self, scope_id: str) -> None:
        """Records the operation id `scope_id` ("<caller>/<op_id>") under this set-up.

        Raises:
            ProtocolError: it was used before.
            QuotaExceeded: its caller used all the ids it may under this set-up.
        """
        caller = scope_id.split("/", 1)[0]
        digest = hashlib.blake2b(scope_id.encode(), digest_size=8).digest()
        limit = self._max_ops if caller == self.owner else min(self._max_ops, MAX_CLIENT_OPS)
        with self._lock:
            seen = self._seen.setdefault(caller, set())
            if digest in seen:
                raise ProtocolError(f"operation id {scope_id!r} was used before under this set-up")
            if len(seen) >= limit:
                raise QuotaExceeded(
                    f"{caller!r} ran {limit} operations under set-up {self.setup_id!r}; the owner runs a new set-up "
                    "(a new protocol instance) for more"
                )
            seen.add(digest)


#: Operation ids a client (any identity but the set-up's owner) may use under one set-up.
MAX_CLIENT_OPS = 1 << 20


#: Refusals kept for `PartyRuntime.audit` (the log has them all).
AUDIT_LENGTH = 4096


class PartyRuntime:
    """One of the three servers.

    Args:
        index: 0, 1 or 2.
        names: the three parties' names, in index order.
        channel: a `tfppml.net` Channel with send / recv / cancel.
        owners: identities that may set up, share, compute and serve (every other identity may only query).
        limits: per-request and per-identity bounds.
    """

    def __init__(
        self,
        index: int,
        names: list[str],
        channel: Any,
        *,
        owners: tuple[str, ...] = ("driver", "model_owner"),
        limits: PartyLimits | None = None,
    ) -> None:
        if index not in range(NUM_PARTIES):
            raise ValueError(f"PartyRuntime: argument `index` must be 0, 1 or 2, got {index!r}")
        if len(names) != NUM_PARTIES or len(set(names)) != NUM_PARTIES:
            raise ValueError(f"PartyRuntime: argument `names` must be three distinct names, got {names!r}")
        if isinstance(owners, str) or not owners or not all(isinstance(o, str) and o for o in owners):
            raise ValueError(f"PartyRuntime: argument `owners` must be a non-empty sequence of identities, got {owners!r}")
        self.index = index
        self.names = list(names)
        self.channel = channel
        self.owners = frozenset(owners)
        self.limits = limits if limits is not None else PartyLimits()
        self.store: dict[str, Share] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self._store_lock = threading.Lock()
        self.sessions: dict[tuple[str, str], Session] = {}
        self._sessions_lock = threading.Lock()
        # Communication counters, read (and reset) by the "stats" operation for benchmarks.
        self.stats = {"messages_sent": 0, "bytes_sent": 0, "messages_received": 0}
        self._stats_lock = threading.Lock()
        # Registered programs (served models): name -> Program (tfppml.mpc.party_ops.programs).
        self.programs: dict[str, Any] = {}
        self._programs_lock = threading.Lock()
        self._active_queries: collections.Counter[str] = collections.Counter()
        self._queries_lock = threading.Lock()
        self.audit: collections.deque[dict] = collections.deque(maxlen=AUDIT_LENGTH)

    def count(self, key: str, amount: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += amount

    # --- refusals -------------------------------------------------------------------------------------------
    def refuse(self, caller: str, op: Any, reason: str, error: type[Exception] = PolicyDenied) -> Exception:
        """Records a refused request in the audit (and the log) and returns the error to raise."""
        entry = {"time": time.time(), "caller": caller, "op": str(op)[:64], "reason": reason}
        self.audit.append(entry)
        _log.info("server %s refused %s from %r: %s", self.names[self.index], entry["op"], caller, reason)
        return error(reason)

    # --- the store ------------------------------------------------------------------------------------------
    def store_put(self, owner: str, share_id: str, share: Share) -> None:
        """Stores `share` as `owner`'s under `share_id`, within the owner's byte allowance."""
        with self._store_lock:
            existing = self.store.get(share_id)
            if existing is not None and existing.owner != owner:
                raise self.refuse(owner, "put", f"{owner!r} may not overwrite shared tensor {share_id!r}")
            freed = existing.nbytes if existing is not None else 0
            if self._held[owner] - freed + share.nbytes > self.limits.max_store_bytes:
                raise self.refuse(
                    owner, "put",
                    f"{owner!r} holds {self._held[owner]} bytes of shares at this server; {share.nbytes} more would "
                    f"pass its allowance of {self.limits.max_store_bytes} (free some)", QuotaExceeded,
                )
            share.owner = owner
            self.store[share_id] = share
            self._held[owner] += share.nbytes - freed

    def store_free(self, owner: str, share_id: Any) -> bool:
        """Deletes `owner`'s share `share_id` (nothing if it is not the owner's); returns whether it did."""
        with self._store_lock:
            share = self.store.get(share_id) if isinstance(share_id, str) else None
            if share is None or share.owner != owner:
                return False
            del self.store[share_id]
            self._held[owner] -= share.nbytes
            if self._held[owner] <= 0:
                del self._held[owner]
            return True

    # --- sessions -------------------------------------------------------------------------------------------
    def add_session(self, session: Session) -> None:
        with self._sessions_lock:
            mine = [key for key in self.sessions if key[0] == session.owner]
            while len(mine) >= self.limits.max_sessions_per_owner:
                del self.sessions[mine.pop(0)]  # dicts keep insertion order: the oldest first
            self.sessions[(session.owner, session.setup_id)] = session

    def session_of(self, caller: str, setup_id: Any) -> Session:
        with self._sessions_lock:
            session = self.sessions.get((caller, setup_id)) if isinstance(setup_id, str) else None
        if session is None:
            raise ProtocolError(
                f"server {self.names[self.index]} has no set-up {setup_id!r} of {caller!r}: run 'setup' first "
                f"(a restarted server forgets its set-ups; a new protocol instance sets up again)"
            )
        return session

    # --- queries ----------------------------------------------------------------------------------------------
    def begin_query(self, caller: str) -> None:
        with self._queries_lock:
            if self._active_queries[caller] >= self.limits.max_queries_per_identity:
                raise self.refuse(
                    caller, "query",
                    f"{caller!r} already runs {self._active_queries[caller]} queries at this server (at most "
                    f"{self.limits.max_queries_per_identity} at once)", QuotaExceeded,
                )
            self._active_queries[caller] += 1

    def end_query(self, caller: str) -> None:
        with self._queries_lock:
            self._active_queries[caller] -= 1
            if self._active_queries[caller] <= 0:
                del self._active_queries[caller]

    # --- the service interface of tfppml.net: one command in, one answer out -------------------------------
    def handle(self, caller: str, meta: dict, tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
        from tfppml.mpc.context import OpContext  # the context module imports this one

        op = meta.get("op") if isinstance(meta, dict) else None
        spec = PARTY_OPS.get(op) if isinstance(op, str) else None
        if spec is None:
            raise ProtocolError(f"unknown operation {op!r:.64}; known: {sorted(PARTY_OPS)}")
        if spec.callers is Callers.OWNERS and caller not in self.owners:
            raise self.refuse(
                caller, op, f"{caller!r} may not call {op!r}: only the model owners {sorted(self.owners)} may; a "
                f"client may only query a serving program"
            )
        op_id = meta.get("op_id")
        if not isinstance(op_id, str) or not OP_ID_PATTERN.match(op_id):
            raise ProtocolError(f"operation id must match {OP_ID_PATTERN.pattern}, got {op_id!r:.80}")
        args = meta.get("args", {})
        if not isinstance(args, dict):
            raise ProtocolError(f"operation arguments must be a mapping, got {type(args).__name__}")
        release = meta.get("release", [])
        if not isinstance(release, list) or len(release) > 1 << 16:
            raise ProtocolError("'release' must be a list of at most 65536 shared tensor ids")
        scope_id = f"{caller}/{op_id}"
        for share_id in release:
            self.store_free(caller, share_id)
        try:
            session = None
            if spec.session:
                session = self.session_of(caller, meta.get("session"))
                session.claim(scope_id)
            tensors = {k: np.asarray(v) for k, v in tensors.items()}
            for key, value in tensors.items():
                self.limits.check_bytes(int(value.nbytes), f"tensor {key!r:.40}")
            return spec.fn(OpContext(self, scope_id, caller, session), args, tensors)
        except BaseException as err:
            if spec.interactive:
                # The peers may be waiting for this party's messages of the operation: tell them at once.
                self.cancel_scope(scope_id, f"server {self.names[self.index]} failed it: {err}")
            raise

    def cancel_scope(self, scope_id: str, reason: str) -> None:
        cancel = getattr(self.channel, "cancel", None)
        if cancel is not None:
            try:
                cancel(scope_id, reason[:300])
            except Exception:  # noqa: BLE001 - best effort: a peer that is down times out by itself
                _log.debug("cancelling %s failed", scope_id, exc_info=True)
