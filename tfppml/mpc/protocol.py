"""ABY3: the driver side of the three-party replicated-secret-sharing protocol.

The driver (a data owner, model owner or client) holds `SharedTensor` handles; the shares live at three
non-colluding, semi-honest servers (honest majority).  Each method sends one command to the three parties,
which run it among themselves (see `tfppml.mpc.runtime`) and answer with the result's shape; only `reveal`
returns data, and only to whom it names.

Example:
    >>> import numpy as np, tfppml
    >>> prot = tfppml.mpc.ABY3()                       # in-process back end: three parties as objects
    >>> x = prot.share(np.array([[1.0, -2.0]]))
    >>> w = prot.share(np.array([[0.5], [0.25]]), owner="server1")
    >>> prot.reveal(tfppml.mpc.relu(x @ w + 1.0))
    array([[1.]])

Accuracy (16 fractional bits): encoding rounds to within 2**-17; each truncated product adds at most
2**-16; a product of shared values inherits the inputs' rounding, so for matmul
|error| <= sum_k (|x_ik| + |w_kj|) * 2**-17 + 2**-16 (+ the tiny per-element failure chance of the
probabilistic truncation described in `FixedPointEncoding`).

Range (see `tfppml.mpc.encoding`): a truncation of a product z fails with probability |z| * 2**(2f) / 2**64,
so `frac_bits` is refused unless value_range * 2**(2f) / 2**64 <= max_failure (defaults 2**10 and 2**-20:
f <= 17).  Every SharedTensor carries a public bound on |value|; an operation whose result could reach 2**62
ring units (e.g. a matmul with k * bx * by >= 2**(62 - 2f)) raises `FixedPointOverflowError` before any
party works, and `reveal` withholds values outside the bound (a failed truncation) with the same error.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfppml import ops
from tfppml.errors import FixedPointOverflowError, ProtocolError
from tfppml.mpc.backends import InProcessBackend, NetworkBackend
from tfppml.mpc.encoding import RING_LIMIT, RING_LIMIT_BITS, FixedPointEncoding
from tfppml.mpc.tensor import SharedTensor
from tfppml.ops.prg import new_seed

Operand = Any  # SharedTensor, NumPy array, tf.Tensor, list or Python number


def _pair_arg(value: Any, name: str, fn: str) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{fn}: argument `{name}` must be a positive int or a pair of them, got {value!r}")
    return [int(v) for v in value]


def _encode_index(index: Any) -> list[dict]:
    items = index if isinstance(index, tuple) else (index,)
    encoded = []
    for item in items:
        if isinstance(item, slice):
            for part in (item.start, item.stop, item.step):
                if part is not None and (isinstance(part, bool) or not isinstance(part, (int, np.integer))):
                    raise TypeError(f"SharedTensor indexing: slice bounds must be ints or None, got {item!r}")
            encoded.append({"t": "s", "start": _opt_int(item.start), "stop": _opt_int(item.stop), "step": _opt_int(item.step)})
        elif item is Ellipsis:
            encoded.append({"t": "e"})
        elif item is None:
            encoded.append({"t": "n"})
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            encoded.append({"t": "i", "v": int(item)})
        else:
            raise TypeError(
                f"SharedTensor indexing: supported indices are ints, slices, ... and None, got {item!r}"
            )
    return encoded


def divides_by_truncation(area: int) -> bool:
    """Whether `avg_pool2d` divides a window sum of `area` elements by truncation alone (a power of two), so that
    a product feeding it may be left untruncated (the Keras converter relies on the same rule)."""
    return area > 0 and area & (area - 1) == 0


def _check_terms(x: SharedTensor, fn: str, arg: str, terms_ok: bool) -> SharedTensor:
    """x, unless it holds a product's unshared terms and `fn` cannot take them (see `ABY3.matmul`)."""
    if x.terms and not terms_ok:
        raise ValueError(
            f"{fn}: argument `{arg}` holds a product's unshared terms (reshare=False): it can only be added to, "
            "reshaped, passed to relu and returned as a program's output"
        )
    return x


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


# --- public bounds on |value| (see tfppml.mpc.encoding: range and failure rules) -----------------------------
def _sum_bounds(*bounds: float | None) -> float | None:
    return None if any(b is None for b in bounds) else float(sum(bounds))


def _product_bound(*factors: float | None) -> float | None:
    return None if any(f is None for f in factors) else float(np.prod([float(f) for f in factors]))


def _ulp(bound: float | None, frac_bits: int) -> float | None:
    """`bound` plus one unit in the last place at `frac_bits` (a truncation rounds by at most that)."""
    return None if bound is None else bound + 2.0**-frac_bits


def _plain_bounds(array: np.ndarray, frac_bits: int) -> tuple[float, dict[str, float]]:
    """Bound on |encoded value| of a plaintext array (rounding included) and its product norms."""
    absolute = np.abs(np.asarray(array, dtype=np.float64))
    if frac_bits and not np.issubdtype(np.asarray(array).dtype, np.integer):
        absolute = absolute + 2.0 ** -(frac_bits + 1)
    if not absolute.size:
        return 0.0, {}
    norms = {}
    if absolute.ndim >= 2:
        norms["rows"] = float(np.max(np.sum(absolute, axis=-1)))
        norms["cols"] = float(np.max(np.sum(absolute, axis=-2)))
    if absolute.ndim == 4:
        norms["filters"] = float(np.max(np.sum(absolute, axis=(0, 1, 2))))
    return float(np.max(absolute)), norms


def _check_bound(what: str, bound: float | None, frac_bits: int, hint: str = "") -> None:
    """Refuses a result whose public bound could reach the ring's limit (it could wrap silently)."""
    if bound is None or bound * 2.0**frac_bits < RING_LIMIT:
        return
    raise FixedPointOverflowError(
        f"{what}: the result could reach |value| = {bound:.6g} (a public bound from the operands' ranges), "
        f"{bound * 2.0**frac_bits:.3g} ring units at {frac_bits} fractional bits, beyond 2**{RING_LIMIT_BITS}: "
        f"the ring Z_2^64 would wrap silently and give a wrong answer.{hint} Scale the values down, use fewer "
        "fractional bits, or split the computation"
    )


class ABY3:
    """Three-party computation on secret-shared fixed-point tensors (2-out-of-3 replicated sharing, Z_2^64).

    Args:
        cluster: None for the in-process back end (three party objects in this process, for tests and
            experiments), or a started `tfppml.net` cluster (three server processes over gRPC with mutual TLS).
        frac_bits: fixed-point fractional bits (default 16).
        max_bits: bound on encoded magnitudes, see `FixedPointEncoding`.
        value_range: declared magnitude of the values and products the computation handles (default 2**10),
            and the bound assumed for a served program's input (a query's input must stay within it).
        max_failure: tolerated probability that a truncation fails, per element (default 2**-20).  `frac_bits`
            is refused unless value_range * 2**(2 * frac_bits) / 2**64 <= max_failure (see
            `tfppml.mpc.encoding`); the defaults allow frac_bits <= 17.
        timeout: seconds a party waits for a peer before failing (in-process back end; a cluster has its own).
        identity: the certificate identity this driver presents to a cluster ("driver", "model_owner",
            "client", ...); shared tensors belong to the identity that made them and only it may use them.  Only
            the cluster's `owners` may set up and compute; any other identity may only `query` served programs.
        setup: run the set-up (fresh correlated-randomness keys at the servers).  A client that only queries
            served programs passes False (the queries run under the program owner's set-up).

    Raises:
        ValueError: for bad arguments.
    """

    def __init__(
        self,
        cluster: Any = None,
        frac_bits: int = 16,
        *,
        max_bits: int = 42,
        value_range: float = 2.0**10,
        max_failure: float = 2.0**-20,
        timeout: float = 30.0,
        identity: str = "driver",
        setup: bool = True,
    ) -> None:
        if not isinstance(setup, bool):
            raise TypeError(f"ABY3: argument `setup` must be a bool, got {type(setup).__name__}")
        try:
            self.encoding = FixedPointEncoding(frac_bits, max_bits, value_range, max_failure)
        except ValueError as err:
            raise ValueError(f"ABY3: {err}") from None
        if cluster is None:
            self.backend = InProcessBackend(timeout=timeout)
        else:
            self.backend = NetworkBackend(cluster, identity)
        self.party_names: list[str] = list(self.backend.names)
        self._session = secrets.token_hex(8)
        self._counter = itertools.count()
        self._release: list[str] = []
        self._release_lock = threading.Lock()
        self._programs: dict[str, list[SharedTensor]] = {}  # name -> the stored tensors its program reads
        # The set-up id names this instance's correlated randomness at the servers; every command carries it.
        self._setup_id = secrets.token_hex(16)
        if setup:
            self._run("setup", {"setup_id": self._setup_id})

    @property
    def frac_bits(self) -> int:
        return self.encoding.frac_bits

    def close(self) -> None:
        """Releases the back end (stops in-process parties; a cluster is stopped by its owner)."""
        self.backend.close()

    def __enter__(self) -> "ABY3":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------------------
    def _new_id(self, prefix: str = "t") -> str:
        return f"{self._session}.{prefix}{next(self._counter)}"

    def _run(self, op: str, args: dict, tensors: Sequence[dict] | None = None) -> list[tuple[dict, dict]]:
        with self._release_lock:
            release, self._release = self._release, []
        meta = {"op": op, "op_id": self._new_id("op"), "args": args, "session": self._setup_id}
        if release:
            meta["release"] = release  # handles garbage-collected since the last command: freed on the way
        return self.backend.run(meta, tensors)

    def _release_later(self, share_id: str) -> None:
        try:
            with self._release_lock:
                self._release.append(share_id)
        except Exception:  # interpreter shutdown: nothing left to free
            pass

    def _result(
        self,
        op: str,
        args: dict,
        shape: Sequence[int],
        frac_bits: int,
        tensors=None,
        *,
        terms: bool = False,
        bound: float | None = None,
        norms: dict | None = None,
    ) -> SharedTensor:
        _check_bound(f"ABY3 {op}", bound, frac_bits)  # before any party works
        out = self._new_id()
        answers = self._run(op, {**args, "out": out}, tensors)
        shapes = {tuple(meta.get("shape", ())) for meta, _ in answers}
        expected = tuple(int(d) for d in shape)
        if shapes != {expected}:
            raise ProtocolError(f"{op}: the parties report result shapes {sorted(shapes)}, expected {expected}")
        return SharedTensor(self, out, expected, frac_bits, terms=terms, bound=bound, norms=norms)

    def _party_index(self, name: str, arg: str, fn: str) -> int:
        if name not in self.party_names:
            raise ValueError(f"{fn}: argument `{arg}` must name one of the parties {self.party_names}, got {name!r}")
        return self.party_names.index(name)

    def _check_own(self, x: Any, fn: str, arg: str, *, terms_ok: bool = False) -> SharedTensor:
        if not isinstance(x, SharedTensor):
            raise TypeError(f"{fn}: argument `{arg}` must be a SharedTensor, got {type(x).__name__}")
        if x.protocol is not self:
            raise ValueError(f"{fn}: argument `{arg}` belongs to another protocol instance")
        return _check_terms(x, fn, arg, terms_ok)

    def _operand(
        self, value: Operand, fn: str, arg: str, *, frac_bits: int | None = None, terms_ok: bool = False
    ) -> SharedTensor:
        """A shared operand, or a public value turned into the trivial sharing (v, 0, 0) at the servers.

        Public integers (Python ints, integer arrays) are kept as integers (0 fractional bits) so that
        multiplying by them needs no truncation; public floats are encoded with `frac_bits`.
        """
        if isinstance(value, SharedTensor):
            return self._check_own(value, fn, arg, terms_ok=terms_ok)
        if isinstance(value, (tf.Tensor, tf.Variable)):
            value = value.numpy()
        array = np.asarray(value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise TypeError(f"{fn}: argument `{arg}` must be a SharedTensor or numeric array, got {type(value).__name__}")
        if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
            bits = 0 if frac_bits is None else frac_bits
        else:
            bits = self.frac_bits if frac_bits is None else frac_bits
        encoded = self._encode(array, bits, fn, arg)
        bound, norms = _plain_bounds(array, bits)
        return self._result(
            "public", {}, array.shape, bits, [{"value": encoded.numpy()}] * 3, bound=bound, norms=norms
        )

    def _encode(self, array: np.ndarray, frac_bits: int, fn: str, arg: str) -> tf.Tensor:
        encoding = FixedPointEncoding(frac_bits, self.encoding.max_bits)
        try:
            return encoding.encode(array.astype(np.float64), arg=arg)
        except ValueError as err:
            raise ValueError(f"{fn}: {err}") from None

    def _scale_up(self, x: SharedTensor, frac_bits: int) -> SharedTensor:
        """x with `frac_bits` fractional bits (exact and local: a multiplication by 2**d)."""
        if x.frac_bits == frac_bits:
            return x
        return self._result(
            "scale_up", {"x": x.id, "bits": frac_bits - x.frac_bits}, x.shape, frac_bits, terms=x.terms,
            bound=x.bound,
        )

    def _align(self, x: SharedTensor, y: SharedTensor) -> tuple[SharedTensor, SharedTensor]:
        """Brings two operands to the same number of fractional bits."""
        frac = max(x.frac_bits, y.frac_bits)
        return self._scale_up(x, frac), self._scale_up(y, frac)

    @staticmethod
    def _broadcast(fn: str, x: SharedTensor, y: SharedTensor) -> tuple[int, ...]:
        try:
            return tuple(np.broadcast_shapes(x.shape, y.shape))
        except ValueError:
            raise ValueError(f"{fn}: operands of shapes {x.shape} and {y.shape} cannot be broadcast together") from None

    # --- sharing and revealing --------------------------------------------------------------------------
    def share(self, value: Any, owner: str | None = None, *, integer: bool = False) -> SharedTensor:
        """Secret-shares a value among the three servers.

        Args:
            value: array-like of reals (or integers with integer=True).
            owner: None: this process (the driver) splits the value itself and sends each server its pair,
                so the value never leaves the driver in the clear.  A party name ("server0"...): that server
                holds the value and shares it (it is sent to that server only).
            integer: share exact integers (0 fractional bits) instead of fixed point.

        Returns:
            The SharedTensor.

        Raises:
            ValueError: for NaN/Inf or values outside the encoding range, or an unknown owner.
            TypeError: for non-numeric values.
        """
        fn = "ABY3.share"
        if isinstance(value, SharedTensor):
            return self._check_own(value, fn, "value")
        bits = 0 if integer else self.frac_bits
        array = self._numeric(value, fn, "value", integer=integer)
        bound, norms = _plain_bounds(array, bits)
        if owner is None:
            shape, tensors = self._split(array, fn, "value", bits, integer=integer)
            return self._result("input", {}, shape, bits, tensors, bound=bound, norms=norms)
        encoded = self._encode(array, bits, fn, "value")
        j = self._party_index(owner, "owner", fn)
        tensors = [{"value": encoded.numpy()} if i == j else {} for i in range(3)]
        shape = array.shape
        return self._result(
            "input_from", {"owner": j, "shape": list(shape)}, shape, bits, tensors, bound=bound, norms=norms
        )

    @staticmethod
    def _numeric(value: Any, fn: str, arg: str, *, integer: bool) -> np.ndarray:
        if isinstance(value, (tf.Tensor, tf.Variable)):
            value = value.numpy()
        array = np.asarray(value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise TypeError(f"{fn}: argument `{arg}` must be numeric, got {type(value).__name__} of {array.dtype}")
        if integer and not np.issubdtype(array.dtype, np.integer) and not np.all(np.round(array) == array):
            raise ValueError(f"{fn}: argument `{arg}` must hold integers when integer=True")
        return array

    def _split(
        self, value: Any, fn: str, arg: str, bits: int, *, integer: bool = False
    ) -> tuple[tuple[int, ...], list[dict]]:
        """Encodes `value` and splits it here into replicated shares: (shape, each server's {"a", "b"})."""
        array = self._numeric(value, fn, arg, integer=integer)
        encoded = self._encode(array, bits, fn, arg).numpy()
        shape = array.shape
        # Two uniformly random terms from fresh OS-seeded ChaCha20, the third makes the sum (NumPy's uint64
        # arithmetic wraps modulo 2**64).
        x0 = ops.prg_uniform_numpy(new_seed(), list(shape))
        x1 = ops.prg_uniform_numpy(new_seed(), list(shape))
        terms = [x0, x1, np.subtract(np.subtract(encoded, x0), x1)]
        return shape, [{"a": terms[i], "b": terms[(i + 1) % 3]} for i in range(3)]

    def reveal(self, x: SharedTensor, to: str | None = None) -> np.ndarray | None:
        """Reconstructs a shared value.

        Args:
            x: the shared tensor.
            to: None: the driver (this process) gets the value; a party name: only that server learns it
                (it keeps the plaintext), and this returns None.

        Returns:
            A float64 array (int64 for shared integers) when revealed to the driver, else None.
        """
        fn = "ABY3.reveal"
        x = self._check_own(x, fn, "x")
        if to is not None:
            j = self._party_index(to, "to", fn)
            self._run("reveal", {"x": x.id, "to": j, "out": self._new_id("plain")})
            return None
        answers = self._run("reveal", {"x": x.id})
        total = answers[0][1]["term"]
        for _, tensors in answers[1:]:
            total = ops.ring_add(total, tensors["term"])
        if x.frac_bits == 0:
            values = np.asarray(total).view(np.int64).reshape(x.shape)
        else:
            values = self.encoding.decode(total, x.frac_bits).reshape(x.shape)
        self._check_revealed(x, values)
        return values

    @staticmethod
    def _check_revealed(x: SharedTensor, values: np.ndarray) -> None:
        """Wrap and failure detection: revealed values must lie within the public bound x carries.

        A failed probabilistic truncation is off by 2**(64 - d) ring units, and a wrapped sum by 2**64: both
        land far outside any bound the computation guarantees (unless the bound itself is that large)."""
        if x.bound is None or not values.size:
            return
        limit = (x.bound + (2.0**-x.frac_bits if x.frac_bits else 0.0)) * (1 + 2**-40)
        magnitude = np.abs(values.astype(np.float64))
        outside = magnitude > limit
        count = int(np.count_nonzero(outside))
        if count:
            index = int(np.argmax(magnitude))
            err = FixedPointOverflowError(
                f"ABY3.reveal: {count} of {values.size} revealed values lie outside the public bound "
                f"|value| <= {x.bound:.6g} that the computation guarantees (largest {values.reshape(-1)[index]:.6g} "
                f"at flat index {index}): a probabilistic truncation failed (probability |v| * 2**(2f) / 2**64 per "
                "product, see tfppml.mpc.encoding) or a value wrapped around the ring; the result is withheld"
            )
            err.count, err.size = count, int(values.size)
            raise err

    def communication_stats(self, reset: bool = False) -> dict[str, dict[str, int]]:
        """Messages and bytes each server sent and messages it received (since the last reset).

        A server receives at most one message per peer per communication round, mostly one per round; the
        one-round truncation and the ReLU's bit injection bring some servers two messages in a round.
        """
        answers = self._run("stats", {"reset": bool(reset)})
        return {name: meta["stats"] for name, (meta, _) in zip(self.party_names, answers)}

    def free(self, x: SharedTensor) -> None:
        """Deletes a shared tensor's shares at the servers."""
        x = self._check_own(x, "ABY3.free", "x", terms_ok=True)
        users = sorted(name for name, pinned in self._programs.items() if any(t is x for t in pinned))
        if users:
            raise ValueError(
                f"ABY3.free: argument `x` ({x.id}) is read by the registered program(s) {users}; it cannot be "
                "freed while they are registered"
            )
        self._run("free", {"ids": [x.id]})

    # --- arithmetic -------------------------------------------------------------------------------------
    def add(self, x: Operand, y: Operand) -> SharedTensor:
        """x + y (at least one of them shared), broadcasting."""
        return self._linear("add", x, y)

    def sub(self, x: Operand, y: Operand) -> SharedTensor:
        """x - y (at least one of them shared), broadcasting."""
        return self._linear("sub", x, y)

    def _linear(self, op: str, x: Operand, y: Operand) -> SharedTensor:
        fn = f"ABY3.{op}"
        like = x if isinstance(x, SharedTensor) else y
        if not isinstance(like, SharedTensor):
            raise TypeError(f"{fn}: at least one operand must be a SharedTensor")
        xs = self._operand(x, fn, "x", frac_bits=like.frac_bits, terms_ok=True)
        ys = self._operand(y, fn, "y", frac_bits=like.frac_bits, terms_ok=True)
        xs, ys = self._align(xs, ys)
        shape = self._broadcast(fn, xs, ys)
        return self._result(
            op, {"x": xs.id, "y": ys.id}, shape, xs.frac_bits, terms=xs.terms or ys.terms,
            bound=_sum_bounds(xs.bound, ys.bound),
        )

    def neg(self, x: SharedTensor) -> SharedTensor:
        x = self._check_own(x, "ABY3.neg", "x")
        return self._result("neg", {"x": x.id}, x.shape, x.frac_bits, bound=x.bound)

    # A program's builder sets this: only a recorded program may leave a product unshared (reshare=False).
    _recording = False

    def _product(
        self,
        op: str,
        fn: str,
        x: SharedTensor,
        y: SharedTensor,
        shape,
        extra=None,
        truncate: bool = True,
        reshare: bool = True,
        bound: float | None = None,
        hint: str = "",
    ) -> SharedTensor:
        """`bound`: a public bound on |product| (before truncation, checked at the summed fractional bits)."""
        if not isinstance(reshare, bool):
            raise TypeError(f"{fn}: argument `reshare` must be a bool, got {type(reshare).__name__}")
        total = x.frac_bits + y.frac_bits
        _check_bound(fn, bound, total, hint)
        if not reshare:
            if not self._recording:
                raise ValueError(
                    f"{fn}: reshare=False is only for programs (see ABY3.program): its unshared terms can only "
                    "be added to, reshaped, passed to relu and returned to the querying client"
                )
            args = {"x": x.id, "y": y.id, "trunc": 0, "terms": True, **(extra or {})}
            return self._result(op, args, shape, total, terms=True, bound=bound)
        trunc = total - self.frac_bits if truncate and total > self.frac_bits else 0
        args = {"x": x.id, "y": y.id, "trunc": trunc, **(extra or {})}
        return self._result(op, args, shape, total - trunc, bound=_ulp(bound, total - trunc) if trunc else bound)

    def mul(self, x: Operand, y: Operand) -> SharedTensor:
        """Elementwise x * y with broadcasting; public factors may be numbers or arrays."""
        fn = "ABY3.mul"
        xs, ys = self._operand(x, fn, "x"), self._operand(y, fn, "y")
        return self._product("mul", fn, xs, ys, self._broadcast(fn, xs, ys), bound=_product_bound(xs.bound, ys.bound))

    def matmul(self, x: Operand, y: Operand, *, reshare: bool = True) -> SharedTensor:
        """Matrix product [..., m, k] @ [..., k, n] (batch dimensions broadcast).

        reshare=False (only while recording a program) skips the product's one message: each server keeps its
        term of an additive sharing of the untruncated product (at the operands' summed fractional bits),
        re-randomised by a zero-sharing.  Such a result can only be added to (e.g. a bias), reshaped, passed to
        `relu` (which truncates it) and returned: a query returns the terms to the client as they are."""
        fn = "ABY3.matmul"
        xs, ys = self._operand(x, fn, "x"), self._operand(y, fn, "y")
        if xs.ndim < 2 or ys.ndim < 2:
            raise ValueError(f"{fn}: operands must have rank >= 2, got shapes {xs.shape} and {ys.shape}")
        if xs.shape[-1] != ys.shape[-2]:
            raise ValueError(
                f"{fn}: inner dimensions differ: x has shape {xs.shape}, y has shape {ys.shape} "
                f"({xs.shape[-1]} != {ys.shape[-2]})"
            )
        try:
            batch = np.broadcast_shapes(xs.shape[:-2], ys.shape[:-2])
        except ValueError:
            raise ValueError(f"{fn}: batch dimensions of {xs.shape} and {ys.shape} cannot be broadcast") from None
        k = xs.shape[-1]
        bound = _product_bound(k, xs.bound, ys.bound)
        if bound is not None:
            # Tighter when an operand's plaintext was known: |sum_k x_ik y_kj| <= bx * max_j sum_k |y_kj|.
            if "cols" in ys._norms:
                bound = min(bound, xs.bound * ys._norms["cols"])
            if "rows" in xs._norms:
                bound = min(bound, xs._norms["rows"] * ys.bound)
        hint = ""
        if xs.bound and ys.bound:
            limit = RING_LIMIT / 2.0 ** (xs.frac_bits + ys.frac_bits) / (xs.bound * ys.bound)
            hint = f" With |x| <= {xs.bound:.4g} and |y| <= {ys.bound:.4g} the inner dimension may be at most {int(limit):d} (it is {k})."
        return self._product(
            "matmul", fn, xs, ys, (*batch, xs.shape[-2], ys.shape[-1]), reshare=reshare, bound=bound, hint=hint
        )

    def conv2d(
        self,
        x: Operand,
        filters: Operand,
        strides: Any = 1,
        padding: str = "VALID",
        *,
        truncate: bool = True,
        reshare: bool = True,
    ) -> SharedTensor:
        """2-D convolution as tf.nn.conv2d: x is NHWC, filters HWIO; padding "VALID" or "SAME".

        truncate=False leaves the result at the sum of the operands' fractional bits (no interaction beyond the
        product's one message): for a following step that truncates anyway, e.g. `avg_pool2d`, which then
        truncates the smaller pooled tensor once instead of the convolution's output.  reshare=False: as for
        `matmul` (only in programs: the result is unshared terms).
        """
        fn = "tfppml.mpc.conv2d"
        xs, ws = self._operand(x, fn, "x"), self._operand(filters, fn, "filters")
        if xs.ndim != 4 or ws.ndim != 4:
            raise ValueError(f"{fn}: `x` must be NHWC and `filters` HWIO (rank 4), got {xs.shape} and {ws.shape}")
        if xs.shape[3] != ws.shape[2]:
            raise ValueError(f"{fn}: `x` has {xs.shape[3]} channels but `filters` expect {ws.shape[2]}")
        sh, sw = _pair_arg(strides, "strides", fn)
        if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME"):
            raise ValueError(f"{fn}: argument `padding` must be 'VALID' or 'SAME', got {padding!r}")
        padding = padding.upper()
        n, h, w, _ = xs.shape
        kh, kw, _, cout = ws.shape
        if padding == "SAME":
            oh, ow = -(-h // sh), -(-w // sw)
        else:
            if h < kh or w < kw:
                raise ValueError(f"{fn}: filters {kh}x{kw} are larger than the input {h}x{w} with VALID padding")
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        extra = {"strides": [sh, sw], "padding": padding}
        if not isinstance(truncate, bool):
            raise TypeError(f"{fn}: argument `truncate` must be a bool, got {type(truncate).__name__}")
        bound = _product_bound(kh * kw * xs.shape[3], xs.bound, ws.bound)
        if bound is not None and "filters" in ws._norms:
            bound = min(bound, xs.bound * ws._norms["filters"])  # per output: bx * sum of |w| over its window
        return self._product(
            "conv2d", fn, xs, ws, (n, oh, ow, cout), extra, truncate=truncate, reshare=reshare, bound=bound
        )

    def truncate(self, x: SharedTensor, bits: int) -> SharedTensor:
        """Divides by 2**bits, lowering the fractional bits of x by `bits` (interactive)."""
        x = self._check_own(x, "ABY3.truncate", "x")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= x.frac_bits:
            raise ValueError(f"ABY3.truncate: argument `bits` must be in [1, {x.frac_bits}], got {bits!r}")
        return self._result(
            "truncate", {"x": x.id, "bits": bits}, x.shape, x.frac_bits - bits, bound=_ulp(x.bound, x.frac_bits - bits)
        )

    # --- shape and reductions (local) -------------------------------------------------------------------
    def reshape(self, x: SharedTensor, shape: Sequence[int]) -> SharedTensor:
        x = self._check_own(x, "ABY3.reshape", "x", terms_ok=True)
        try:
            requested = [int(d) for d in shape]
            new_shape = np.broadcast_to(np.empty(()), x.shape).reshape(tuple(requested)).shape
        except (ValueError, TypeError) as err:
            raise ValueError(f"ABY3.reshape: cannot reshape {x.shape} to {tuple(shape)}: {err}") from None
        # The requested shape (with any -1) goes to the servers, so a program stays valid for other batch sizes.
        return self._result(
            "reshape", {"x": x.id, "shape": requested}, new_shape, x.frac_bits, terms=x.terms, bound=x.bound
        )

    def transpose(self, x: SharedTensor, perm: Sequence[int] | None = None) -> SharedTensor:
        x = self._check_own(x, "ABY3.transpose", "x")
        order = list(reversed(range(x.ndim))) if perm is None else [int(p) for p in perm]
        if sorted(order) != list(range(x.ndim)):
            raise ValueError(f"ABY3.transpose: argument `perm` must permute {x.ndim} axes, got {perm!r}")
        return self._result(
            "transpose", {"x": x.id, "perm": order}, [x.shape[p] for p in order], x.frac_bits, bound=x.bound
        )

    def getitem(self, x: SharedTensor, index: Any) -> SharedTensor:
        x = self._check_own(x, "SharedTensor indexing", "x")
        encoded = _encode_index(index)
        try:
            shape = np.broadcast_to(np.empty(()), x.shape)[index].shape
        except IndexError as err:
            raise IndexError(f"SharedTensor indexing: {err} (shape {x.shape})") from None
        return self._result("getitem", {"x": x.id, "index": encoded}, shape, x.frac_bits, bound=x.bound)

    def concat(self, xs: Sequence[SharedTensor], axis: int = 0) -> SharedTensor:
        fn = "tfppml.mpc.concat"
        if not xs:
            raise ValueError(f"{fn}: argument `xs` must not be empty")
        parts = [self._check_own(x, fn, "xs") for x in xs]
        frac = max(p.frac_bits for p in parts)
        parts = [self._scale_up(p, frac) for p in parts]
        try:
            shape = np.concatenate([np.broadcast_to(np.empty(()), p.shape) for p in parts], axis=axis).shape
        except (ValueError, np.AxisError) as err:
            raise ValueError(f"{fn}: {err}") from None
        bounds = [p.bound for p in parts]
        bound = None if any(b is None for b in bounds) else max(bounds)
        return self._result("concat", {"xs": [p.id for p in parts], "axis": int(axis)}, shape, frac, bound=bound)

    def reduce_sum(self, x: SharedTensor, axis: Any = None, keepdims: bool = False) -> SharedTensor:
        x = self._check_own(x, "ABY3.reduce_sum", "x")
        axes = self._axes(x, axis, "ABY3.reduce_sum")
        shape = np.sum(np.broadcast_to(np.empty(()), x.shape), axis=tuple(axes), keepdims=keepdims).shape
        count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        return self._result(
            "sum", {"x": x.id, "axis": axes, "keepdims": bool(keepdims)}, shape, x.frac_bits,
            bound=_product_bound(count, x.bound),
        )

    def reduce_mean(self, x: SharedTensor, axis: Any = None, keepdims: bool = False) -> SharedTensor:
        x = self._check_own(x, "ABY3.reduce_mean", "x")
        axes = self._axes(x, axis, "ABY3.reduce_mean")
        count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        return self.mul(self.reduce_sum(x, axes, keepdims), 1.0 / max(count, 1))

    @staticmethod
    def _axes(x: SharedTensor, axis: Any, fn: str) -> list[int]:
        if axis is None:
            return list(range(x.ndim))
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        out = []
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not -x.ndim <= a < x.ndim:
                raise ValueError(f"{fn}: argument `axis` must hold ints in [{-x.ndim}, {x.ndim - 1}], got {axis!r}")
            out.append(int(a) % x.ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"{fn}: argument `axis` repeats an axis: {axis!r}")
        return out

    # --- non-linear -------------------------------------------------------------------------------------
    def nonnegative(self, x: SharedTensor) -> SharedTensor:
        """Shared integer [x >= 0] (1 or 0) by secure comparison (MSB extraction)."""
        x = self._check_own(x, "ABY3.nonnegative", "x")
        return self._result("nonnegative", {"x": x.id}, x.shape, 0, bound=1.0)

    def relu(self, x: SharedTensor) -> SharedTensor:
        """Exact ReLU, max(x, 0), through secure comparison: tensors of up to runtime.FSS_RELU_MAX_SIZE
        elements by function secret sharing (server0 deals comparison keys; 2 rounds), larger ones by MSB
        extraction with a binary adder (10 rounds, far fewer bytes).

        An input with more fractional bits than the protocol's (an untruncated product, or a program's
        product left unshared with reshare=False) is brought down to them in the same step: for small tensors
        the ReLU's own opening does the truncation, which saves the product's round.
        """
        x = self._check_own(x, "tfppml.mpc.relu", "x", terms_ok=True)
        extra = max(x.frac_bits - self.frac_bits, 0)
        args = {"x": x.id, "trunc": extra} if extra else {"x": x.id}
        bound = _ulp(x.bound, x.frac_bits - extra) if extra else x.bound
        return self._result("relu", args, x.shape, x.frac_bits - extra, bound=bound)

    def _pool_args(self, fn: str, x: SharedTensor, pool_size: Any, strides: Any, padding: str) -> tuple:
        if x.ndim != 4:
            raise ValueError(f"{fn}: argument `x` must be NHWC (rank 4), got shape {x.shape}")
        pool = _pair_arg(pool_size, "pool_size", fn)
        stride = pool if strides is None else _pair_arg(strides, "strides", fn)
        if not isinstance(padding, str) or padding.upper() != "VALID":
            raise ValueError(f"{fn}: argument `padding` must be 'VALID' (the Keras default), got {padding!r}")
        n, h, w, c = x.shape
        if pool[0] > h or pool[1] > w:
            raise ValueError(f"{fn}: pool {pool} is larger than the input {h}x{w}")
        shape = (n, (h - pool[0]) // stride[0] + 1, (w - pool[1]) // stride[1] + 1, c)
        return pool, stride, shape

    def avg_pool2d(self, x: SharedTensor, pool_size: Any = 2, strides: Any = None, padding: str = "VALID") -> SharedTensor:
        """Average pooling (NHWC, VALID): a local window sum, then one truncation.

        A window of 2**k elements divides by truncating k more bits (one truncation round, no product); other
        windows multiply by the public 1 / window size.  An input with more fractional bits than the protocol's
        (an untruncated product) is brought down to them in the same truncation.  A program's unshared product
        (reshare=False) is averaged without a truncation, at log2(window) more fractional bits: only `relu` and
        what else takes unshared terms can follow.
        """
        fn = "tfppml.mpc.avg_pool2d"
        x = self._check_own(x, fn, "x", terms_ok=True)
        pool, stride, shape = self._pool_args(fn, x, pool_size, strides, padding)
        area = pool[0] * pool[1]
        if x.terms and not divides_by_truncation(area):
            raise ValueError(
                f"{fn}: argument `x` holds a product's unshared terms; only windows of a power-of-two size "
                f"can average them (by truncation), got {pool}"
            )
        # A program's unshared product (see `matmul`): the window sum of 2**k terms is the average at k more
        # fractional bits, left for the ReLU that follows to truncate.
        frac = x.frac_bits + (area.bit_length() - 1 if x.terms else 0)
        # Terms: the window sum read at k more fractional bits is the average (bound bx); else the sum.
        summed = self._result(
            "window_sum", {"x": x.id, "pool": pool, "strides": stride}, shape, frac, terms=x.terms,
            bound=x.bound if x.terms else _product_bound(area, x.bound),
        )
        if x.terms:
            return summed
        extra = max(x.frac_bits - self.frac_bits, 0)
        if divides_by_truncation(area):
            bits = extra + area.bit_length() - 1
            if bits == 0:
                return summed
            return self._result(
                "truncate", {"x": summed.id, "bits": bits}, shape, x.frac_bits - extra,
                bound=_ulp(x.bound, x.frac_bits - extra),
            )
        if extra:
            summed = self.truncate(summed, extra)
        return self.mul(summed, 1.0 / area)

    def max_pool2d(self, x: SharedTensor, pool_size: Any = 2, strides: Any = None, padding: str = "VALID") -> SharedTensor:
        """Max pooling (NHWC, VALID) by a tournament of secure comparisons."""
        fn = "tfppml.mpc.max_pool2d"
        x = self._check_own(x, fn, "x")
        pool, stride, shape = self._pool_args(fn, x, pool_size, strides, padding)
        return self._result(
            "max_pool2d", {"x": x.id, "pool": pool, "strides": stride}, shape, x.frac_bits, bound=x.bound
        )

    def argmax(self, x: SharedTensor, axis: int = -1) -> SharedTensor:
        """Shared index of the maximum along `axis` (a shared integer; reveal gives int64)."""
        fn = "tfppml.mpc.argmax"
        x = self._check_own(x, fn, "x")
        (a,) = self._axes(x, axis, fn)
        if a != x.ndim - 1:
            perm = [d for d in range(x.ndim) if d != a] + [a]
            x = self.transpose(x, perm)
        return self._result("argmax", {"x": x.id}, x.shape[:-1], 0, bound=float(max(x.shape[-1] - 1, 0)))

    # --- served programs --------------------------------------------------------------------------------
    def program(self, input_shape: Sequence[int], frac_bits: int | None = None) -> tuple["ProgramBuilder", SharedTensor]:
        """Starts recording a program: returns a builder and its symbolic input of `input_shape`.

        Operations on the symbolic input (and on this protocol's shared weights) are recorded, not run; public
        constants become shared constants owned by this driver.  Finish with `register_program`.
        """
        builder = ProgramBuilder(self)
        builder.input_shape = tuple(int(d) for d in input_shape)
        bits = self.frac_bits if frac_bits is None else frac_bits
        # The input is the client's, unseen here: its declared range bounds everything the program computes.
        return builder, SharedTensor(builder, "$input", input_shape, bits, bound=self.encoding.value_range)

    def register_program(self, name: str, output: SharedTensor, *, batch_size: int | None = None) -> None:
        """Stores the program that computes `output` (recorded with `program`) at the servers as `name`.

        Args:
            name: the program's name.
            output: the recorded output; the servers return its terms to each querying client.
            batch_size: the batch every query must have (a Keras model's declared batch size); None: any batch,
                each row counted against the serving period's quota.  Queries must match the recorded input's
                other dimensions.
        """
        fn = "ABY3.register_program"
        builder = output.protocol
        if not isinstance(builder, ProgramBuilder) or builder.real is not self:
            raise ValueError(f"{fn}: argument `output` must come from this protocol's program()")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"{fn}: argument `batch_size` must be None or an int >= 1, got {batch_size!r}")
        steps = builder.steps_for(output)
        input_shape = [-1 if batch_size is None else batch_size, *builder.input_shape[1:]]
        self._run("register_program", {"name": name, "steps": steps, "output_frac_bits": output.frac_bits,
                                       "input_shape": input_shape})
        # The servers' program reads these stored tensors (weights, constants) by id: while it is registered
        # their handles must not be garbage-collected, which would free them under it.
        self._programs[name] = list(builder.constants)

    def serve(self, name: str, num_requests: int) -> None:
        """Lets clients run program `name` on `num_requests` input rows (a new serving period, ending the current
        one): the quota counts rows, so one query of 100 rows spends 100."""
        if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
            raise ValueError(f"ABY3.serve: argument `num_requests` must be an int >= 1 (input rows), got {num_requests!r}")
        self._run("serve", {"name": name, "num_requests": num_requests})

    def stop_serving(self, name: str) -> int:
        """Ends the serving period of `name` (queries already admitted finish); returns the rows answered."""
        return min(meta["served"] for meta, _ in self._run("stop_serving", {"name": name}))

    def program_status(self, name: str) -> dict[str, Any]:
        """{"serving", "quota", "started", "served"} of the current serving period in input rows (the least
        advanced server's view; serving only if all three serve)."""
        answers = self._run("program_status", {"name": name})
        status: dict[str, Any] = {key: min(meta[key] for meta, _ in answers) for key in ("quota", "started", "served")}
        status["serving"] = all(meta["serving"] for meta, _ in answers)
        return status

    def _check_query_input(self, fn: str, bound: float | None) -> None:
        """A served program's overflow checks assumed |input| <= value_range (see `program`)."""
        if bound is not None and bound > self.encoding.value_range:
            raise ValueError(
                f"{fn}: argument `x` holds values up to |x| = {bound:.6g}, outside the declared value_range "
                f"{self.encoding.value_range:g} that served programs assume for their input (their products "
                "could wrap or fail their truncation undetected); declare a larger value_range on both sides"
            )

    def query(self, name: str, x: SharedTensor | Any) -> np.ndarray:
        """Runs served program `name` on this driver's input and reveals the output to this driver only.

        Args:
            name: the served program.
            x: a SharedTensor of this driver's, or an array: then it is secret-shared here and each server's
                pair travels with the query (one call per server instead of share + query + free; the servers
                delete it with the intermediates).
        """
        fn = "ABY3.query"
        if isinstance(x, SharedTensor):
            x = self._check_own(x, fn, "x")
            self._check_query_input(fn, x.bound)
            answers = self._run("query", {"name": name, "input": x.id})
        else:
            array = self._numeric(x, fn, "x", integer=False)
            self._check_query_input(fn, _plain_bounds(array, 0)[0] if array.size else 0.0)
            answers = self._run("query", {"name": name}, self._split(array, fn, "x", self.frac_bits)[1])
        shapes = {tuple(meta["shape"]) for meta, _ in answers}
        if len(shapes) != 1:
            raise ProtocolError(f"ABY3.query: the servers disagree on the output shape: {sorted(shapes)}")
        total = answers[0][1]["term"]
        for _, tensors in answers[1:]:
            total = ops.ring_add(total, tensors["term"])
        frac_bits = answers[0][0]["frac_bits"]
        if frac_bits == 0:
            return np.asarray(total).view(np.int64)
        return self.encoding.decode(total, frac_bits)


class ProgramBuilder(ABY3):
    """Records ABY3 operations as program steps instead of running them (see `ABY3.program`)."""

    def __init__(self, real: ABY3) -> None:  # noqa: D107 - deliberately not calling ABY3.__init__
        self.real = real
        self.encoding = real.encoding
        self.party_names = real.party_names
        self.steps: list[dict] = []

    _recording = True

    def _result(
        self,
        op: str,
        args: dict,
        shape: Sequence[int],
        frac_bits: int,
        tensors=None,
        *,
        terms: bool = False,
        bound: float | None = None,
        norms: dict | None = None,
    ) -> SharedTensor:
        if tensors:
            raise ProtocolError(f"a program step cannot carry data ({op})")
        _check_bound(f"ABY3 {op} (program step)", bound, frac_bits)  # at recording time: no query can wrap
        out = f"${len(self.steps)}"
        self.steps.append({"op": op, "args": {**args, "out": out}})
        return SharedTensor(self, out, shape, frac_bits, terms=terms, bound=bound, norms=norms)

    def _check_own(self, x: Any, fn: str, arg: str, *, terms_ok: bool = False) -> SharedTensor:
        if not isinstance(x, SharedTensor):
            raise TypeError(f"{fn}: argument `{arg}` must be a SharedTensor, got {type(x).__name__}")
        if x.protocol is not self and x.protocol is not self.real:
            raise ValueError(f"{fn}: argument `{arg}` belongs to another protocol instance")
        x = _check_terms(x, fn, arg, terms_ok)
        if x.protocol is self.real:
            self.constants.append(x)  # a stored tensor the program reads: pinned while it is registered
        return x

    def _operand(
        self, value: Operand, fn: str, arg: str, *, frac_bits: int | None = None, terms_ok: bool = False
    ) -> SharedTensor:
        if isinstance(value, SharedTensor):
            return self._check_own(value, fn, arg, terms_ok=terms_ok)
        # Public constants become real shared constants of the owner, referenced by the program.
        constant = self.real._operand(value, fn, arg, frac_bits=frac_bits)
        self.constants.append(constant)
        return constant

    @property
    def constants(self) -> list[SharedTensor]:
        if "_constants" not in self.__dict__:
            self._constants: list[SharedTensor] = []
        return self._constants

    def _release_later(self, share_id: str) -> None:
        pass  # symbolic values hold nothing at the servers

    def _run(self, op: str, args: dict, tensors=None):
        raise ProtocolError(f"{op} cannot run while a program is being recorded")

    def steps_for(self, output: SharedTensor) -> list[dict]:
        if not output.id.startswith("$") or int(output.id[1:]) != len(self.steps) - 1:
            raise ValueError("the program's output must be the last recorded operation")
        return list(self.steps)
