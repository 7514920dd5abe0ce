"""Steps that exchange messages: products, truncation, comparisons, max pooling and argmax."""

from __future__ import annotations

import numpy as np

from tfppml import ops
from tfppml.errors import ProtocolError
from tfppml.mpc.context import OpContext
from tfppml.mpc.dispatch import party_op
from tfppml.mpc.party_ops.args import bool_arg, choice_arg, int_arg, window_arg
from tfppml.mpc.party_ops.local import MAX_WINDOW, broadcast_shape, pooling_args, windows
from tfppml.mpc.shares import NO_PAIR, Pair, Share, ShareKind, add, as_array, pair, public_term, radd, rmul, sub

#: Matrix products up to this many multiply-adds run through ctypes on the calling thread (no TF dispatch, which
#: cost more than a query row times a layer's weights); larger ones through the TF kernel on all cores.
MATMUL_NUMPY_MAX_MACS = 1 << 21


def _matmul(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if u.ndim == 2 and v.ndim == 2 and u.shape[0] * u.shape[1] * v.shape[1] <= MATMUL_NUMPY_MAX_MACS:
        return ops.ring_matmul_numpy(u, v)
    return as_array(ops.ring_matmul(u, v))


def _mul_product(ctx: OpContext, x: Share, y: Share, args: dict):
    broadcast_shape(ctx, x, y, "mul")
    return rmul


def _matmul_product(ctx: OpContext, x: Share, y: Share, args: dict):
    if len(x.shape) < 2 or len(y.shape) < 2 or x.shape[-1] != y.shape[-2]:
        raise ProtocolError(f"matmul: needs [..., m, k] and [..., k, n] operands, got shapes {x.shape} and {y.shape}")
    try:
        batch = list(np.broadcast_shapes(tuple(x.shape[:-2]), tuple(y.shape[:-2])))
    except ValueError:
        raise ProtocolError(f"matmul: the batch dimensions of {x.shape} and {y.shape} do not broadcast") from None
    ctx.check_elements([*batch, x.shape[-2], y.shape[-1]], "matmul")
    return _matmul


def _conv2d_product(ctx: OpContext, x: Share, y: Share, args: dict):
    strides = window_arg(args, "strides", MAX_WINDOW)
    padding = choice_arg(args, "padding", ("SAME", "VALID"))
    if len(x.shape) != 4 or len(y.shape) != 4 or x.shape[3] != y.shape[2]:
        raise ProtocolError(
            f"conv2d: needs an [N, H, W, C] input and an [h, w, C, D] filter, got shapes {x.shape} and {y.shape}"
        )
    n, h, w, _ = x.shape
    kh, kw, _, d = y.shape
    if padding == "VALID":
        if kh > h or kw > w:
            raise ProtocolError(f"conv2d: a {kh}x{kw} filter does not fit a {h}x{w} input without padding")
        oh, ow = (h - kh) // strides[0] + 1, (w - kw) // strides[1] + 1
    else:
        oh, ow = -(-h // strides[0]), -(-w // strides[1])
    ctx.check_elements([n, oh, ow, d], "conv2d")
    ctx.check_elements([n, oh, ow, kh * kw * x.shape[3]], "conv2d's patches")
    return lambda u, v: as_array(ops.ring_conv2d(u, v, strides=strides, padding=padding))


def _product_op(name, product_of):
    def run(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
        x, y = ctx.get(args.get("x")), ctx.get(args.get("y"))
        trunc = int_arg(args, "trunc", 0, 62)
        terms = bool_arg(args, "terms")
        if terms and trunc:
            raise ProtocolError(f"{name}: argument 'terms' cannot go with truncation (trunc {trunc})")
        product = product_of(ctx, x, y, args)
        if terms:
            # No reshare: each party keeps its term (a program's last layer returns it to the client as is).
            z = ctx.product_term(pair(x), pair(y), "mul", product)
            return ctx.put(args.get("out"), Share(z, NO_PAIR, ShareKind.TERMS)), {}
        z = ctx.multiply(pair(x), pair(y), "mul", trunc, product)
        return ctx.put(args.get("out"), Share(*z)), {}

    run.__doc__ = f"The {name} product of two shared tensors, optionally truncated, or left as unshared terms."
    return run


party_op("mul", program_step=True)(_product_op("mul", _mul_product))
party_op("matmul", program_step=True)(_product_op("matmul", _matmul_product))
party_op("conv2d", program_step=True)(_product_op("conv2d", _conv2d_product))


@party_op("truncate", program_step=True)
def _truncate(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Divides by 2**bits (probabilistic truncation), e.g. after a product with a public constant."""
    x = ctx.get(args.get("x"))
    bits = int_arg(args, "bits", 1, 62)
    z = radd(x.a, ctx.zero_share("alpha", x.shape))
    return ctx.put(args.get("out"), Share(*ctx.reshare(z, "trunc", bits))), {}


@party_op("nonnegative", program_step=True)
def _nonnegative(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """[x >= 0] as a shared 0/1 integer."""
    x = ctx.get(args.get("x"))
    return ctx.put(args.get("out"), Share(*ctx.nonnegative(pair(x), "ge"))), {}


@party_op("relu", program_step=True)
def _relu(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """max(x, 0), then divided by 2**trunc (default 0).  x may be a product's unshared terms: the truncation
    (and the reshare it needs) then happens inside the ReLU, which for small tensors saves the round."""
    x = ctx.get_additive(args.get("x"))
    trunc = int_arg(args, "trunc", 0, 62) if "trunc" in args else 0
    relu = ctx.relu(pair(x), "relu", trunc, terms=x.kind is ShareKind.TERMS)
    return ctx.put(args.get("out"), Share(*relu)), {}


def _tree_max(ctx: OpContext, x: Pair, axis: int, label: str, index: Pair | None = None) -> tuple[Pair, Pair | None]:
    """Max (and optionally the matching index values) along `axis` by a tournament of pairwise comparisons."""
    level = 0
    while x[0].shape[axis] > 1:
        k = x[0].shape[axis]
        half = k // 2

        def split(p: Pair) -> tuple[Pair, Pair, Pair | None]:
            parts = [np.split(t, [half, 2 * half], axis=axis) for t in p]
            rest = (parts[0][2], parts[1][2]) if k % 2 else None
            return (parts[0][0], parts[1][0]), (parts[0][1], parts[1][1]), rest

        left, right, rest = split(x)
        d = sub(left, right)
        if index is None:
            # max(l, r) = r + ReLU(l - r).
            x = add(right, ctx.relu(d, f"{label}/l{level}"))
        else:
            bit = ctx.nonnegative(d, f"{label}/l{level}/ge")
            ileft, iright, irest = split(index)
            di = sub(ileft, iright)
            stacked_bit = (np.stack([bit[0], bit[0]]), np.stack([bit[1], bit[1]]))
            stacked = (np.stack([d[0], di[0]]), np.stack([d[1], di[1]]))
            sel = ctx.multiply(stacked_bit, stacked, f"{label}/l{level}/sel", 0)
            x = add(right, (sel[0][0], sel[1][0]))
            index = add(iright, (sel[0][1], sel[1][1]))
            if irest is not None:
                index = tuple(np.concatenate([index[j], irest[j]], axis) for j in range(2))
        if rest is not None:
            x = tuple(np.concatenate([x[j], rest[j]], axis) for j in range(2))
        level += 1
    return x, index


@party_op("max_pool2d", program_step=True)
def _max_pool2d(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """The maximum over VALID pooling windows, by a tournament of ReLUs."""
    x = ctx.get(args.get("x"))
    pool, strides = pooling_args(ctx, x, args, "max_pool2d")
    w = (windows(x.a, pool, strides), windows(x.b, pool, strides))
    m, _ = _tree_max(ctx, w, 3, "max")
    return ctx.put(args.get("out"), Share(np.squeeze(m[0], 3), np.squeeze(m[1], 3))), {}


@party_op("argmax", program_step=True)
def _argmax(ctx: OpContext, args: dict, tensors: dict) -> tuple[dict, dict]:
    """Index of the maximum along the last axis, as a shared integer (among ties, any one of them)."""
    x = pair(ctx.get(args.get("x")))
    if x[0].ndim < 1 or x[0].shape[-1] < 1:
        raise ProtocolError(f"argmax: needs a tensor with a non-empty last axis, got shape {list(x[0].shape)}")
    k = x[0].shape[-1]
    positions = np.broadcast_to(np.arange(k, dtype=np.uint64), x[0].shape)
    index = public_term(ctx.i, positions, x[0])
    _, idx = _tree_max(ctx, x, len(x[0].shape) - 1, "argmax", index)
    return ctx.put(args.get("out"), Share(np.squeeze(idx[0], -1), np.squeeze(idx[1], -1))), {}
