"""SharedTensor: a driver-side handle to a value secret-shared among the three servers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from tfppml.mpc.protocol import ABY3


class SharedTensor:
    """A secret-shared tensor.  The driver holds only this handle; the shares live at the servers.

    Arithmetic operators run the protocol: `+ - *` elementwise (with NumPy broadcasting), `@` matrix product,
    unary `-`, indexing and slicing, `reshape`, `transpose`, `sum`, `mean`.  Operands may be other shared
    tensors of the same protocol or public arrays/numbers.

    Attributes:
        protocol: the `ABY3` instance that owns the shares.
        id: the name of the shares at the servers.
        shape: the static shape.
        frac_bits: fractional bits of the fixed-point value (0 for shared integers such as comparison bits).
        terms: True for a product left unshared in a program (`matmul(..., reshare=False)`): each server holds one
            term of an additive sharing, so it can only be added to, reshaped, passed to relu and returned as the
            output.
        bound: a public upper bound on |value| (in real units, at `frac_bits`), None if unknown (a handle made
            by hand).  Set from the plaintext at share time, from the declared `value_range` for a program's
            input, and propagated by every operation, which refuses a result whose bound could wrap the ring
            (`FixedPointOverflowError`); `reveal` checks the revealed values against it.
    """

    __array_priority__ = 1000  # so that `ndarray + shared` defers to SharedTensor.__radd__

    def __init__(
        self,
        protocol: "ABY3",
        share_id: str,
        shape: Sequence[int],
        frac_bits: int,
        *,
        terms: bool = False,
        bound: float | None = None,
        norms: dict[str, float] | None = None,
    ) -> None:
        self.protocol = protocol
        self.id = share_id
        self.shape = tuple(int(d) for d in shape)
        self.frac_bits = frac_bits
        self.terms = terms
        self.bound = None if bound is None else float(bound)
        # Tighter public bounds for products, known when the plaintext was at hand (shared or public values):
        # "rows" max sum of |x| along the last axis, "cols" along axis -2, "filters" (rank 4, HWIO) per
        # output channel over the window.  Dropped by every operation.
        self._norms = norms or {}

    def __repr__(self) -> str:
        extra = ", terms=True" if self.terms else ""
        return f"SharedTensor(id={self.id!r}, shape={self.shape}, frac_bits={self.frac_bits}{extra})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a scalar SharedTensor")
        return self.shape[0]

    def __add__(self, other: Any) -> "SharedTensor":
        return self.protocol.add(self, other)

    def __radd__(self, other: Any) -> "SharedTensor":
        return self.protocol.add(other, self)

    def __sub__(self, other: Any) -> "SharedTensor":
        return self.protocol.sub(self, other)

    def __rsub__(self, other: Any) -> "SharedTensor":
        return self.protocol.sub(other, self)

    def __mul__(self, other: Any) -> "SharedTensor":
        return self.protocol.mul(self, other)

    def __rmul__(self, other: Any) -> "SharedTensor":
        return self.protocol.mul(other, self)

    def __matmul__(self, other: Any) -> "SharedTensor":
        return self.protocol.matmul(self, other)

    def __rmatmul__(self, other: Any) -> "SharedTensor":
        return self.protocol.matmul(other, self)

    def __neg__(self) -> "SharedTensor":
        return self.protocol.neg(self)

    def __getitem__(self, index: Any) -> "SharedTensor":
        return self.protocol.getitem(self, index)

    def reshape(self, *shape: Any) -> "SharedTensor":
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = tuple(shape[0])
        return self.protocol.reshape(self, shape)

    def transpose(self, perm: Sequence[int] | None = None) -> "SharedTensor":
        return self.protocol.transpose(self, perm)

    @property
    def T(self) -> "SharedTensor":  # noqa: N802 - NumPy's name
        return self.protocol.transpose(self, None)

    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> "SharedTensor":
        return self.protocol.reduce_sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> "SharedTensor":
        return self.protocol.reduce_mean(self, axis=axis, keepdims=keepdims)

    def reveal(self) -> Any:
        """Reconstructs the value for the driver (see `ABY3.reveal`)."""
        return self.protocol.reveal(self)

    def free(self) -> None:
        """Deletes the shares at the servers now (otherwise they go when the handle is garbage-collected)."""
        self.protocol.free(self)

    def __del__(self) -> None:
        protocol = getattr(self, "protocol", None)
        if protocol is not None:
            protocol._release_later(self.id)

    # Comparisons and truth values of shared data would have to be revealed: refuse them explicitly.
    def __bool__(self) -> bool:
        raise TypeError("the truth value of a SharedTensor is secret; reveal it first")
