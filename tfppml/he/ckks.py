"""CKKS contexts and encrypted tensors over the SEAL-backed TensorFlow kernels.

A `CKKSContext` holds CKKS parameters and one key set (public, secret, relinearization and Galois keys, kept as
separate objects in C++).  `context.public_context()` is the same key set without the secret key: that is what
a server receives, and it can compute on ciphertexts but never decrypt them.

A `CipherTensor` is a `tf.experimental.ExtensionType` around a scalar `tf.variant` tensor holding the C++
cipher tensor (SEAL ciphertexts + shape + slot layout), with the static shape and layout as Python metadata:
it overloads `+ - * @`, passes through `tf.function` boundaries, and every op is a TF kernel.

Layouts (chosen at encryption):
    "vector": each row (last axis) of the tensor is one ciphertext, replicated through the slots; matmul by a
        plain matrix uses the baby-step/giant-step diagonal method (rotations).  One sample per ciphertext.
    "batch": one ciphertext per feature, samples along the slots (first axis up to slot_count); matmul is
        scalar multiply-adds without rotations: many samples per ciphertext (high throughput).

Example:
    >>> import numpy as np
    >>> from tfppml import he
    >>> ctx = he.CKKSContext()                              # N=8192, [60, 40, 40, 60], scale 2**40
    >>> x = np.array([[1.0, 2.0, 3.0]])
    >>> enc = ctx.encrypt(x)
    >>> y = (enc * enc + 1.0) @ np.ones((3, 2))            # two multiplicative levels
    >>> np.allclose(ctx.decrypt(y), (x * x + 1.0) @ np.ones((3, 2)), atol=1e-4)
    True
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfppml.he import _library
from tfppml.he.errors import ContextMismatchError, DepthExhaustedError, HEError, MissingKeyError

LAYOUTS = ("vector", "batch")
_DEFAULT_BITS = (60, 40, 40, 60)


def _translate(err: tf.errors.OpError, fn: str) -> Exception:
    """A TF kernel error as the matching tfppml/Python error (eager mode)."""
    message = f"{fn}: {err.message.split('}} ')[-1]}"
    if isinstance(err, tf.errors.FailedPreconditionError):
        if "depth exhausted" in err.message:
            return DepthExhaustedError(message)
        if "secret key" in err.message or "keys" in err.message:
            return MissingKeyError(message)
        return HEError(message)
    if isinstance(err, tf.errors.InvalidArgumentError):
        if "different CKKS contexts" in err.message or "another key set" in err.message:
            return ContextMismatchError(message)
        return ValueError(message)
    return HEError(message)


def _run(fn: str, op, *args, **kwargs):
    try:
        return op(*args, **kwargs)
    except tf.errors.OpError as err:
        raise _translate(err, fn) from None


def _check_layout(layout: str, fn: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"{fn}: argument `layout` must be one of {LAYOUTS}, got {layout!r}")


class CKKSContext:
    """CKKS parameters and a key set.

    Args:
        poly_modulus_degree: ring degree N (power of two, 1024..32768); N/2 slots per ciphertext.
        coeff_mod_bit_sizes: bit sizes of the coefficient-modulus primes: the first keeps the decrypted value's
            integer part, each middle prime is one multiplicative level (and must equal log2(global_scale)),
            the last is the special key-switching prime.
        global_scale: the encoding scale, a power of two equal to 2**(middle prime bits).
        galois_steps: rotation steps to make Galois keys for; None makes keys for all powers of two (any
            rotation then works, composed of several).  `compile_model(...).rotation_steps` lists what a model
            needs.
        power_of_two_rotations: also make the power-of-two keys when `galois_steps` is given (default: only
            when `galois_steps` is None).
        relin_keys: make relinearization keys (needed for cipher x cipher products).

    Raises:
        ValueError: for parameters SEAL deems below 128-bit security (the total of coeff_mod_bit_sizes above
            what N allows), a scale that does not match the middle primes, or malformed arguments.
        tfppml.he.errors.SealUnavailableError: if the HE kernels are not built.

    Example:
        >>> ctx = CKKSContext(8192, [60, 40, 40, 60], 2**40)
        >>> ctx.depth, ctx.slot_count
        (2, 4096)
    """

    def __init__(
        self,
        poly_modulus_degree: int = 8192,
        coeff_mod_bit_sizes: Sequence[int] = _DEFAULT_BITS,
        global_scale: float = 2.0**40,
        galois_steps: Sequence[int] | None = None,
        power_of_two_rotations: bool | None = None,
        relin_keys: bool = True,
        *,
        _handle: tf.Tensor | None = None,
    ) -> None:
        if _handle is not None:
            self._handle = _handle
            self._read_info()
            return
        fn = "CKKSContext"
        if isinstance(poly_modulus_degree, bool) or not isinstance(poly_modulus_degree, (int, np.integer)):
            raise TypeError(f"{fn}: argument `poly_modulus_degree` must be an int, got {poly_modulus_degree!r}")
        bits = list(coeff_mod_bit_sizes)
        if not bits or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bits):
            raise TypeError(f"{fn}: argument `coeff_mod_bit_sizes` must be a list of ints, got {coeff_mod_bit_sizes!r}")
        if not isinstance(global_scale, (int, float, np.integer, np.floating)) or not math.isfinite(global_scale):
            raise TypeError(f"{fn}: argument `global_scale` must be a finite number, got {global_scale!r}")
        steps = [] if galois_steps is None else [int(s) for s in galois_steps]
        pow2 = (galois_steps is None) if power_of_two_rotations is None else bool(power_of_two_rotations)
        self._handle = _run(
            fn,
            _library.ops().tfppml_ckks_context_create,
            tf.constant(float(global_scale), tf.float64),
            poly_modulus_degree=int(poly_modulus_degree),
            coeff_mod_bit_sizes=[int(b) for b in bits],
            galois_steps=steps,
            power_of_two_galois=pow2,
            relin_keys=bool(relin_keys),
        )
        self._read_info()

    def _read_info(self) -> None:
        info, scale, bits, steps = _library.ops().tfppml_ckks_context_info(self._handle)
        info = info.numpy()
        self._poly_modulus_degree = int(info[0])
        self._slot_count = int(info[1])
        self._depth = int(info[2])
        self._has_secret_key = bool(info[3])
        self._has_relin_keys = bool(info[4])
        self._has_galois_keys = bool(info[5])
        self._key_id = (int(info[6]) & (2**64 - 1)) | ((int(info[7]) & (2**64 - 1)) << 64)
        self._global_scale = float(scale.numpy())
        self._bits = [int(b) for b in bits.numpy()]
        self._steps = [int(s) for s in steps.numpy()]

    # -- properties ------------------------------------------------------------------------------------
    @property
    def handle(self) -> tf.Tensor:
        """The scalar tf.variant context handle the kernels take."""
        return self._handle

    @property
    def poly_modulus_degree(self) -> int:
        return self._poly_modulus_degree

    @property
    def coeff_mod_bit_sizes(self) -> list[int]:
        return list(self._bits)

    @property
    def global_scale(self) -> float:
        return self._global_scale

    @property
    def slot_count(self) -> int:
        return self._slot_count

    @property
    def depth(self) -> int:
        """Multiplicative depth of a fresh ciphertext (number of products in a chain)."""
        return self._depth

    @property
    def has_secret_key(self) -> bool:
        return self._has_secret_key

    @property
    def galois_steps(self) -> list[int]:
        """Rotation steps that have a Galois key of their own."""
        return list(self._steps)

    @property
    def key_id(self) -> int:
        """Random 128-bit id of the key set (ciphertexts of different key sets never mix)."""
        return self._key_id

    def __repr__(self) -> str:
        kind = "secret" if self._has_secret_key else "public"
        return (
            f"CKKSContext(poly_modulus_degree={self._poly_modulus_degree}, coeff_mod_bit_sizes={self._bits}, "
            f"global_scale=2**{math.log2(self._global_scale):g}, depth={self._depth}, {kind})"
        )

    # -- key material ----------------------------------------------------------------------------------
    def public_context(self) -> "CKKSContext":
        """The same key set without the secret key, for sending to a server.

        Returns:
            A CKKSContext that can encrypt and compute, but not decrypt.

        Example:
            >>> server_ctx = CKKSContext().public_context()
            >>> server_ctx.has_secret_key
            False
        """
        return CKKSContext(_handle=_run("public_context", _library.ops().tfppml_ckks_context_public, self._handle))

    def serialize(self, include_secret_key: bool = False) -> bytes:
        """Parameters and keys as bytes (the secret key only if asked for explicitly).

        Args:
            include_secret_key: also write the secret key (only for the key owner's own storage).

        Returns:
            The serialized context.

        Raises:
            MissingKeyError: if include_secret_key is True for a public context.
        """
        data = _run(
            "serialize",
            _library.ops().tfppml_ckks_context_serialize,
            self._handle,
            include_secret_key=bool(include_secret_key),
        )
        return data.numpy()

    @classmethod
    def deserialize(cls, data: bytes) -> "CKKSContext":
        """Reads what `serialize` wrote.

        Args:
            data: the bytes.

        Returns:
            The context (public unless the secret key was included).

        Raises:
            TypeError: if `data` is not bytes.
            ValueError: if the data is malformed, truncated, or holds parameters below 128-bit security.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"CKKSContext.deserialize: argument `data` must be bytes, got {type(data).__name__}")
        handle = _run(
            "CKKSContext.deserialize",
            _library.ops().tfppml_ckks_context_deserialize,
            tf.constant(bytes(data), tf.string),
        )
        return cls(_handle=handle)

    # -- encryption ------------------------------------------------------------------------------------
    def encrypt(self, values: Any, layout: str = "vector") -> "CipherTensor":
        """Encodes and encrypts a float tensor (any shape; a scalar becomes shape [1]).

        Args:
            values: array-like of real numbers.
            layout: "vector" (each row of the last axis is a ciphertext; for rotations, sums, one sample) or
                "batch" (one ciphertext per feature, samples of the first axis along the slots).

        Returns:
            The CipherTensor.

        Raises:
            ValueError: for an unknown layout, an empty tensor, or a row (vector) / batch larger than the
                slot count.
        """
        fn = "encrypt"
        _check_layout(layout, fn)
        array = tf.cast(tf.convert_to_tensor(values), tf.float64)
        if array.shape.rank == 0:
            array = tf.reshape(array, [1])
        shape = tuple(int(d) for d in array.shape)
        handle = _run(fn, _library.ops().tfppml_ckks_encrypt, self._handle, array, layout=layout)
        return CipherTensor(handle=handle, shape=shape, layout=layout)

    def decrypt(self, cipher: "CipherTensor") -> np.ndarray:
        """Decrypts and decodes to a float64 NumPy array of the cipher's shape.

        Raises:
            MissingKeyError: if this is a public context.
            ContextMismatchError: if the cipher belongs to another key set.
        """
        if not isinstance(cipher, CipherTensor):
            raise TypeError(f"decrypt: argument `cipher` must be a CipherTensor, got {type(cipher).__name__}")
        out = _run("decrypt", _library.ops().tfppml_ckks_decrypt, self._handle, cipher.handle)
        return out.numpy().reshape(cipher.shape)

    def deserialize_cipher(self, data: bytes) -> "CipherTensor":
        """Reads `CipherTensor.serialize()` bytes under this context's key set.

        Raises:
            ContextMismatchError: if the ciphertexts were made under another key set.
            ValueError: if the data is malformed or truncated.
        """
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"deserialize_cipher: argument `data` must be bytes, got {type(data).__name__}")
        handle = _run(
            "deserialize_cipher",
            _library.ops().tfppml_ckks_deserialize,
            self._handle,
            tf.constant(bytes(data), tf.string),
        )
        shape, info = _library.ops().tfppml_ckks_cipher_info(handle)
        return CipherTensor(
            handle=handle, shape=tuple(int(d) for d in shape.numpy()), layout=LAYOUTS[int(info.numpy()[0])]
        )


def _poly_depth(coeffs: Sequence[float]) -> int:
    coeffs = list(coeffs)
    while len(coeffs) > 1 and coeffs[-1] == 0:
        coeffs.pop()
    depth = 0
    for k in range(1, len(coeffs)):
        if coeffs[k] != 0:
            depth = max(depth, math.ceil(math.log2(k)) + (coeffs[k] != 1))
    return depth


class CipherTensor(tf.experimental.ExtensionType):
    """An encrypted tensor: a scalar tf.variant handle plus its static shape and slot layout.

    Operators: `a + b`, `a - b`, `a * b` (cipher or plain, plain operands broadcast to the cipher's shape),
    `-a`, `a @ W` (plain matrix), `a.sum()` (last axis, kept as size 1), `a.polyval(coeffs)`, `a.square()`,
    `a.rotate(k)`, `a.dot(v)`.  Each product costs one level of the context's depth.

    Example:
        >>> ctx = CKKSContext()
        >>> a = ctx.encrypt([1.0, 2.0, 3.0, 4.0])
        >>> float(ctx.decrypt((a * [2.0, 2.0, 2.0, 2.0]).sum())[0])    # doctest: +ELLIPSIS
        20.0...
    """

    handle: tf.Tensor
    shape: Tuple[int, ...]
    layout: str = "vector"

    __name__ = "tfppml.he.CipherTensor"
    # NumPy arrays on the left (`array + cipher`) defer to CipherTensor's reflected operators.
    __array_ufunc__ = None

    def _plain(self, other: Any, fn: str) -> tf.Tensor:
        value = tf.cast(tf.convert_to_tensor(other), tf.float64)
        try:
            np.broadcast_shapes(tuple(value.shape), self.shape)
            if np.broadcast_shapes(tuple(value.shape), self.shape) != tuple(self.shape):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{fn}: the plain operand of shape {tuple(value.shape)} does not broadcast to the cipher "
                f"tensor's shape {tuple(self.shape)}"
            ) from None
        return tf.broadcast_to(value, self.shape)

    def _like(self, handle: tf.Tensor, shape: Sequence[int] | None = None) -> "CipherTensor":
        return CipherTensor(handle=handle, shape=tuple(self.shape if shape is None else shape), layout=self.layout)

    def _binary(self, other: Any, fn: str, cipher_op: str, plain_op: str) -> "CipherTensor":
        ops = _library.ops()
        if isinstance(other, CipherTensor):
            if tuple(other.shape) != tuple(self.shape) or other.layout != self.layout:
                raise ValueError(
                    f"{fn}: cipher tensors of shapes {self.shape} ({self.layout}) and {other.shape} "
                    f"({other.layout}) cannot be combined: shapes and layouts must be equal"
                )
            return self._like(_run(fn, getattr(ops, cipher_op), self.handle, other.handle))
        return self._like(_run(fn, getattr(ops, plain_op), self.handle, self._plain(other, fn)))

    def __add__(self, other: Any) -> "CipherTensor":
        return self._binary(other, "add", "tfppml_ckks_add", "tfppml_ckks_add_plain")

    __radd__ = __add__

    def __sub__(self, other: Any) -> "CipherTensor":
        return self._binary(other, "sub", "tfppml_ckks_sub", "tfppml_ckks_sub_plain")

    def __rsub__(self, other: Any) -> "CipherTensor":
        return (-self) + other

    def __mul__(self, other: Any) -> "CipherTensor":
        return self._binary(other, "mul", "tfppml_ckks_mul", "tfppml_ckks_mul_plain")

    __rmul__ = __mul__

    def __neg__(self) -> "CipherTensor":
        return self._like(_run("neg", _library.ops().tfppml_ckks_neg, self.handle))

    def __matmul__(self, matrix: Any) -> "CipherTensor":
        """`self @ matrix` for a plain [n, m] matrix; [..., n] -> [..., m]; one level."""
        fn = "matmul"
        w = tf.cast(tf.convert_to_tensor(matrix), tf.float64)
        if w.shape.rank != 2 or int(w.shape[0]) != self.shape[-1]:
            raise ValueError(
                f"{fn}: argument `matrix` must have shape [{self.shape[-1]}, m] for a cipher tensor of shape "
                f"{self.shape}, got {tuple(w.shape)}"
            )
        if self.layout == "batch" and len(self.shape) < 2:
            raise ValueError(f"{fn}: a batch-layout cipher tensor needs rank >= 2 ([batch, n]), got {self.shape}")
        handle = _run(fn, _library.ops().tfppml_ckks_mat_mul_plain, self.handle, w)
        return self._like(handle, tuple(self.shape[:-1]) + (int(w.shape[1]),))

    def square(self) -> "CipherTensor":
        """Elementwise square; one level."""
        return self._like(_run("square", _library.ops().tfppml_ckks_square, self.handle))

    def sum(self) -> "CipherTensor":
        """Sum over the last axis, kept as a dimension of size 1 (vector layout: log2(n) rotations)."""
        return self._like(_run("sum", _library.ops().tfppml_ckks_sum, self.handle), tuple(self.shape[:-1]) + (1,))

    def dot(self, vector: Any) -> "CipherTensor":
        """Inner product of each row with a plain vector: (self * vector).sum(); one level."""
        return (self * vector).sum()

    def polyval(self, coeffs: Sequence[float]) -> "CipherTensor":
        """sum_k coeffs[k] * x**k elementwise (lowest degree first, like numpy.polynomial).

        Costs ceil(log2(degree)) + 1 levels (one less when the leading coefficients are 1).

        Raises:
            DepthExhaustedError: naming the levels needed when the ciphertext has fewer.
        """
        c = np.asarray(coeffs, dtype=np.float64).reshape(-1)
        if c.size == 0 or not np.all(np.isfinite(c)):
            raise ValueError(f"polyval: argument `coeffs` must be a non-empty list of finite numbers, got {coeffs!r}")
        return self._like(_run("polyval", _library.ops().tfppml_ckks_polyval, self.handle, tf.constant(c)))

    def rotate(self, steps: int) -> "CipherTensor":
        """Cyclic left rotation of each row by `steps` (vector layout, row length a power of two)."""
        return self._like(
            _run("rotate", _library.ops().tfppml_ckks_rotate, self.handle, tf.constant(int(steps), tf.int64))
        )

    def serialize(self) -> bytes:
        """The ciphertexts, shape and layout as bytes (read back with `context.deserialize_cipher`)."""
        return _run("serialize", _library.ops().tfppml_ckks_serialize, self.handle).numpy()

    @property
    def level(self) -> int:
        """Levels (multiplications) left."""
        return int(_library.ops().tfppml_ckks_cipher_info(self.handle)[1].numpy()[1])


def poly_depth(coeffs: Sequence[float]) -> int:
    """Levels `CipherTensor.polyval(coeffs)` consumes."""
    return _poly_depth(coeffs)
