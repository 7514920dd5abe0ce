"""Where the three parties run: in this process (for tests) or as three server processes over gRPC.

Both back ends take the same command (`meta` with op, op_id and args, plus per-party tensors), run it at the
three parties at once and return the three answers; the party code (`tfppml.mpc.runtime`) is the same.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Sequence

import numpy as np

from tfppml.errors import ProtocolError
from tfppml.mpc.runtime import NUM_PARTIES, PartyRuntime
from tfppml.net.local import make_local_channels

DEFAULT_NAMES = ("server0", "server1", "server2")
_AGREEMENT_GRACE_S = 1.0
Answer = tuple[dict, dict]


def _per_party(tensors: Sequence[dict] | None) -> list[dict]:
    if tensors is None:
        return [{} for _ in range(NUM_PARTIES)]
    if len(tensors) != NUM_PARTIES:
        raise ValueError(f"expected tensors for {NUM_PARTIES} parties, got {len(tensors)}")
    return [dict(t) for t in tensors]


class InProcessBackend:
    """Three `PartyRuntime`s in this process, each command run by three threads over in-process channels.

    If every party refuses a command, the refusal is raised and the parties stay usable.  If only some fail, the
    back end closes all channels so that the others fail at once instead of waiting for their timeout; it is
    then unusable (its parties' states may disagree) and says so.
    """

    def __init__(self, names: Sequence[str] = DEFAULT_NAMES, timeout: float = 30.0, caller: str = "driver") -> None:
        self.names = tuple(names)
        self.caller = caller
        self._channels = make_local_channels(self.names, timeout=timeout)
        self.parties = [PartyRuntime(i, list(self.names), self._channels[n]) for i, n in enumerate(self.names)]
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=NUM_PARTIES, thread_name_prefix="party")
        self._broken: BaseException | None = None

    def run(self, meta: dict, tensors: Sequence[dict] | None) -> list[Answer]:
        if self._broken is not None:
            raise ProtocolError(
                f"this in-process back end failed earlier ({self._broken}); create a new protocol instance"
            )
        inputs = _per_party(tensors)
        futures = [
            self._pool.submit(party.handle, self.caller, meta, {k: np.asarray(v) for k, v in inputs[i].items()})
            for i, party in enumerate(self.parties)
        ]
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        if any(f.done() and f.exception() is not None for f in futures):
            # A refusal every party makes by itself (a policy, an unknown id) leaves them in step: wait briefly
            # for the others' verdicts before declaring the parties out of step.
            concurrent.futures.wait(futures, timeout=_AGREEMENT_GRACE_S)
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if len(errors) < NUM_PARTIES:
                self._broken = errors[0]
                for channel in self._channels.values():
                    channel.close()
                concurrent.futures.wait(futures)
            raise errors[0]
        return [f.result() for f in futures]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._pool.shutdown(wait=True)


class NetworkBackend:
    """The three parties as server processes of a `tfppml.net` cluster, commanded over gRPC with mutual TLS.

    Args:
        cluster: a started `tfppml.net.cluster.Cluster` whose workers run the "mpc" service.
        identity: the certificate identity this driver presents (default "driver").
    """

    def __init__(self, cluster: Any, identity: str = "driver") -> None:
        names = tuple(cluster.names)
        if len(names) != NUM_PARTIES:
            raise ValueError(f"ABY3 needs a cluster of {NUM_PARTIES} parties, got {len(names)}: {list(names)}")
        self.names = names
        self._remotes = [cluster.remote(name, identity) for name in names]
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=NUM_PARTIES, thread_name_prefix="driver")

    def run(self, meta: dict, tensors: Sequence[dict] | None) -> list[Answer]:
        inputs = _per_party(tensors)
        futures = [self._pool.submit(r.call, meta, inputs[i]) for i, r in enumerate(self._remotes)]
        # Raise the first failure to happen, not party 0's: a party that fails stops sending, and the others then
        # fail later with timeouts waiting for it, which would hide the cause.
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        failed = [f for f in sorted(done, key=futures.index) if f.exception() is not None]
        if failed:
            if len(done) < NUM_PARTIES:
                # The others may be waiting for the failed server's messages: cancel the command there (the
                # failed server has told them too; this covers a server that died without a word).
                self._cancel(meta)
            raise failed[0].exception()
        return [f.result() for f in futures]

    def _cancel(self, meta: dict) -> None:
        cancel = {"op": "cancel", "op_id": f"{meta.get('op_id')}.cancel", "args": {"op_id": meta.get("op_id")}}
        for remote in self._remotes:
            try:
                remote.call(cancel, {})
            except Exception:  # noqa: BLE001 - best effort: the failure being raised is the one that matters
                pass

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for remote in self._remotes:
            remote.close()
