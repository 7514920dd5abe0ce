"""Served programs: the owner registers a computation (a model's forward pass) and opens serving periods; any
identity may query a serving program on its own input and gets back this party's term of the declared output,
and nothing else.

What a hostile client can and cannot do here: it chooses the input (checked against the declared input shape
and batch size before anything is allocated), the operation id (scoped by its identity, never reusable under the
owner's set-up) and which servers it asks (a query that does not reach all three is cancelled before its first
round, see `tfppml.mpc.scope`).  It cannot name a query's intermediates (they live in the query's scope), cannot
reveal anything (reveal is the owners'), and spends one row of the serving period's quota per input row.
"""

from __future__ import annotations

import numpy as np

from tfppml.errors import PolicyDenied, ProtocolError, QuotaExceeded
from tfppml.mpc.context import ID_PATTERN, OpContext
from tfppml.mpc.dispatch import PARTY_OPS, Callers, party_op, program_step_ops
from tfppml.mpc.party_ops.args import int_arg, shape_arg
from tfppml.mpc.party_ops.data import check_pair
from tfppml.mpc.scope import QueryScope, agreement_digest
from tfppml.mpc.shares import Share, ShareKind
from tfppml.serving import ServingPeriod

#: Most steps of a program.
MAX_STEPS = 4096


class Program:
    """A registered computation that clients may run on their own inputs.

    Steps reference the program's input as "$input", earlier steps' outputs as "$0", "$1", ..., and shared
    tensors of the owner (weights) by id.  It runs under the owner's set-up (`session`).
    """

    def __init__(self, name: str, owner: str, session, steps: list[dict], output_frac_bits: int,
                 input_shape: list[int]) -> None:
        self.name = name
        self.owner = owner
        self.session = session
        self.steps = steps
        self.output_frac_bits = output_frac_bits
        self.input_shape = input_shape  # [batch or -1, *row]
        batch = input_shape[0] if input_shape[0] >= 1 else None
        self.period = ServingPeriod(name, batch_size=batch)


def _step_refs(args: dict) -> list:
    refs = [args[k] for k in ("x", "y") if k in args]
    xs = args.get("xs", [])
    return refs + (xs if isinstance(xs, list) else [xs])


@party_op("register_program")
def _register_program(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Stores a program of the caller's (its steps checked now: allowed operations, references to earlier
    steps, the input or the caller's own tensors)."""
    name, steps = args.get("name"), args.get("steps")
    if not isinstance(name, str) or not ID_PATTERN.match(name):
        raise ProtocolError(f"program name must be a short identifier string, got {name!r:.80}")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        raise ProtocolError(f"a program needs a list of 1 to {MAX_STEPS} steps")
    input_shape = shape_arg(args, "input_shape")
    if not input_shape or -1 in input_shape[1:] or input_shape[0] == 0:
        raise ProtocolError(
            f"argument 'input_shape' must be [batch, *row] with batch -1 (any) or >= 1, got {input_shape}"
        )
    allowed = program_step_ops()
    for k, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("op") not in allowed or not isinstance(step.get("args"), dict):
            raise ProtocolError(f"program step {k} is not an allowed operation: {step!r:.200}")
        if step["args"].get("out") != f"${k}":
            raise ProtocolError(f"program step {k} must write ${k}")
        for ref in _step_refs(step["args"]):
            if not isinstance(ref, str):
                raise ProtocolError(f"program step {k}: operands must be ids, got {ref!r:.40}")
            if ref == "$input" or (ref.startswith("$") and ref[1:].isdigit() and int(ref[1:]) < k):
                continue
            if ref.startswith("$"):
                raise ProtocolError(f"program step {k} refers to {ref!r}, which is not the input or an earlier step")
            ctx.get(ref, kind=None)  # the owner's own shared tensor (raises PolicyDenied otherwise)
    frac = int_arg(args, "output_frac_bits", 0, 62)
    with ctx.party._programs_lock:
        existing = ctx.party.programs.get(name)
        if existing is not None and existing.owner != ctx.caller:
            raise ctx.party.refuse(ctx.caller, "register_program", f"program {name!r} belongs to another identity")
        ctx.party.programs[name] = Program(name, ctx.caller, ctx.session, steps, frac, input_shape)
    return {}, {}


def _owned_program(ctx: OpContext, args: dict) -> Program:
    program = ctx.party.programs.get(args.get("name"))
    if program is None:
        raise ProtocolError(f"no program named {args.get('name')!r:.80} is registered")
    if program.owner != ctx.caller:
        raise ctx.party.refuse(ctx.caller, "program", f"only the owner of program {program.name!r} may control it")
    return program


@party_op("serve", session=False)
def _serve(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Opens a serving period of `num_requests` input rows (ending the current one)."""
    program = _owned_program(ctx, args)
    rows = int_arg(args, "num_requests", 1, 2**40)
    program.period.stop()
    program.period.open(rows)
    return {}, {}


@party_op("stop_serving", session=False)
def _stop_serving(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Ends the serving period; returns the rows answered in it."""
    return {"served": _owned_program(ctx, args).period.stop()}, {}


@party_op("program_status", session=False)
def _program_status(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """The serving period's {"serving", "quota", "started", "served"} (in input rows)."""
    status = _owned_program(ctx, args).period.status()
    return {key: (0 if value is None else value) for key, value in status.items()}, {}


def _query_input(ctx: OpContext, program: Program, args: dict, tensors: dict) -> tuple[np.ndarray, np.ndarray]:
    """The caller's input: its pair sent with the query, or (args 'input') a shared tensor of its own."""
    if "input" in args:
        if ctx.caller != program.owner:
            # A client has no stored tensors; naming one could only probe which ids exist.
            raise ctx.party.refuse(ctx.caller, "query", "a client sends its input with the query (tensors 'a' and 'b')")
        if tensors:
            raise ProtocolError("query: give the input either as 'input' or inline as tensors 'a' and 'b', not both")
        share = ctx.get(args["input"], ShareKind.ARITH)
        a, b = share.a, share.b
    else:
        a, b = check_pair(tensors, "query")
    declared = program.input_shape
    if a.ndim != len(declared) or list(a.shape[1:]) != declared[1:] or a.shape[0] < 1:
        want = ["batch" if declared[0] < 0 else declared[0], *declared[1:]]
        raise ProtocolError(f"query of {program.name!r}: the input must have shape {want}, got {list(a.shape)}")
    if a.shape[0] > ctx.party.limits.max_query_rows:
        raise ProtocolError(
            f"query of {program.name!r}: {a.shape[0]} rows in one query, more than this server's "
            f"{ctx.party.limits.max_query_rows}"
        )
    return a, b


@party_op("query", callers=Callers.ANYONE, session=False, interactive=True)
def _query(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Runs a serving program on the caller's input (its pair for this party, tensors 'a' and 'b') and returns
    this party's term of the output, to the caller only; the query's values go when it ends."""
    party = ctx.party
    name = args.get("name")
    program = party.programs.get(name) if isinstance(name, str) else None
    if program is None:
        raise ProtocolError(f"no program named {name!r:.80} is registered")
    if set(args) - {"name", "input"}:
        raise ProtocolError(f"query takes the arguments 'name' and 'input' only, got {sorted(args)}")
    a, b = _query_input(ctx, program, args, tensors)
    rows = int(a.shape[0])
    # The program's set-up is part of the scope: an operation id reused under another set-up (another program)
    # never meets the messages or masks of the first.
    scope_id = query_scope_id(ctx.scope_id, program)
    party.begin_query(ctx.caller)
    scope = None
    try:
        # Refused at once (by all three alike) when the period cannot take it; the rows are reserved after agreeing.
        # A client is told that the rows are short, not the owner's figures (quota, answered, in flight).
        try:
            program.period.check(rows)
        except QuotaExceeded as err:
            if ctx.caller == program.owner:
                raise
            raise QuotaExceeded(
                f"{program.name!r} is not serving a query of {rows} rows now: fewer row(s) left of this serving "
                "period, or no period open (its owner sees the figures)"
            ) from None
        program.session.claim(scope_id)
        digest = agreement_digest("query", scope_id, program.name, list(a.shape))
        scope = QueryScope(party, program, scope_id, digest)
        scope.open()
        # The three servers agree before a row of the quota is reserved: a query that reached only some of them
        # holds none of it (nor learns how much is left) while it waits to be cancelled.
        scope.await_admission()
        # Admitted on all three servers: from here the rows are spent even if the query is cancelled or fails,
        # or a client could reserve the rows left, cancel, and repeat (holding them from honest clients for free).
        with program.period.admit(rows, spend_on_failure=True):
            scope.values["$input"] = Share(a, b)
            for k, step in enumerate(program.steps):
                step_ctx = OpContext(party, scope_id, ctx.caller, program.session, step=k, query=scope)
                PARTY_OPS[step["op"]].fn(step_ctx, step["args"], {})
            result = scope.get(f"${len(program.steps) - 1}")
            if result.kind not in (ShareKind.ARITH, ShareKind.TERMS):
                raise ProtocolError(f"program {program.name!r} does not end in a shared value")
            return {"shape": result.shape, "frac_bits": program.output_frac_bits}, {"term": result.a}
    except BaseException as err:
        party.cancel_scope(scope_id, f"server {party.names[party.index]} failed it: {err}")
        if isinstance(err, PolicyDenied):
            raise party.refuse(ctx.caller, "query", str(err), type(err)) from None
        raise
    finally:
        if scope is not None:
            scope.close()
        party.end_query(ctx.caller)


def query_scope_id(scope_id: str, program: Program) -> str:
    """The scope of a query: the caller's "<caller>/<op_id>" under the program's set-up."""
    return f"{scope_id}@{program.session.setup_id}"
