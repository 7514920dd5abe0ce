"""Communication-free steps: each party applies the same function to both components of its shares."""

from __future__ import annotations

import math

import numpy as np

from tfppml.errors import ProtocolError
from tfppml.mpc.context import OpContext
from tfppml.mpc.dispatch import party_op
from tfppml.mpc.party_ops.args import MAX_RANK, bool_arg, id_list_arg, int_arg, shape_arg, window_arg
from tfppml.mpc.shares import NO_PAIR, Share, ShareKind, radd, ring_sum, rneg, rsub, shift_left

#: Largest pool window or stride side of a pooling step.
MAX_WINDOW = 1 << 10


def componentwise(fn, *shares: Share) -> Share:
    """fn applied to the shares' components alike.  With a TERMS operand the result is terms (first components
    only): party i's first components of a pair sharing sum to its value, as terms do, so t_i + y_i are terms."""
    first = fn(*(share.a for share in shares))
    if any(share.kind is ShareKind.TERMS for share in shares):
        return Share(first, NO_PAIR, ShareKind.TERMS)
    return Share(first, fn(*(share.b for share in shares)))


def broadcast_shape(ctx: OpContext, x: Share, y: Share, what: str) -> list[int]:
    try:
        shape = list(np.broadcast_shapes(tuple(x.shape), tuple(y.shape)))
    except ValueError:
        raise ProtocolError(f"{what}: shapes {x.shape} and {y.shape} do not broadcast") from None
    return ctx.check_elements(shape, what)


def _local_binary(name, fn):
    def run(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
        x, y = ctx.get_additive(args.get("x")), ctx.get_additive(args.get("y"))
        broadcast_shape(ctx, x, y, name)
        return ctx.put(args.get("out"), componentwise(fn, x, y)), {}

    run.__doc__ = f"Elementwise {name} of two shared tensors (broadcasting)."
    return run


party_op("add", program_step=True, session=False)(_local_binary("add", radd))
party_op("sub", program_step=True, session=False)(_local_binary("sub", rsub))


@party_op("neg", program_step=True, session=False)
def _neg(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """-x."""
    x = ctx.get(args.get("x"))
    return ctx.put(args.get("out"), Share(rneg(x.a), rneg(x.b))), {}


@party_op("scale_up", program_step=True, session=False)
def _scale_up(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Multiplies by 2**bits locally (raises the fixed-point scale of a share exactly)."""
    x = ctx.get_additive(args.get("x"))
    bits = int_arg(args, "bits", 0, 62)
    return ctx.put(args.get("out"), componentwise(lambda t: shift_left(t, bits), x)), {}


@party_op("reshape", program_step=True, session=False)
def _reshape(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """x with a new shape of the same size."""
    x = ctx.get_additive(args.get("x"))
    shape = shape_arg(args, "shape")
    try:
        return ctx.put(args.get("out"), componentwise(lambda t: np.reshape(t, shape), x)), {}
    except ValueError as err:
        raise ProtocolError(f"reshape of {x.shape} to {shape} failed: {err}") from None


@party_op("transpose", program_step=True, session=False)
def _transpose(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """x with its axes permuted."""
    x = ctx.get(args.get("x"))
    perm = args.get("perm")
    if perm is not None and (not isinstance(perm, list) or sorted(perm) != list(range(len(x.shape)))):
        raise ProtocolError(f"argument 'perm' {perm!r:.80} is not a permutation of the {len(x.shape)} axes")
    return ctx.put(args.get("out"), Share(np.transpose(x.a, perm), np.transpose(x.b, perm))), {}


def _bound(value, name: str):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**40):
        raise ProtocolError(f"index item: {name} must be an int or None, got {value!r:.40}")
    return value


def decode_index(items: list) -> tuple:
    """An index sent as a list of items: slices, ints, Ellipsis and new axes (at most MAX_RANK of them)."""
    if not isinstance(items, list) or len(items) > MAX_RANK:
        raise ProtocolError(f"argument 'index' must be a list of at most {MAX_RANK} items")
    out = []
    for item in items:
        kind = item.get("t") if isinstance(item, dict) else None
        if kind == "s":
            step = _bound(item.get("step"), "step")
            if step == 0:
                raise ProtocolError("index item: slice step cannot be zero")
            out.append(slice(_bound(item.get("start"), "start"), _bound(item.get("stop"), "stop"), step))
        elif kind == "i" and isinstance(item.get("v"), int) and not isinstance(item.get("v"), bool):
            out.append(_bound(item["v"], "v"))
        elif kind == "e":
            out.append(Ellipsis)
        elif kind == "n":
            out.append(None)
        else:
            raise ProtocolError(f"bad index item {item!r:.80}")
    return tuple(out)


@party_op("getitem", program_step=True, session=False)
def _getitem(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Basic indexing (slices, ints, Ellipsis, new axes) of x."""
    x = ctx.get(args.get("x"))
    index = decode_index(args.get("index", []))
    try:
        return ctx.put(args.get("out"), Share(x.a[index], x.b[index])), {}
    except (IndexError, TypeError, ValueError) as err:
        raise ProtocolError(f"getitem of a tensor of shape {x.shape}: {err}") from None


@party_op("concat", program_step=True, session=False)
def _concat(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """The tensors `xs` joined along `axis`."""
    parts = [ctx.get(i) for i in id_list_arg(args, "xs", limit=1024)]
    if not parts:
        raise ProtocolError("argument 'xs' must name at least one shared tensor")
    axis = int_arg(args, "axis", -MAX_RANK, MAX_RANK - 1)
    ctx.check_elements([sum(math.prod(p.shape) for p in parts)], "concat")
    try:
        return ctx.put(
            args.get("out"), Share(np.concatenate([p.a for p in parts], axis), np.concatenate([p.b for p in parts], axis))
        ), {}
    except (ValueError, np.exceptions.AxisError) as err:
        raise ProtocolError(f"concat of shapes {[p.shape for p in parts]} along axis {axis}: {err}") from None


def _axis_arg(args: dict, rank: int):
    axis = args.get("axis")
    axes = axis if isinstance(axis, list) else [axis] if axis is not None else []
    if len(axes) > MAX_RANK or not all(isinstance(a, int) and not isinstance(a, bool) and -rank <= a < rank for a in axes):
        raise ProtocolError(f"argument 'axis' must be None, an axis or a list of axes of a rank-{rank} tensor, got {axis!r:.80}")
    return axis


@party_op("sum", program_step=True, session=False)
def _sum(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """The sum of x over `axis` (all axes by default)."""
    x = ctx.get(args.get("x"))
    axis, keepdims = _axis_arg(args, len(x.shape)), bool_arg(args, "keepdims")
    try:
        return ctx.put(args.get("out"), Share(ring_sum(x.a, axis, keepdims), ring_sum(x.b, axis, keepdims))), {}
    except (ValueError, np.exceptions.AxisError) as err:
        raise ProtocolError(f"sum of a tensor of shape {x.shape} over {axis!r}: {err}") from None


def pooling_args(ctx: OpContext, x: Share, args: dict, what: str) -> tuple[list[int], list[int]]:
    """`pool` and `strides` of a VALID pooling of the [N, H, W, C] tensor x, checked against it and against
    the per-request bound on the windows it gathers (before they are allocated)."""
    if len(x.shape) != 4:
        raise ProtocolError(f"{what}: the input must be [batch, height, width, channels], got shape {x.shape}")
    pool, strides = window_arg(args, "pool", MAX_WINDOW), window_arg(args, "strides", MAX_WINDOW)
    n, h, w, c = x.shape
    if pool[0] > h or pool[1] > w:
        raise ProtocolError(f"{what}: argument 'pool' {pool} is larger than the input's {h}x{w}")
    oh, ow = (h - pool[0]) // strides[0] + 1, (w - pool[1]) // strides[1] + 1
    ctx.check_elements([n, oh, ow, pool[0] * pool[1], c], f"{what}'s windows")
    return pool, strides


def windows(x: np.ndarray, pool: list[int], strides: list[int]) -> np.ndarray:
    """[N, H, W, C] -> [N, OH, OW, ph*pw, C] (VALID padding) by gathering window elements (arguments checked
    by `pooling_args`)."""
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    rows = (np.arange(oh) * sh)[:, None, None, None] + np.arange(ph)[None, None, :, None]
    cols = (np.arange(ow) * sw)[None, :, None, None] + np.arange(pw)[None, None, None, :]
    flat = (rows * w + cols).reshape(oh, ow, ph * pw)
    gathered = np.take(np.reshape(x, [n, h * w, c]), flat.reshape(-1), axis=1)
    return np.reshape(gathered, [n, oh, ow, ph * pw, c])


@party_op("window_sum", program_step=True, session=False)
def _window_sum(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Sums over VALID pooling windows (average pooling before its division)."""
    x = ctx.get_additive(args.get("x"))
    pool, strides = pooling_args(ctx, x, args, "window_sum")
    return ctx.put(args.get("out"), componentwise(lambda t: ring_sum(windows(t, pool, strides), axis=3), x)), {}
