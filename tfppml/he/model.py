"""Encrypted inference: a Keras model of Dense layers and polynomial activations as a CKKS program.

`compile_model(keras_model)` reads the weights once and returns an `HEModel` that runs on CipherTensors with the
model owner's plaintext weights; it reports the multiplicative depth and the rotation steps (Galois keys) the
client's context must provide, and suggests CKKS parameters for that depth.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from tfppml import he
    >>> model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, activation=tf.math.square),
    ...                              tf.keras.layers.Dense(2)])
    >>> program = he.compile_model(model)
    >>> program.depth
    3
    >>> ctx = he.CKKSContext(**program.context_parameters())          # the client's key set
    >>> x = np.random.rand(5, 4)
    >>> y = ctx.decrypt(program(ctx.public_context().encrypt(x, layout="batch")))
    >>> bool(np.allclose(y, model(x).numpy(), atol=1e-3))
    True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from tfppml.he.ckks import LAYOUTS, CipherTensor, CKKSContext, poly_depth


class Polynomial:
    """A polynomial activation usable in Keras (plaintext) and compiled to `CipherTensor.polyval` (encrypted).

    Args:
        coeffs: coefficients, lowest degree first.
        max_error: the stated approximation error when made by `fit` (None otherwise).

    Example:
        >>> relu = Polynomial.fit(lambda x: np.maximum(x, 0), interval=(-4, 4), degree=2)
        >>> round(relu.max_error, 2) < 0.6
        True
    """

    def __init__(self, coeffs: Sequence[float], max_error: float | None = None) -> None:
        c = np.asarray(coeffs, dtype=np.float64).reshape(-1)
        if c.size == 0 or not np.all(np.isfinite(c)):
            raise ValueError(f"Polynomial: argument `coeffs` must be non-empty and finite, got {coeffs!r}")
        self.coeffs = c
        self.max_error = max_error
        self.__name__ = f"polynomial{len(c) - 1}"

    @classmethod
    def fit(cls, fn: Callable[[np.ndarray], np.ndarray], interval: tuple[float, float], degree: int) -> "Polynomial":
        """Least-squares fit of `fn` on Chebyshev nodes of `interval`; `max_error` is measured on 10,001 points."""
        lo, hi = interval
        if not lo < hi:
            raise ValueError(f"Polynomial.fit: argument `interval` must be (lo, hi) with lo < hi, got {interval!r}")
        nodes = np.cos(np.pi * (np.arange(256) + 0.5) / 256) * (hi - lo) / 2 + (hi + lo) / 2
        coeffs = np.polynomial.polynomial.polyfit(nodes, fn(nodes), degree)
        grid = np.linspace(lo, hi, 10001)
        error = float(np.max(np.abs(np.polynomial.polynomial.polyval(grid, coeffs) - fn(grid))))
        return cls(coeffs, max_error=error)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        result = tf.zeros_like(x) + float(self.coeffs[-1])
        for c in self.coeffs[-2::-1]:
            result = result * x + float(c)
        return result

    def __repr__(self) -> str:
        return f"Polynomial({self.coeffs.tolist()}, max_error={self.max_error})"


def square(x: tf.Tensor) -> tf.Tensor:
    """The square activation (x * x), HE-friendly: one level."""
    return tf.math.square(x)


# (Sigmoid approximation of degree 3 on [-8, 8], as used by CryptoNets-style models; error stated below.)
SIGMOID3 = Polynomial.fit(lambda x: 1.0 / (1.0 + np.exp(-x)), (-8.0, 8.0), 3)
RELU2 = Polynomial.fit(lambda x: np.maximum(x, 0.0), (-4.0, 4.0), 2)


def _activation_step(activation: Any, where: str) -> tuple | None:
    if activation is None or activation is tf.keras.activations.linear:
        return None
    if isinstance(activation, Polynomial):
        return ("poly", activation.coeffs)
    if activation is square or activation is tf.math.square or getattr(activation, "__name__", "") == "square":
        return ("square",)
    name = getattr(activation, "__name__", repr(activation))
    raise ValueError(
        f"compile_model: {where} has activation {name!r}, which has no CKKS form; use tfppml.he.square, "
        "tf.math.square, 'linear', or a tfppml.he.Polynomial (e.g. tfppml.he.Polynomial.fit(fn, interval, degree))"
    )


def _baby_steps(m_pad: int) -> int:
    b = 1
    while b * b < m_pad:
        b *= 2
    return b


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass
class HEModel:
    """A compiled encrypted-inference program (plaintext weights, encrypted activations).

    Attributes:
        steps: the program: ("matmul", W), ("add", b), ("square",), ("poly", coeffs).
        input_dim / output_dim: feature sizes.
        depth: multiplicative depth the client's context must provide.
    """

    steps: list
    input_dim: int
    output_dim: int

    @property
    def depth(self) -> int:
        total = 0
        for step in self.steps:
            if step[0] in ("matmul", "square"):
                total += 1
            elif step[0] == "poly":
                total += poly_depth(step[1])
        return total

    @property
    def rotation_steps(self) -> list[int]:
        """Galois steps the vector layout needs (the batch layout needs none)."""
        steps: set[int] = set()
        for step in self.steps:
            if step[0] != "matmul":
                continue
            n, m = step[1].shape
            m_pad = _next_pow2(m)
            d = max(_next_pow2(n), m_pad)
            baby = _baby_steps(m_pad)
            steps.update(range(1, baby))
            steps.update(g * baby for g in range(1, m_pad // baby))
            s = m_pad
            while s < d:
                steps.add(s)
                s *= 2
        return sorted(steps)

    def context_parameters(self, layout: str = "vector") -> dict:
        """CKKSContext arguments with 128-bit security and enough depth (and Galois keys) for this model."""
        if layout not in LAYOUTS:
            raise ValueError(f"context_parameters: argument `layout` must be one of {LAYOUTS}, got {layout!r}")
        depth = self.depth
        if depth <= 2:
            params = dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=[60] + [40] * depth + [60], global_scale=2.0**40)
        elif depth == 3:
            params = dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=[55, 35, 35, 35, 55], global_scale=2.0**35)
        elif 120 + 40 * depth <= 438:
            params = dict(poly_modulus_degree=16384, coeff_mod_bit_sizes=[60] + [40] * depth + [60], global_scale=2.0**40)
        else:
            params = dict(poly_modulus_degree=32768, coeff_mod_bit_sizes=[60] + [40] * depth + [60], global_scale=2.0**40)
        if layout == "vector":
            params["galois_steps"] = self.rotation_steps
        else:
            params["galois_steps"] = []
        return params

    def __call__(self, x: CipherTensor) -> CipherTensor:
        """Runs the program on an encrypted batch [batch, input_dim] (either layout) or vector [input_dim]."""
        if not isinstance(x, CipherTensor):
            raise TypeError(f"HEModel: argument `x` must be a CipherTensor, got {type(x).__name__}")
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"HEModel: input must have {self.input_dim} features (last axis), got shape {x.shape}")
        for step in self.steps:
            if step[0] == "matmul":
                x = x @ step[1]
            elif step[0] == "add":
                x = x + step[1]
            elif step[0] == "square":
                x = x.square()
            else:
                x = x.polyval(step[1])
        return x

    def predict(self, context: CKKSContext, x: Any, layout: str = "batch") -> np.ndarray:
        """Encrypts x under `context`, runs the program, decrypts (a local convenience for tests/benchmarks)."""
        return context.decrypt(self(context.encrypt(np.asarray(x, dtype=np.float64), layout=layout)))


def compile_model(model: tf.keras.Model) -> HEModel:
    """Turns a Keras model of Dense layers and HE-friendly activations into an HEModel.

    Supported layers: InputLayer, Flatten (the client encrypts flat vectors), Dropout (inference: identity),
    Dense (any units, bias or not) with activation linear / square / Polynomial, and Activation layers of
    those kinds.

    Args:
        model: a built tf.keras Sequential or functional model with a single chain of layers.

    Returns:
        The HEModel; see `.depth`, `.rotation_steps` and `.context_parameters()`.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: naming the first layer or activation without a CKKS form.
    """
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"compile_model: argument `model` must be a tf.keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("compile_model: the model must be built (call it once or give it an Input)")
    steps: list = []
    input_dim = output_dim = None
    for layer in model.layers:
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        if isinstance(layer, (tf.keras.layers.InputLayer, tf.keras.layers.Flatten, tf.keras.layers.Dropout)):
            continue
        if isinstance(layer, tf.keras.layers.Dense):
            kernel = layer.kernel.numpy().astype(np.float64)
            if input_dim is None:
                input_dim = kernel.shape[0]
            steps.append(("matmul", kernel))
            if layer.use_bias:
                steps.append(("add", layer.bias.numpy().astype(np.float64)))
            act = _activation_step(layer.activation, where)
            if act:
                steps.append(act)
            output_dim = kernel.shape[1]
        elif isinstance(layer, tf.keras.layers.Activation):
            act = _activation_step(layer.activation, where)
            if act:
                steps.append(act)
        else:
            raise ValueError(f"compile_model: {where} has no CKKS form (supported: Dense, Activation, Flatten, Dropout)")
    if input_dim is None:
        raise ValueError("compile_model: the model has no Dense layer")
    return HEModel(steps=steps, input_dim=int(input_dim), output_dim=int(output_dim))
