"""Attacks a red-team review of the hardened servers found (issue #17), each refused, with a control:

1. Burning the owner's set-up: every query claimed an operation id under the owner's set-up before the servers
   agreed on it, and after `max_ops_per_session` ids the model answered nobody.  Ids are now counted per
   identity: a client burns only its own.
2. Reserve and cancel: a failed or cancelled query refunded its rows, so a client could hold the rows left of a
   period at no cost.  Admitted rows are now spent whatever happens.
3. Metadata amplification: a request's JSON metadata was parsed (~24x its size in Python objects) before any
   check.  It is now refused above `MAX_META_BYTES` before it is parsed.
4. Reading the owner's figures from a refusal, and probing stored ids with `input`: a client gets neither.
"""

import dataclasses
import json

import numpy as np
import pytest

from tfppml.errors import PolicyDenied, ProtocolError, QueryCancelled, QuotaExceeded
from tfppml.mpc import dispatch
from tfppml.net import codec
from tfppml.serving import ServingPeriod

from .helpers import call, owner_with_mlp, pairs


def _query(prot, caller, op_id, rows=1, cols=2):
    return call(prot, caller, "query", op_id, {"name": "mlp"}, pairs(prot, np.ones((rows, cols))))


def _burn(prot, count):
    # Each server is sent another batch size: each passes its own checks, and the three refuse the query in the
    # agreement round, before anything is reserved.
    tensors = [pairs(prot, np.ones((i + 1, 2)))[i] for i in range(3)]
    for k in range(count):
        call(prot, "mallory", "query", f"burn{k}", {"name": "mlp"}, tensors)


def test_a_client_burns_only_its_own_operation_ids(monkeypatch):
    monkeypatch.setattr(dispatch, "MAX_CLIENT_OPS", 5)
    prot = owner_with_mlp()
    _burn(prot, 6)
    for result, _ in _query(prot, "mallory", "more"):
        assert isinstance(result, QuotaExceeded) and "'mallory' ran 5 operations" in str(result)
    assert all(not isinstance(r, Exception) for r, _ in _query(prot, "alice", "honest"))
    assert prot.program_status("mlp")["served"] == 1  # the owner is served too
    prot.close()


def test_control_ids_counted_per_set_up_let_a_client_stop_the_model(monkeypatch):
    seen = {}

    def per_set_up(self, scope_id):  # the weakened build: one count per set-up, whoever calls
        ids = seen.setdefault(id(self), set())
        if len(ids) >= 5:
            raise QuotaExceeded(f"set-up {self.setup_id!r} ran 5 operations")
        ids.add(scope_id)

    monkeypatch.setattr(dispatch.Session, "claim", per_set_up)
    prot = owner_with_mlp()
    _burn(prot, 6)
    assert all(isinstance(r, QuotaExceeded) for r, _ in _query(prot, "alice", "honest"))
    prot.close()


def _cancelling_relu(monkeypatch):
    """The client's cancel arriving mid-query, on every server (the query was admitted)."""
    spec = dispatch.PARTY_OPS["relu"]

    def cancelled(ctx, args, tensors):
        if ctx.caller == "mallory":
            raise QueryCancelled("mallory cancelled it")
        return spec.fn(ctx, args, tensors)

    monkeypatch.setitem(dispatch.PARTY_OPS, "relu", dataclasses.replace(spec, fn=cancelled))


def test_an_admitted_query_that_is_cancelled_spends_its_rows(monkeypatch):
    _cancelling_relu(monkeypatch)
    prot = owner_with_mlp(rows=10)
    answers = _query(prot, "mallory", "hold", rows=10)
    assert all(isinstance(r, ProtocolError) for r, _ in answers), answers  # QueryCancelled, or a peer's view of it
    # Each server that admitted it spent the rows (one that had not yet admitted it when the cancel came
    # reserved none): the next query cannot run, for mallory or anyone.
    spent = [p.programs["mlp"].period.status()["served"] for p in prot.backend.parties]
    assert max(spent) == 10, spent
    again = _query(prot, "alice", "after", rows=1)
    assert not all(not isinstance(r, Exception) for r, _ in again)
    assert any(isinstance(r, QuotaExceeded) for r, _ in again)
    prot.close()


def test_control_refunding_failed_queries_lets_a_client_hold_the_quota_for_free(monkeypatch):
    _cancelling_relu(monkeypatch)
    admit = ServingPeriod.admit
    monkeypatch.setattr(ServingPeriod, "admit", lambda self, rows, **kw: admit(self, rows))  # always refunds
    prot = owner_with_mlp(rows=10)
    for k in range(3):
        assert all(isinstance(r, ProtocolError) for r, _ in _query(prot, "mallory", f"hold{k}", rows=10))
    assert [p.programs["mlp"].period.status()["served"] for p in prot.backend.parties] == [0, 0, 0]
    assert all(not isinstance(r, Exception) for r, _ in _query(prot, "alice", "after", rows=10))  # held for free
    prot.close()


def test_oversized_metadata_is_refused_before_it_is_parsed(monkeypatch):
    count = codec.MAX_META_BYTES // 3
    bomb = codec.encode_message({"op": "query", "pad": [{}] * count})
    parsed = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(1) or real(*a, **k))
    with pytest.raises(ProtocolError, match=r"metadata of \d+ bytes exceeds the limit of 4194304 bytes"):
        codec.decode_message(bomb, max_bytes=1 << 30)
    assert not parsed
    # Control: without the cap the same message is parsed, [{}] * n and all.
    monkeypatch.setattr(codec, "MAX_META_BYTES", 1 << 30)
    meta, _ = codec.decode_message(bomb, max_bytes=1 << 30)
    assert len(meta["pad"]) == count and parsed


def test_a_client_learns_neither_the_owners_figures_nor_which_ids_exist():
    prot = owner_with_mlp(rows=10)
    for result, _ in _query(prot, "mallory", "big", rows=11):
        assert isinstance(result, QuotaExceeded) and "10" not in str(result) and "answered" not in str(result)
    weight = prot.weights[0].id
    for probe in (weight, "no-such-id"):
        for result, _ in call(prot, "mallory", "query", f"probe-{probe}", {"name": "mlp", "input": probe}):
            assert isinstance(result, PolicyDenied) and "sends its input with the query" in str(result)
    prot.close()
