"""A client that tries to read the owner's weights out of a query's intermediates (issue #17, attack 1).

Before #17 every step of a query was stored as a share owned by the querying client, and `reveal` took any
share kind: revealing the first layer's product of an identity-matrix input gave W1 outright.  The control
rebuilds exactly that weakness (intermediates in the store as the caller's, `reveal` for anyone and of any
kind) and shows the extraction; the real servers refuse the reveal, keep nothing of the query in the store,
and cancel a query that reached only some servers before its first round.
"""

import dataclasses
import time

import numpy as np
import pytest

from tfppml.errors import PolicyDenied, ProtocolError, QueryCancelled
from tfppml.mpc import dispatch
from tfppml.mpc.dispatch import Callers
from tfppml.mpc.scope import QueryScope
from tfppml.mpc.shares import ShareKind

from .helpers import W1, W2, call, decode, owner_with_mlp, pairs, reveal_terms

IDENTITY = np.eye(2)  # two rows: e_1 @ W1 and e_2 @ W1 are W1's rows


@pytest.fixture
def weakened(monkeypatch):
    """The pre-#17 server: a query's values also land in the store as the caller's ("<op_id>.s<k>"), and any
    identity may reveal any of its shares, whatever their kind."""
    original_put = QueryScope.put

    def leaky_put(self, name, share):
        original_put(self, name, share)
        caller, _, op_id = self.scope_id.partition("/")
        op_id = op_id.partition("@")[0]  # the program's set-up id follows the client's operation id
        self.party.store_put(caller, f"{op_id}.s{name[1:]}", share)

    def any_kind_reveal(ctx, args, tensors):
        share = ctx.get(args.get("x"), kind=None)
        return {"shape": share.shape}, {"term": share.a}

    monkeypatch.setattr(QueryScope, "put", leaky_put)
    spec = dispatch.PARTY_OPS["reveal"]
    monkeypatch.setitem(
        dispatch.PARTY_OPS, "reveal",
        dataclasses.replace(spec, fn=any_kind_reveal, callers=Callers.ANYONE, session=False, interactive=False),
    )


def _query(prot, op_id, value, to=(0, 1, 2)):
    tensors = pairs(prot, value)
    return call(prot, "client", "query", op_id, {"name": "mlp"}, tensors, to=to)


def test_control_weakened_server_leaks_the_first_layer(weakened):
    prot = owner_with_mlp()
    answers = _query(prot, "q1", IDENTITY)
    assert all(not isinstance(r, Exception) for r, _ in answers)
    # The first step is x @ w1, left as terms (it feeds the ReLU): their sum is W1 itself.
    stolen = reveal_terms(prot, "client", "q1.s0", "steal")
    np.testing.assert_allclose(stolen, W1, atol=1.5e-4)
    prot.close()


def test_real_server_keeps_intermediates_out_of_reach():
    prot = owner_with_mlp()
    stores = [set(p.store) for p in prot.backend.parties]
    answers = _query(prot, "q1", IDENTITY)
    np.testing.assert_allclose(decode(prot, answers), np.maximum(IDENTITY @ W1, 0) @ W2, atol=1e-3)
    # Nothing of the query is left in the store, and the client may reveal nothing at all.
    assert [set(p.store) for p in prot.backend.parties] == stores
    for share_id in ("q1.s0", "q1.s1", "$0", "q1.input", next(iter(stores[0]))):
        for result, _ in call(prot, "client", "reveal", f"r.{len(share_id)}", {"x": share_id}):
            assert isinstance(result, PolicyDenied) and "only the model owners" in str(result)
    # Not even with the old "kind" argument, nor as an owner asking for a product's terms.
    for result, _ in call(prot, "client", "reveal", "r.kind", {"x": "q1.s0", "kind": "terms"}):
        assert isinstance(result, PolicyDenied)
    audit = prot.backend.parties[0].audit
    assert any(entry["caller"] == "client" and entry["op"] == "reveal" for entry in audit)
    prot.close()


def test_real_server_cancels_a_query_sent_to_two_servers_and_refuses_its_id_later():
    prot = owner_with_mlp()
    # A batch of 400 rows, so that the ReLU (of 1200 elements) takes the binary adder: many rounds to stretch.
    value = np.random.default_rng(0).normal(size=(400, 2))
    start = time.monotonic()
    partial = _query(prot, "stretch", value, to=(0, 1))
    assert all(isinstance(r, QueryCancelled) for r, _ in partial), partial
    assert max(seconds for _, seconds in partial) < 2.0, "cancelled within the admission timeout, not the 3 s channel timeout"
    # The late third server refuses the id at once: the scope was cancelled (or the id claimed) everywhere.
    (late, seconds), = _query(prot, "stretch", value, to=(2,))
    assert isinstance(late, (QueryCancelled, ProtocolError)) and seconds < 1.0, (late, seconds)
    # The quota was refunded (a cancelled query answers nothing) and honest queries go on.
    assert prot.program_status("mlp")["served"] == 0
    answers = _query(prot, "honest", IDENTITY)
    np.testing.assert_allclose(decode(prot, answers), np.maximum(IDENTITY @ W1, 0) @ W2, atol=1e-3)
    assert time.monotonic() - start < 10
    prot.close()


def test_control_without_agreement_a_partial_query_leaves_stale_rounds(monkeypatch):
    """Without the servers' agreement, the two servers run the query's first rounds for the third, which later
    finds their messages waiting under the same id."""
    monkeypatch.setattr(QueryScope, "open", lambda self: setattr(self, "_sent", True))
    monkeypatch.setattr(QueryScope, "await_admission", lambda self: None)
    monkeypatch.setattr(dispatch.PartyRuntime, "cancel_scope", lambda self, scope, reason: None)
    prot = owner_with_mlp(timeout=1.0)
    value = np.random.default_rng(0).normal(size=(400, 2))
    partial = _query(prot, "stretch", value, to=(0, 1))
    assert all(isinstance(r, Exception) for r, _ in partial), partial
    mailbox = prot.backend._channels["server2"]._hub.mailboxes["server2"]
    stale = [key for key in mailbox._pending if key[1].startswith("client/stretch@")]
    assert stale, "the first rounds' messages wait for server2"
    prot.close()


def test_reveal_is_of_own_pair_sharings_only():
    """Even an owner cannot open a product's unshared terms, nor use another owner's tensors."""
    prot = owner_with_mlp()
    x, w = prot.share(np.ones((1, 2))), prot.share(W1)
    session = {"session": prot._setup_id}
    made = call(prot, "driver", "matmul", "own.terms", {"x": x.id, "y": w.id, "terms": True, "trunc": 0, "out": "own.t"}, meta=session)
    assert all(not isinstance(r, Exception) for r, _ in made)
    assert prot.backend.parties[0].store["own.t"].kind is ShareKind.TERMS
    for kind_arg in ({}, {"kind": "terms"}):
        for result, _ in call(prot, "driver", "reveal", f"own.r{len(kind_arg)}", {"x": "own.t", **kind_arg}, meta=session):
            assert isinstance(result, ProtocolError) and "expected arith" in str(result)
    # model_owner is an owner too, but not of the driver's tensors.
    for result, _ in call(prot, "model_owner", "add", "mo.add", {"x": w.id, "y": w.id, "out": "mo.w2"}):
        assert isinstance(result, PolicyDenied) and "belongs to another identity" in str(result)
    prot.close()
