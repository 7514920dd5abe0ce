"""Soak (issue #17): eight honest clients complete their queries with correct answers while a hostile client
floods three real server processes.

The model owner shares a small Keras model and serves one row per honest query; clients client0..client7 each run
single-row queries concurrently, and every answer must match Keras.  Meanwhile "mallory" (its own certificate)
sends queries that reach one or two servers only, oversized and misshaped inputs, inputs of the wrong dtype,
queries beyond the quota, and reveal / share / setup / serve / register attempts; each must be refused with the
expected error, and no honest query may fail.

The control of each attack (the same attack succeeding against a deliberately weakened server) lives with its
focused test: test_slot_flooding.py (partial queries holding slots), test_setup_rejoin.py (set-up),
test_extraction.py, test_arguments.py, test_mpc_quota.py and test_capabilities.py (the other refusals).

`test_soak` (8 clients x 125 queries = 1000) runs in the default suite: about 25 s on two cores, the cluster's
start included.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tfppml
from tfppml.errors import PartyUnavailableError, PolicyDenied
from tfppml.mpc.dispatch import PartyLimits
from tfppml.net.transport import RemoteError

from .conftest import IDENTITIES, timed

CLIENTS = 8
LIMITS = PartyLimits()
#: Rows the owner serves beyond the honest clients' queries: none (a partial query reserves no quota).
RESERVE = 0

tfppml.KerasHook(tf.keras)


@pytest.fixture(scope="module")
def cluster():
    workers = [tfppml.Worker("127.0.0.1:0") for _ in range(3)]
    with tfppml.Cluster(*workers, service="mpc", identities=IDENTITIES) as running:
        yield running


def make_model() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(17)
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(8, activation="relu", input_shape=(6,)), tf.keras.layers.Dense(3)]
    )


# --- mallory ---------------------------------------------------------------------------------------------------
def _busy(err) -> bool:
    """Refused because mallory already holds its share of the call slots (any attack may meet this)."""
    return isinstance(err, PartyUnavailableError) and "busy for 'mallory'" in str(err)


def _query_cap(err) -> bool:
    """Refused because mallory already runs its share of queries at that server."""
    return isinstance(err, PolicyDenied) and "queries at this server" in str(err)


def _remote(kind: str, *words: str):
    def check(err) -> bool:
        return isinstance(err, RemoteError) and err.remote_type == kind and all(w in str(err) for w in words)

    return check


def _denied(*words: str):
    def check(err) -> bool:
        return isinstance(err, PolicyDenied) and all(w in str(err) for w in words)

    return check


def _spent(err) -> bool:
    """A query beyond the rows left: refused with the rows left, or as "not serving" once the quota is used up."""
    return _denied("row(s) left of this serving period")(err) or _denied("is not serving", "rows")(err)


class Mallory:
    """The hostile client: threads sending partial queries (each cancelled after the admission timeout) and one
    thread cycling through immediate attacks, until `stop`.  Every call's outcome is checked against what the
    real servers must answer; `unexpected` collects the rest."""

    def __init__(self, cluster, model: tf.keras.Model, name: str, rows: int) -> None:
        self.names = list(cluster.names)
        self.remotes = {n: cluster.remote(n, "mallory") for n in self.names}
        self.name = name
        self.quota = rows
        # Each server's pair of a sharing of one row, of 4097 rows, of `rows + 1` rows (what a client sends).
        split = model._tfppml_shared.protocol._split
        self.one = split(np.zeros((1, 6)), "t", "x", 16)[1]
        self.huge = split(np.zeros((LIMITS.max_query_rows + 1, 6)), "t", "x", 16)[1]
        self.beyond = split(np.zeros((rows + RESERVE + 1, 6)), "t", "x", 16)[1]
        self.misshaped = split(np.zeros((1, 5)), "t", "x", 16)[1]
        self.weight = model._tfppml_shared.context.weights[0].id
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.slowest = 0.0
        self._threads = [threading.Thread(target=self._partial, args=(to,), daemon=True)
                         for to in (["server0"], ["server1"], ["server2"], ["server0", "server1"], ["server1", "server2"])]
        self._threads.append(threading.Thread(target=self._immediate, daemon=True))

    def _op_id(self, what: str) -> str:
        # Fresh per soak: the servers refuse a reused operation id's messages (its tags are "mallory/<op_id>|...").
        return f"m-{self.name}-{what}-{next(self._ids)}"

    def _call(self, attack: str, to: list[str], meta: dict, tensors: list[dict] | None, expected) -> None:
        """Sends `meta` to the servers `to` at once; each answer must be a refusal `expected` accepts."""
        results: dict[str, object] = {}

        def one(server: str) -> None:
            i = self.names.index(server)
            results[server] = timed(self.remotes[server].call, meta, tensors[i] if tensors else {})

        threads = [threading.Thread(target=one, args=(s,)) for s in to]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with self._lock:
            for server, (result, seconds) in results.items():
                self.slowest = max(self.slowest, seconds)
                if expected(result) or _busy(result):
                    self.counts[attack] = self.counts.get(attack, 0) + 1
                else:
                    self.unexpected.append(f"{attack} at {server}: {result!r:.400}")

    def _query(self, what: str, tensors, args=None) -> dict:
        return {"op": "query", "op_id": self._op_id(what), "args": {"name": self.name, **(args or {})}}

    def _partial(self, to: list[str]) -> None:
        # Cancelled by the admission wait ("did not confirm it within"), or by the other server asked, whose
        # own wait ended first ("the run was cancelled").
        cancelled = _remote("QueryCancelled")
        while not self._stop.is_set():
            # A query the servers not asked never confirm: cancelled after the admission timeout.
            self._call(f"partial query to {len(to)}", to, self._query("partial", self.one), self.one,
                       lambda e: cancelled(e) or _query_cap(e))

    def _immediate(self) -> None:
        everyone = self.names
        attacks = [
            ("oversized input", lambda: self._call(
                "oversized input", everyone, self._query("huge", self.huge), self.huge,
                _remote("ProtocolError", f"{LIMITS.max_query_rows + 1} rows in one query"))),
            ("wrong shape", lambda: self._call(
                "wrong shape", everyone, self._query("shape", self.misshaped), self.misshaped,
                _remote("ProtocolError", "the input must have shape"))),
            ("wrong dtype", lambda: self._call(
                "wrong dtype", everyone, self._query("dtype", None),
                [{"a": np.zeros((1, 6)), "b": np.zeros((1, 6))}] * 3,
                _remote("ProtocolError", "needs two uint64 tensors"))),
            ("beyond the quota", lambda: self._call(
                "beyond the quota", everyone, self._query("beyond", self.beyond), self.beyond,
                lambda e: _spent(e) or _query_cap(e))),
            ("extra arguments", lambda: self._call(
                "extra arguments", everyone, self._query("args", self.one, {"steps": []}), self.one,
                _remote("ProtocolError", "query takes the arguments 'name' and 'input' only"))),
            ("reveal the weights", lambda: self._call(
                "reveal the weights", everyone, {"op": "reveal", "op_id": self._op_id("reveal"),
                                                 "args": {"x": self.weight}}, None,
                _denied("may not call 'reveal'"))),
            ("share", lambda: self._call(
                "share", everyone, {"op": "input", "op_id": self._op_id("input"), "args": {"out": "mine"}},
                self.one, _denied("may not call 'input'"))),
            ("setup", lambda: self._call(
                "setup", everyone, {"op": "setup", "op_id": self._op_id("setup"),
                                    "args": {"setup_id": "mallory-setup-0001"}}, None,
                _denied("may not call 'setup'"))),
            ("serve", lambda: self._call(
                "serve", everyone, {"op": "serve", "op_id": self._op_id("serve"),
                                    "args": {"name": self.name, "num_requests": 10**6}}, None,
                _denied("may not call 'serve'"))),
            ("status", lambda: self._call(
                "status", everyone, {"op": "program_status", "op_id": self._op_id("status"),
                                     "args": {"name": self.name}}, None,
                _denied("may not call 'program_status'"))),
        ]
        for _, attack in itertools.cycle(attacks):
            if self._stop.is_set():
                return
            attack()
            time.sleep(0.01)  # a flood, not a CPU burner: the machine has two cores for everybody

    def start(self) -> "Mallory":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "a hostile call did not end"


# --- the soak --------------------------------------------------------------------------------------------------
def run_soak(cluster, name: str, per_client: int) -> None:
    model = make_model()
    rows = CLIENTS * per_client
    model.share(cluster, name=name)  # as "model_owner"
    model.serve(rows + RESERVE, block=False)
    rng = np.random.default_rng(7)
    inputs = rng.uniform(-1, 1, size=(CLIENTS, per_client, 1, 6))
    reference = model(inputs.reshape(-1, 6)).numpy().reshape(CLIENTS, per_client, 1, 3)
    results = np.full((CLIENTS, per_client, 1, 3), np.nan)
    errors: list[str] = []
    # Connections first (TLS handshakes), then everyone at once.
    clients = [tfppml.Client(f"client{i}").connect_to_model(model.input_shape, model.output_shape, cluster,
                                                           model_name=name) for i in range(CLIENTS)]
    mallory = Mallory(cluster, model, name, rows).start()
    time.sleep(0.5)  # the flood is on before the first honest query

    def honest(i: int) -> None:
        for k in range(per_client):
            try:
                results[i, k] = clients[i].query_model(inputs[i, k])
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(f"client{i} query {k}: {err!r:.400}")

    start = time.monotonic()
    threads = [threading.Thread(target=honest, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    elapsed = time.monotonic() - start
    mallory.stop()

    assert not errors, f"{len(errors)} honest queries failed: {errors[:5]}"
    np.testing.assert_allclose(results, reference, atol=5e-3)
    owner = model._tfppml_shared.protocol
    assert owner.program_status(name)["served"] == rows  # mallory's queries spent nothing of the quota
    assert not mallory.unexpected, mallory.unexpected[:10]
    attacks = {"partial query to 1", "partial query to 2", "oversized input", "wrong shape", "wrong dtype",
               "beyond the quota", "extra arguments", "reveal the weights", "share", "setup", "serve", "status"}
    assert attacks <= set(mallory.counts), sorted(attacks - set(mallory.counts))
    # A cancelled partial query held its slot about the admission timeout, never the cluster timeout (30 s).
    assert mallory.slowest < LIMITS.admission_timeout + 3.0, mallory.slowest
    # After the period: the rows left do not cover a larger query, and once stopped nothing is served.
    left = mallory.remotes
    beyond = mallory.beyond
    for i, server in enumerate(cluster.names):
        refused, _ = timed(left[server].call, {"op": "query", "op_id": f"after-{name}", "args": {"name": name}}, beyond[i])
        assert _spent(refused), refused
    model.stop()
    for i, server in enumerate(cluster.names):
        refused, _ = timed(left[server].call, {"op": "query", "op_id": f"stopped-{name}", "args": {"name": name}},
                           mallory.one[i])
        assert _denied("is not serving")(refused), refused
    for client in clients:
        client.protocol.close()
    print(f"soak {name}: {rows} honest queries in {elapsed:.1f} s while mallory made "
          f"{sum(mallory.counts.values())} refused calls ({mallory.counts})")


def test_soak(cluster):
    run_soak(cluster, "soak", per_client=125)
