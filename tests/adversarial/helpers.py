"""A hostile client of in-process servers: it talks to each party directly (as a network client can), choosing
which servers it asks, the operation ids and every argument."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np

import tfppml.mpc as mpc
from tfppml import ops
from tfppml.mpc import ABY3

W1 = np.array([[1.0, -2.0, 0.5], [0.5, 3.0, -1.0]])
W2 = np.array([[0.25, -1.5], [2.0, 0.5], [-0.75, 1.0]])


def owner_with_mlp(name: str = "mlp", rows: int = 1000, *, timeout: float = 3.0, batch_size=None) -> ABY3:
    """The owner ("driver") shares a two-layer MLP and serves `rows` input rows; short timeouts for tests."""
    prot = ABY3(timeout=timeout)
    for party in prot.backend.parties:
        party.limits.admission_timeout = 0.5
    w1, w2 = prot.share(W1), prot.share(W2)
    _, x = prot.program([1, 2])
    prot.register_program(name, mpc.matmul(mpc.relu(x @ w1), w2), batch_size=batch_size)
    prot.serve(name, rows)
    prot.weights = (w1, w2)  # a program uses the weights: they must outlive this function's handles
    return prot


def pairs(prot: ABY3, value: np.ndarray) -> list[dict]:
    """Each server's pair of a fresh sharing of `value` (what an honest client sends with a query)."""
    return prot._split(np.asarray(value, dtype=np.float64), "test", "x", prot.frac_bits)[1]


def call(prot: ABY3, caller: str, op: str, op_id: str, args: dict, tensors=None, *, to=(0, 1, 2), meta=None):
    """Runs one command as `caller` at the servers `to`, concurrently; returns [(result or exception, seconds)]."""
    parties = prot.backend.parties

    def one(i):
        start = time.monotonic()
        command = {"op": op, "op_id": op_id, "args": args, **(meta or {})}
        try:
            result = parties[i].handle(caller, command, dict(tensors[i]) if tensors else {})
        except Exception as err:  # noqa: BLE001 - returned for the test to inspect
            result = err
        return result, time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(len(to)) as pool:
        return list(pool.map(one, to))


def decode(prot: ABY3, answers) -> np.ndarray:
    total = answers[0][0][1]["term"]
    for (_, tensors), _ in answers[1:]:
        total = ops.ring_add(total, tensors["term"])
    return prot.encoding.decode(total, answers[0][0][0]["frac_bits"])


def reveal_terms(prot: ABY3, caller: str, share_id: str, op_id: str, **args) -> np.ndarray:
    """Opens a shared tensor the way the pre-#17 `reveal` did for any owner: the sum of the parties' terms."""
    answers = call(prot, caller, "reveal", op_id, {"x": share_id, **args})
    for result, _ in answers:
        if isinstance(result, Exception):
            raise result
    total = answers[0][0][1]["term"]
    for (_, tensors), _ in answers[1:]:
        total = ops.ring_add(total, tensors["term"])
    return prot.encoding.decode(total, prot.frac_bits)
