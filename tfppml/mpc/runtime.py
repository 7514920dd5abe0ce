"""The party side of the three-party replicated-secret-sharing protocol (ABY3-style, semi-honest servers,
hostile callers), and the "mpc" worker service.

Each of the three servers runs a `PartyRuntime` (`tfppml.mpc.dispatch`).  A caller (a model owner, a driver, a
client) sends it commands; the runtime checks who may call what, keeps the shares, computes on them with the
ring kernels and exchanges protocol messages with the other two parties over a `Channel` (in-process queues or
gRPC with mutual TLS).  The same code runs in both back ends.  Where things live:

- `tfppml.mpc.shares`: the `Share` a party holds (`ShareKind`), ring arithmetic.
- `tfppml.mpc.dispatch`: `PartyRuntime.handle`, the capability table (`party_op`), limits, set-ups, audit.
- `tfppml.mpc.context`: `OpContext`, one operation's view (store, scope, tags, PRG), with the sub-protocols of
  `tfppml.mpc.primitives` mixed in.
- `tfppml.mpc.scope`: a served query's own scope and the servers' agreement on it.
- `tfppml.mpc.party_ops`: the operations themselves.

Correlated randomness: at set-up party i draws a 256-bit key k_i and gives it to party i-1, so party i holds
k_i and k_{i+1} and each key is known to exactly two parties.  Every random draw is ChaCha20 under a key derived
from (k_j, scope, label) with SHA-256, so draws never repeat across operations and the two holders of a key draw
the same values without talking.  A zero-sharing alpha_i = F(k_i) - F(k_{i+1}) re-randomizes products, so a
multiplication costs one message per party.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tfppml.mpc import party_ops  # noqa: F401 - registers the operations
from tfppml.mpc.context import OpContext
from tfppml.mpc.dispatch import PARTY_OPS, Callers, PartyLimits, PartyRuntime, Session, capability_table, party_op
from tfppml.mpc.primitives import fss, resharing
from tfppml.mpc.shares import (
    NUM_PARTIES,
    Pair,
    Share,
    ShareKind,
    public_term,
    radd,
    rmul,
    rneg,
    rsub,
    shift_left,
    shift_right_logical,
)

__all__ = [
    "NUM_PARTIES", "PARTY_OPS", "Callers", "OpContext", "Pair", "PartyLimits", "PartyRuntime", "Session", "Share",
    "ShareKind", "capability_table", "fss", "make_service", "party_op", "public_term", "radd", "resharing", "rmul",
    "rneg", "rsub", "shift_left", "shift_right_logical",
]


def make_service(name: str, config: Any, channel: Any, options: dict[str, str] | None = None) -> PartyRuntime:
    """Factory of the "mpc" worker service (`tfppml worker --service mpc`): this worker's party runtime.

    The cluster's first three parties, in the order of its configuration, are servers 0, 1 and 2; the
    configuration's `owners` may set up and serve, every other identity may only query.  `options` (from
    `tfppml worker --option KEY=VALUE`) set `PartyLimits` fields, e.g. max_queries_per_identity=2.
    """
    names = list(config.party_names)[:NUM_PARTIES]
    if len(names) != NUM_PARTIES or name not in names:
        raise ValueError(
            f"the mpc service needs a cluster of three parties including {name!r}, got {list(config.party_names)}"
        )
    owners = tuple(getattr(config, "owners", ("driver", "model_owner")))
    return PartyRuntime(names.index(name), names, channel, owners=owners, limits=_limits(options or {}))


def _limits(options: dict[str, str]) -> PartyLimits:
    fields = {f.name: f.type for f in dataclasses.fields(PartyLimits)}
    values: dict[str, Any] = {}
    for key, text in options.items():
        if key not in fields:
            raise ValueError(f"the mpc service has no option {key!r}; options are {sorted(fields)}")
        try:
            value = float(text) if fields[key] in ("float", float) else int(text)
        except ValueError:
            raise ValueError(f"mpc service option {key!r} must be a number, got {text!r}") from None
        if value <= 0:
            raise ValueError(f"mpc service option {key!r} must be positive, got {text!r}")
        values[key] = value
    return PartyLimits(**values)
