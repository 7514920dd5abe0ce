"""Provenance of stored objects: how an operation's result label follows from its operands' labels.

The labels are computed from shapes and operations only, never from values.  A data set's rows stay
*certified* (one individual each) only while every step keeps them apart; see `tfppml.remote.policy.Label`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfppml.remote.policy import Label

__all__ = ["StoredObject", "elementwise_label", "matmul_label", "matmul_shape", "paired_label", "unary_label"]


@dataclass
class StoredObject:
    """An object a worker holds for an identity: a tensor or a compiled model, with its label."""

    owner: str
    kind: str  # "tensor" or "model"
    label: Label
    value: np.ndarray | None = None
    model: Any = None  # a `tfppml.remote.model_ops.SharedModel`: the built Keras model this object runs on
    #: A model object's own weights (its Keras model may be shared with the objects fit from it).
    weights: list[np.ndarray] | None = None
    model_spec: dict[str, Any] | None = None
    #: Bytes counted against the owner's max_held_bytes (None: the value's bytes; 0 for a view of a data set).
    held: int | None = None
    #: A model's `tfppml.remote.sizing.ModelSize`, from its configuration.
    size: Any = None
    #: Requests computing with this object now, and whether it was deleted meanwhile (its bytes are uncounted
    #: when the last of them ends; both under the service's lock).
    users: int = field(default=0, repr=False, compare=False)
    freed: bool = field(default=False, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        if self.held is not None:
            return self.held
        return int(self.value.nbytes) if self.value is not None else 0


def matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise ValueError(
            f"`matmul` needs 2-D operands [n, k] @ [k, m], got {list(a)} (`a`) and {list(b)} (`b`)"
        )
    return (a[0], b[1])


#: Unary functions that keep row-level values a linear function of the data.
LINEAR_UNARY = frozenset({"neg"})


def unary_label(x: StoredObject, fn: str) -> Label:
    """The label of ``fn(x)``: the rows stay certified; any function but negation makes the values non-linear."""
    return x.label if fn in LINEAR_UNARY else x.label.transformed()


def elementwise_label(operands: list[StoredObject], shape: tuple[int, ...], fn: str) -> Label:
    """Joins operand labels; the row axis stays certified only if every row-level operand has the same certified
    rows along the result's leading axis and no other operand varies along that axis.

    The result stays linear in the data for add and sub, and for mul and truediv when only one operand (the
    numerator, for truediv) holds row-level values: a product of two row-level values is a power of the data
    (power sums separate rows that share a value), and ``c / x`` is not linear in `x`.
    """
    label = operands[0].label
    for other in operands[1:]:
        label = label.join(other.label)
    if not label.raw:
        return label
    raw = [o.label.raw != frozenset() for o in operands]
    if fn == "mul" and all(raw) or fn == "truediv" and raw[-1]:
        label = label.transformed()
    raw_rows = {o.label.rows for o in operands if o.label.raw}
    certified = (
        len(raw_rows) == 1
        and None not in raw_rows
        and len(shape) >= 1
        and shape[0] == next(iter(raw_rows))
        and all(o.value.ndim == len(shape) for o in operands if o.label.raw)
        and all(o.value.ndim < len(shape) or o.value.shape[0] == 1 for o in operands if not o.label.raw)
    )
    return label.with_rows(next(iter(raw_rows)) if certified else None)


def paired_label(x: StoredObject, y: StoredObject) -> Label:
    """Label of per-row pairs (x[i], y[i]) of two tensors with the same row count (evaluate, fit)."""
    label = x.label.join(y.label)
    rows = {o.label.rows for o in (x, y) if o.label.raw}
    if len(rows) == 1 and None not in rows and all(o.label.raw for o in (x, y)):
        return label.with_rows(next(iter(rows)))
    return label.with_rows(None)


def matmul_label(a: StoredObject, b: StoredObject) -> Label:
    label = a.label.join(b.label)
    # x @ W keeps x's rows when W holds no row-level data; anything @ raw contracts over the raw rows with
    # caller-chosen weights (which could select one row), so it is row-level data without certified rows.
    if a.label.raw and a.label.rows is not None and not b.label.raw:
        return label.with_rows(a.label.rows)
    return label.with_rows(None)
