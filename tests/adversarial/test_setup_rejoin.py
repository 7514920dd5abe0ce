"""Set-ups that a client cannot poison, and a restarted server that rejoins (issue #17, attack 3).

Before #17 any identity could call `setup`, whose key exchange used the fixed tag "setup/key": a client's set-up
sent to server0 alone left a key message behind at server2, and every later set-up failed with "duplicate
message: ... tag 'setup/key'"; after one server restarted, set-up never completed again without restarting all
three.  The control rebuilds the pre-#17 set-up (fixed tags, anyone may call it) on the in-process back end and
shows the poisoning; the real servers refuse a client's set-up, cancel an owner's set-up that reached one server
only within `admission_timeout` (its tags are its own), and let a restarted server rejoin a new set-up without
restarting the other two.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfppml.mpc as mpc
from tfppml.errors import PartyUnavailableError, PolicyDenied, ProtocolError, QueryCancelled
import tfppml
from tfppml.mpc import ABY3, dispatch
from tfppml.mpc.backends import InProcessBackend
from tfppml.mpc.dispatch import Callers, PartyLimits, Session
from tfppml.mpc.shares import NUM_PARTIES
from tfppml.net.transport import RemoteError
from tfppml.ops.prg import new_seed

from .conftest import IDENTITIES, W1, W2, mlp_reference, timed

ADMISSION = PartyLimits().admission_timeout  # the real servers' default (5 s)


def setup_meta(op_id: str, setup_id: str | None = None) -> dict:
    return {"op": "setup", "op_id": op_id, "args": {"setup_id": setup_id or secrets.token_hex(16)}}


def computes_correctly(prot: ABY3) -> None:
    """A product, a ReLU (interactive rounds under the set-up's keys) and a served query all come out right."""
    x = np.array([[0.5, -1.25], [2.0, 0.75]])
    got = prot.reveal(mpc.relu(prot.share(x) @ prot.share(W1)))
    np.testing.assert_allclose(got, np.maximum(x @ W1, 0), atol=1e-3)


# --- (a) early or partial set-up -------------------------------------------------------------------------------
def test_a_client_cannot_set_up_and_a_partial_owner_set_up_is_cancelled(loopback):
    cluster = loopback()  # the real servers
    for name in cluster.names:
        refused, seconds = timed(cluster.remote(name, "mallory").call, setup_meta("early"), {})
        assert isinstance(refused, PolicyDenied) and "only the model owners" in str(refused), (name, refused)
        assert seconds < 2
    # The owner's own set-up, sent to server0 only (a fresh set-up id): the peers never confirm it.
    partial, seconds = timed(cluster.remote("server0", "model_owner").call, setup_meta("partial"), {})
    assert isinstance(partial, RemoteError) and partial.remote_type == "QueryCancelled", partial
    assert "did not confirm it within" in str(partial)
    assert ADMISSION - 0.5 < seconds < ADMISSION + 3, seconds  # cancelled after the admission wait, not 30 s
    assert not any(runtime.sessions for runtime in map(cluster.runtime, cluster.names))  # nothing left behind
    # A normal set-up afterwards completes and computes correctly, on all three servers.
    owner = ABY3(cluster, identity="model_owner")
    computes_correctly(owner)
    _, x = owner.program([1, 2])
    w1, w2 = owner.share(W1), owner.share(W2)
    owner.register_program("mlp", mpc.matmul(mpc.relu(x @ w1), w2))
    owner.serve("mlp", 1)
    client = ABY3(cluster, identity="client", setup=False)
    np.testing.assert_allclose(client.query("mlp", np.ones((1, 2))), mlp_reference(np.ones((1, 2))), atol=1e-3)
    client.close()
    owner.close()


def old_style_setup(ctx, args, tensors):
    """The pre-#17 set-up (`git show HEAD~3:tfppml/mpc/runtime.py`, _setup): fixed tags "setup/key", once per
    party, by anyone."""
    party = ctx.party
    if getattr(party, "old_keys", None) is None:
        own = new_seed(256)
        party.channel.send(party.names[(ctx.i - 1) % NUM_PARTIES], "setup/key", own)
        nxt = np.asarray(party.channel.recv(party.names[(ctx.i + 1) % NUM_PARTIES], "setup/key"))
        if nxt.dtype != np.uint64 or nxt.shape != (4,):
            raise ProtocolError("set-up key from the next party is malformed")
        party.old_keys = {ctx.i: own.tobytes(), (ctx.i + 1) % NUM_PARTIES: nxt.tobytes()}
    setup_id = args.get("setup_id")
    party.add_session(Session(ctx.caller, setup_id, party.old_keys, party.limits.max_ops_per_session))
    return {}, {}


@pytest.fixture
def weakened_setup(monkeypatch):
    spec = dispatch.PARTY_OPS["setup"]
    monkeypatch.setitem(dispatch.PARTY_OPS, "setup", dataclasses.replace(spec, fn=old_style_setup, callers=Callers.ANYONE))


def _at(parties, caller: str, meta: dict, to) -> list:
    """`meta` run as `caller` at the parties `to`, concurrently: [result or exception]."""
    with concurrent.futures.ThreadPoolExecutor(len(to)) as pool:
        return [f[0] for f in pool.map(lambda i: timed(parties[i].handle, caller, dict(meta), {}), to)]


def test_control_an_early_client_set_up_poisons_every_later_set_up(weakened_setup):
    backend = InProcessBackend(timeout=1.0, caller="driver")
    parties = backend.parties
    # The client's set-up at server0 alone: its key reaches server2, its wait for server1's key times out.
    (early,) = _at(parties, "client", setup_meta("early"), [0])
    assert isinstance(early, PartyUnavailableError), early
    # The owner's set-up, on all three servers, now fails on the stale message.
    results = _at(parties, "driver", setup_meta("owner"), [0, 1, 2])
    failures = [r for r in results if isinstance(r, Exception)]
    assert any("duplicate message" in str(r) and "setup/key" in str(r) for r in failures), results
    # And it never recovers: the tag is the same in every later attempt.
    again = _at(parties, "driver", setup_meta("owner2"), [0, 1, 2])
    assert any(isinstance(r, Exception) for r in again), again
    backend.close()


def test_the_real_in_process_servers_refuse_the_early_client_set_up():
    backend = InProcessBackend(timeout=30.0, caller="driver")
    parties = backend.parties
    for party in parties:
        party.limits.admission_timeout = 1.0
    for early in _at(parties, "client", setup_meta("early"), [0, 1, 2]):
        assert isinstance(early, PolicyDenied), early
    (partial,) = _at(parties, "driver", setup_meta("partial"), [0])
    assert isinstance(partial, QueryCancelled), partial
    assert all(not isinstance(r, Exception) for r in _at(parties, "driver", setup_meta("owner"), [0, 1, 2]))
    backend.close()


# --- (b) a restarted server rejoins -----------------------------------------------------------------------------
def test_a_restarted_server_rejoins_a_new_set_up_without_restarting_the_others(loopback):
    cluster = loopback()
    first = ABY3(cluster, identity="model_owner")
    computes_correctly(first)
    survivors = {name: cluster.servers[name] for name in ("server0", "server1")}
    cluster.restart("server2")  # abruptly: no grace, its state (set-ups, shares) gone
    assert all(cluster.servers[name] is server for name, server in survivors.items())  # not restarted
    # The old protocol instance's set-up is gone at server2: it says so, it does not hang.
    stale, seconds = timed(first.reveal, first.share(np.ones(2)))
    assert isinstance(stale, ProtocolError) and "has no set-up" in str(stale) and seconds < 5, stale
    # A new set-up on the same cluster completes at once (no retry) and computes correctly.
    second, seconds = timed(ABY3, cluster, identity="model_owner")
    assert not isinstance(second, Exception), second
    assert seconds < 5, seconds
    computes_correctly(second)
    # And again after a second restart, of another server.
    cluster.restart("server0")
    third = ABY3(cluster, identity="model_owner")
    computes_correctly(third)
    for prot in (first, second, third):
        prot.close()


def _relaunch(cluster, name: str) -> subprocess.Popen:
    """Starts a new worker process `name` of an auto-managed cluster, as `Cluster.start` does (same address)."""
    ready = Path(cluster.config_path).parent / f"{name}.rejoined.ready"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(tfppml.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable, "-m", "tfppml.cli", "worker", "--name", name, "--config", str(cluster.config_path),
        "--service", "mpc", "--ready-file", str(ready), "--exit-with-parent", str(os.getpid()),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None, f"the relaunched {name} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"the relaunched {name} was not ready in 120 s"
        time.sleep(0.05)
    return process


def test_a_server_killed_with_sigkill_and_restarted_rejoins():
    workers = [tfppml.Worker("127.0.0.1:0") for _ in range(3)]
    with tfppml.Cluster(*workers, service="mpc", identities=IDENTITIES) as cluster:
        first = ABY3(cluster, identity="model_owner")
        computes_correctly(first)
        survivors = {name: cluster.processes[name].pid for name in ("server0", "server1")}
        victim = cluster.processes["server2"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        process = _relaunch(cluster, "server2")
        try:
            assert {name: cluster.processes[name].poll() for name in survivors} == {"server0": None, "server1": None}
            second, seconds = timed(ABY3, cluster, identity="model_owner")  # the first attempt, no retry
            assert not isinstance(second, Exception), second
            computes_correctly(second)
            second.close()
        finally:
            process.terminate()
            process.wait(10)
        first.close()
