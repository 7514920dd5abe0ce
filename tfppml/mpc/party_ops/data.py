"""Set-up and data movement between callers and the parties: who may put values in and take them out."""

from __future__ import annotations

import numpy as np

from tfppml.errors import PolicyDenied, ProtocolError
from tfppml.mpc.context import OpContext
from tfppml.mpc.dispatch import OP_ID_PATTERN, SETUP_ID_PATTERN, Callers, Session, party_op
from tfppml.mpc.party_ops.args import MAX_RANK, bool_arg, id_list_arg, int_arg, shape_arg
from tfppml.mpc.scope import agreement_digest, check_digests, send_digest
from tfppml.mpc.shares import NUM_PARTIES, Share, ShareKind, public_term, radd, rsub
from tfppml.ops.prg import new_seed


@party_op("setup", session=False, interactive=True)
def _setup(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Starts a set-up of the caller's: fresh correlated-randomness keys under the owner's set-up id.

    The three servers first confirm to each other that the owner asked each of them for this set-up (caller,
    operation and set-up id), and only then exchange keys: a set-up that reached one server only is cancelled
    and leaves nothing behind.  Party i draws k_i and gives it to party i-1, which so holds k_{i-1} and k_i.
    Every tag is the operation's own, so set-ups never collide, and a restarted server joins a new set-up of
    the owner's without the others restarting (their broken streams to it are reopened first).
    """
    setup_id = args.get("setup_id")
    if not isinstance(setup_id, str) or not SETUP_ID_PATTERN.match(setup_id):
        raise ProtocolError(f"argument 'setup_id' must match {SETUP_ID_PATTERN.pattern}, got {setup_id!r:.80}")
    party = ctx.party
    if (ctx.caller, setup_id) in party.sessions:
        raise ProtocolError(f"set-up {setup_id!r} of {ctx.caller!r} exists already; choose a fresh set-up id")
    refresh = getattr(party.channel, "refresh", None)
    if refresh is not None:
        refresh()
    digest = agreement_digest("setup", ctx.scope_id, setup_id)
    send_digest(party, ctx.scope_id, digest)
    check_digests(party, ctx.scope_id, digest, f"set-up {setup_id!r}")
    own = new_seed(256)
    ctx.send(ctx.i - 1, "key", own)
    nxt = ctx.recv(ctx.i + 1, "key")
    if nxt.shape != (4,):
        raise ProtocolError("set-up key from the next party is malformed")
    keys = {ctx.i: own.tobytes(), (ctx.i + 1) % NUM_PARTIES: np.ascontiguousarray(nxt).tobytes()}
    party.add_session(Session(ctx.caller, setup_id, keys, party.limits.max_ops_per_session))
    return {}, {}


def check_pair(tensors: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The caller's pair of a shared value: uint64 tensors 'a' and 'b' of one shape."""
    a, b = tensors.get("a"), tensors.get("b")
    if a is None or b is None or a.dtype != np.uint64 or b.dtype != np.uint64 or a.shape != b.shape:
        raise ProtocolError(f"{what} needs two uint64 tensors 'a' and 'b' of one shape")
    if a.ndim > MAX_RANK:
        raise ProtocolError(f"{what}: a tensor of rank {a.ndim} (at most {MAX_RANK})")
    return a, b


@party_op("input", session=False)
def _input(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """The caller shared a value itself and sends this party its pair."""
    return ctx.put(args.get("out"), Share(*check_pair(tensors, "input"))), {}


@party_op("input_from")
def _input_from(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Party `owner` holds an encoded value and shares it: x_o and x_{o+1} come from keys k_o and k_{o+1}
    (each known to the two parties that need that term), and the owner sends x_{o+2} to the other two."""
    owner = int_arg(args, "owner", 0, NUM_PARTIES - 1)
    shape = ctx.check_elements(shape_arg(args, "shape", allow_infer=False), "input_from")
    terms: dict[int, np.ndarray] = {}
    for k in (owner, owner + 1):
        if ctx.i in ((k - 1) % NUM_PARTIES, k % NUM_PARTIES):
            terms[k % NUM_PARTIES] = ctx.prg(k, f"term{k % NUM_PARTIES}", shape)
    last = (owner + 2) % NUM_PARTIES
    if ctx.i == owner:
        value = tensors.get("value")
        if value is None or value.dtype != np.uint64 or list(value.shape) != shape:
            raise ProtocolError(f"the owner needs a uint64 'value' of shape {shape}")
        terms[last] = rsub(rsub(value, terms[owner]), terms[(owner + 1) % NUM_PARTIES])
        ctx.send(owner + 1, "last", terms[last])
        ctx.send(owner + 2, "last", terms[last])
    else:
        terms[last] = ctx.recv(owner, "last")
        if list(terms[last].shape) != shape:
            raise ProtocolError(f"input_from: party {owner} sent shape {list(terms[last].shape)}, expected {shape}")
    share = Share(terms[ctx.i], terms[(ctx.i + 1) % NUM_PARTIES])
    return ctx.put(args.get("out"), share), {}


@party_op("public", session=False)
def _public(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """A public (already encoded) value as the trivial sharing (v, 0, 0)."""
    value = tensors.get("value")
    if value is None or value.dtype != np.uint64 or value.ndim > MAX_RANK:
        raise ProtocolError(f"public needs a uint64 'value' of rank at most {MAX_RANK}")
    return ctx.put(args.get("out"), Share(*public_term(ctx.i, value, value))), {}


@party_op("reveal")
def _reveal(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Opens one of the caller's own additive sharings: to the caller (every party returns its first term) or
    to party j (party j+2 sends x_{j+2} to party j, which keeps the plaintext under `out`).

    Only a pair sharing the caller owns: never a product's unshared terms (a party's term of a product of the
    owner's weights with an input is a linear function of the weights' shares), nor anything of a query."""
    try:
        share = ctx.get(args.get("x"), ShareKind.ARITH)
    except (PolicyDenied, ProtocolError) as err:
        raise ctx.party.refuse(ctx.caller, "reveal", str(err), type(err)) from None
    if "to" not in args:
        return {"shape": share.shape}, {"term": share.a}
    to = int_arg(args, "to", 0, NUM_PARTIES - 1)
    if ctx.i == (to + 2) % NUM_PARTIES:
        ctx.send(to, "term", share.a)
    if ctx.i == to:
        missing = ctx.recv(to + 2, "term")
        if missing.shape != share.a.shape:
            raise ProtocolError(f"reveal: party {(to + 2) % NUM_PARTIES} sent shape {missing.shape}, expected {share.a.shape}")
        value = radd(radd(share.a, share.b), missing)
        ctx.put(args.get("out"), Share(value, np.zeros_like(value), ShareKind.PLAIN))
    return {"shape": share.shape}, {}


@party_op("stats", session=False)
def _stats(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Communication counters of this party since the last reset (for benchmarks)."""
    party = ctx.party
    reset = bool_arg(args, "reset")
    with party._stats_lock:
        stats = dict(party.stats)
        if reset:
            party.stats = {key: 0 for key in party.stats}
    return {"stats": stats}, {}


@party_op("free", session=False)
def _free(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Deletes shared tensors of the caller's (ids of other identities' tensors are ignored)."""
    for share_id in id_list_arg(args, "ids"):
        ctx.party.store_free(ctx.caller, share_id)
    return {}, {}


@party_op("cancel", callers=Callers.ANYONE, session=False)
def _cancel(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Cancels one of the caller's own running operations (its scope) here and at the peers."""
    op_id = args.get("op_id")
    if not isinstance(op_id, str) or not OP_ID_PATTERN.match(op_id):
        raise ProtocolError(f"argument 'op_id' must match {OP_ID_PATTERN.pattern}, got {op_id!r:.80}")
    party = ctx.party
    reason = f"{ctx.caller!r} cancelled it"
    party.cancel_scope(f"{ctx.caller}/{op_id}", reason)
    # A query of that id runs under its program's set-up (tfppml.mpc.party_ops.programs.query_scope_id).
    with party._programs_lock:
        setups = {program.session.setup_id for program in party.programs.values()}
    for setup_id in sorted(setups):
        party.cancel_scope(f"{ctx.caller}/{op_id}@{setup_id}", reason)
    return {}, {}
