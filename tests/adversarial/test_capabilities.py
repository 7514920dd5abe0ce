"""Every party operation, called by an identity that may not call it, is refused and audited (issue #17).

The capability table is the operation registry itself (`tfppml.mpc.dispatch.party_op`): a client may only
query a serving program and cancel its own work; the owners may do the rest, on their own tensors and programs.
docs/mpc.md prints the table; the test below keeps it true.
"""

import pathlib

import numpy as np
import pytest

from tfppml.errors import PolicyDenied, ProtocolError
from tfppml.mpc import runtime
from tfppml.mpc.dispatch import PARTY_OPS, Callers, capability_table, program_step_ops

from .helpers import W1, W2, call, decode, owner_with_mlp, pairs

CLIENT_OPS = {"query", "cancel"}
OWNER_OPS = sorted(name for name, spec in PARTY_OPS.items() if spec.callers is Callers.OWNERS)


def test_a_client_may_only_query_and_cancel():
    assert {name for name, spec in PARTY_OPS.items() if spec.callers is Callers.ANYONE} == CLIENT_OPS
    # Program steps come from the registration: computation only, never data movement or program control.
    assert program_step_ops() == {
        "add", "sub", "neg", "mul", "matmul", "conv2d", "truncate", "scale_up", "reshape", "transpose", "getitem",
        "concat", "sum", "relu", "nonnegative", "window_sum", "max_pool2d", "argmax",
    }


@pytest.fixture(scope="module")
def prot():
    prot = owner_with_mlp()
    yield prot
    prot.close()


@pytest.mark.parametrize("op", OWNER_OPS)
def test_every_owner_operation_is_refused_to_a_client_and_audited(prot, op):
    weight = prot.weights[0].id
    args = {"x": weight, "y": weight, "name": "mlp", "out": f"stolen.{op}", "setup_id": "c" * 16, "ids": [weight]}
    before = len(prot.backend.parties[0].audit)
    for result, _ in call(prot, "client", op, f"c.{op}", args, meta={"session": prot._setup_id}):
        assert isinstance(result, PolicyDenied), (op, result)
        assert f"'client' may not call {op!r}" in str(result)
    entry = prot.backend.parties[0].audit[-1]
    assert len(prot.backend.parties[0].audit) == before + 1
    assert (entry["caller"], entry["op"]) == ("client", op)
    # The weights are untouched and the program still answers.
    assert weight in prot.backend.parties[0].store


def test_program_control_is_its_owners_only(prot):
    """model_owner is an owner too, but the program is the driver's."""
    for op in ("serve", "stop_serving", "program_status"):
        for result, _ in call(prot, "model_owner", op, f"mo.{op}", {"name": "mlp", "num_requests": 10**6}):
            assert isinstance(result, PolicyDenied) and "only the owner of program 'mlp'" in str(result), result
    assert prot.program_status("mlp")["quota"] == 1000


def test_a_client_cancels_only_its_own_work(prot):
    # The owner's scopes are "driver/...": a client's cancel names "client/<op_id>" and cannot reach them.
    for result, _ in call(prot, "client", "cancel", "c.cancel", {"op_id": prot._new_id("op")}):
        assert result == ({}, {})
    answers = call(prot, "client", "query", "after.cancel", {"name": "mlp"}, pairs(prot, np.eye(2)))
    np.testing.assert_allclose(decode(prot, answers), np.maximum(W1, 0) @ W2, atol=1e-3)
    for result, _ in call(prot, "client", "cancel", "c.cancel2", {"op_id": "bad/id"}):
        assert isinstance(result, ProtocolError)


def test_control_without_the_capability_check_a_client_interferes():
    """With the client among the owners (the check off), its calls go through: it resets the servers'
    counters under the owner's feet and stores tensors of its own (memory the owner never granted)."""
    prot = owner_with_mlp()
    for party in prot.backend.parties:
        party.owners = party.owners | {"client"}
    prot.communication_stats(reset=True)
    prot.share(np.ones(4))
    assert all(s["messages_sent"] == 0 for s in prot.communication_stats().values())
    prot.query("mlp", np.ones((1, 2)))
    for result, _ in call(prot, "client", "stats", "c.stats", {"reset": True}):
        assert "stats" in result[0]
    assert all(s["messages_sent"] == 0 for s in prot.communication_stats().values()), "the owner's counters were reset"
    stored = call(prot, "client", "input", "c.input", {"out": "mine"}, pairs(prot, np.ones((1000,))))
    assert all(not isinstance(r, Exception) for r, _ in stored)
    prot.close()


def test_docs_list_every_operation_with_its_callers():
    text = (pathlib.Path(__file__).parents[2] / "docs" / "mpc.md").read_text()
    for row in capability_table():
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| `{row['op']}` ")), None)
        assert line is not None, f"docs/mpc.md has no row for {row['op']!r}"
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == row["callers"] and cells[2] == ("yes" if row["program_step"] else "no"), line
    assert runtime.capability_table() == capability_table()
