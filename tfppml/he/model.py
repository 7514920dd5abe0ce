"""Encrypted inference: a Keras model of Dense/Conv layers and polynomial activations as a CKKS program.

`compile_model(keras_model)` reads the weights once and returns an `HEModel` that runs on CipherTensors with the
model owner's plaintext weights; it reports the multiplicative depth and the rotation steps (Galois keys) the
client's context must provide, and suggests CKKS parameters for that depth.

Every linear layer (Dense, Conv1D/2D/3D, AveragePooling2D, Flatten, Reshape) becomes a plain matrix on the
row-major flattened per-sample tensor (what Keras' channels-last Flatten produces), so a convolution runs as the
same encrypted matrix product as a Dense layer (and, in the batch layout, costs only its nonzero weights: 49 per
output for a 7x7 single-channel kernel).  The client encrypts `x.reshape(len(x), -1)` (`HEModel.flatten` does
it).  Consecutive linear layers are fused into one matrix (one level) when that does not enlarge it.  The layer
converters form a small registry (`register_converter`), looked up along the layer class's MRO.

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


# N=8192 (4096 slots, 218 bits at 128-bit security): per depth, the coefficient-modulus bits and log2(scale).
# Deeper circuits take smaller primes, trading precision (scale) and headroom (first prime - scale bits: values
# below 2**(headroom - 1) in magnitude decrypt correctly) for depth.  The special (last) prime is kept well above
# the first: a rotation's key-switching noise grows with first / special (measured at depth 5, relative to
# values ~1: [39, 28 x 5, 39] 1e-3 per rotation, [38, 27 x 5, 45] 4e-5).  Primes of 27-28 bits lie up to ~3e-3
# from 2**bits; the kernels absorb that into the next plain product (see cc/he/cipher_tensor.h).
_N8192 = {
    0: ([60, 60], 40),
    1: ([60, 40, 60], 40),
    2: ([60, 40, 40, 60], 40),
    3: ([55, 35, 35, 35, 55], 35),
    4: ([44, 32, 32, 32, 32, 46], 32),
    5: ([38, 27, 27, 27, 27, 27, 45], 27),
}
_MAX_BITS = {16384: 438, 32768: 881}  # SEAL's 128-bit limits (HomomorphicEncryption.org standard)


def _parameters_for(depth: int, slots_needed: int) -> dict:
    if depth in _N8192 and slots_needed <= 4096:
        bits, log_scale = _N8192[depth]
        return dict(poly_modulus_degree=8192, coeff_mod_bit_sizes=list(bits), global_scale=2.0**log_scale)
    for degree, max_bits in _MAX_BITS.items():
        if 120 + 40 * depth <= max_bits and slots_needed <= degree // 2:
            return dict(
                poly_modulus_degree=degree, coeff_mod_bit_sizes=[60] + [40] * depth + [60], global_scale=2.0**40
            )
    raise ValueError(
        f"context_parameters: the model needs depth {depth} and {slots_needed} slots per row, more than "
        "N=32768 gives at 128-bit security (depth 19, 16384 slots); use fewer multiplicative layers"
    )


@dataclasses.dataclass
class HEModel:
    """A compiled encrypted-inference program (plaintext weights, encrypted activations).

    Attributes:
        steps: the program: ("matmul", W), ("add", b), ("square",), ("poly", coeffs).
        input_dim / output_dim: feature sizes.
        input_shape: per-sample shape of the Keras input, e.g. (28, 28, 1); None: (input_dim,).
        batch_size: the batch size the Keras model declares (`batch_input_shape` (1, ...) gives 1), which a
            serving worker enforces on every query; None: any.
        depth: multiplicative depth the client's context must provide.
    """

    steps: list
    input_dim: int
    output_dim: int
    input_shape: tuple | None = None
    batch_size: int | None = None

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

    @property
    def vector_width(self) -> int:
        """Slots one row needs in the vector layout: the widest padded input or output of a matmul."""
        width = _next_pow2(self.input_dim)
        for step in self.steps:
            if step[0] == "matmul":
                width = max(width, _next_pow2(step[1].shape[0]), _next_pow2(step[1].shape[1]))
        return width

    def context_parameters(self, layout: str = "vector") -> dict:
        """CKKSContext arguments with 128-bit security and enough depth (and Galois keys) for this model.

        The smallest ring that gives the depth (and, for the vector layout, enough slots for the widest row):
        N=8192 up to depth 5, with primes as large as its 218-bit budget allows (depth 5: [38, 27 x 5, 45] at
        2**27, which decrypts values up to 2**10 in magnitude), else N=16384 / 32768 with 40-bit primes.

        Raises:
            ValueError: for an unknown layout, or a depth that even N=32768 cannot give.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"context_parameters: argument `layout` must be one of {LAYOUTS}, got {layout!r}")
        depth = self.depth
        slots_needed = self.vector_width if layout == "vector" else 1
        params = _parameters_for(depth, slots_needed)
        if layout == "vector":
            params["galois_steps"] = self.rotation_steps
        else:
            params["galois_steps"] = []
        return params

    def flatten(self, x: Any) -> np.ndarray:
        """Inputs as the program reads them: [batch, input_dim] float64 (a batch of `input_shape` samples, or
        of flat vectors), or [input_dim] for a single flat sample.

        Raises:
            ValueError: if `x` is neither a batch of samples of `input_shape` nor of `input_dim` features.
        """
        array = np.asarray(x, dtype=np.float64)
        shape = tuple(self.input_shape or (self.input_dim,))
        if array.shape == (self.input_dim,):
            return array
        if array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            return array.reshape(array.shape[0], self.input_dim)
        if array.ndim == 2 and array.shape[1] == self.input_dim:
            return array
        raise ValueError(
            f"HEModel.flatten: argument `x` must be a batch of samples of shape {shape} or of {self.input_dim} "
            f"features, got shape {array.shape}"
        )

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
        """Encrypts x under `context`, runs the program, decrypts (a local convenience for tests/benchmarks).

        `x` is a batch in the Keras model's input shape or already flat (see `flatten`)."""
        return context.decrypt(self(context.encrypt(self.flatten(x), layout=layout)))


# ---------------------------------------------------------------------------------------------------------
# Layer converters.  A converter turns one Keras layer into program steps acting on the row-major flattened
# sample and returns them with the layer's per-sample output shape.

Converter = Callable[[tf.keras.layers.Layer, tuple, str], tuple[list, tuple]]
_CONVERTERS: dict[type, Converter] = {}

# A linear layer is lowered to a dense [n, m] float64 matrix; beyond this many entries (256 MB) compile_model
# refuses rather than exhausting memory (such a layer would not fit a ciphertext row anyway).
_MAX_MATRIX_ENTRIES = 1 << 25
_PROBE_CHUNK = 512  # basis vectors pushed through a linear layer at a time while lowering it


def register_converter(*layer_types: type) -> Callable[[Converter], Converter]:
    """Registers `fn(layer, input_shape, where) -> (steps, output_shape)` for Keras layer classes.

    Shapes are per sample (no batch axis); steps are ("matmul", W), ("add", b), ("square",), ("poly", coeffs) on the
    row-major flattened sample; `where` names the layer for error messages.  Lookup follows the layer class's
    MRO, so a converter also serves subclasses unless they register their own.

    Example:
        >>> @register_converter(tf.keras.layers.GaussianNoise)          # identity at inference
        ... def _noise(layer, shape, where):
        ...     return [], shape
    """

    def decorate(fn: Converter) -> Converter:
        for layer_type in layer_types:
            _CONVERTERS[layer_type] = fn
        return fn

    return decorate


def _converter_for(layer: tf.keras.layers.Layer) -> Converter | None:
    for cls in type(layer).__mro__:
        if cls in _CONVERTERS:
            return _CONVERTERS[cls]
    return None


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _check_matrix_size(n: int, m: int, where: str) -> None:
    if n * m > _MAX_MATRIX_ENTRIES:
        raise ValueError(
            f"compile_model: {where} maps {n} inputs to {m} outputs; its matrix ({n * m} entries) is above the "
            f"{_MAX_MATRIX_ENTRIES} this compiler lowers (use smaller inputs or fewer filters)"
        )


def _linear_matrix(fn: Callable[[tf.Tensor], tf.Tensor], shape: tuple, out_shape: tuple, where: str) -> np.ndarray:
    """The [n, m] matrix of a linear map on samples of `shape`: row i is fn(e_i), computed in float64."""
    n, m = _size(shape), _size(out_shape)
    _check_matrix_size(n, m, where)
    rows = []
    for start in range(0, n, _PROBE_CHUNK):
        stop = min(n, start + _PROBE_CHUNK)
        basis = tf.reshape(tf.one_hot(tf.range(start, stop), n, dtype=tf.float64), (stop - start,) + shape)
        rows.append(tf.reshape(fn(basis), (stop - start, m)).numpy())
    return np.concatenate(rows, axis=0)


def _channels_last(layer: tf.keras.layers.Layer, where: str) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(
            f"compile_model: {where} has data_format {layer.data_format!r}; only 'channels_last' (Keras' default) is "
            "supported"
        )


def _output_shape(layer: tf.keras.layers.Layer, shape: tuple) -> tuple:
    return tuple(int(d) for d in tf.TensorShape(layer.compute_output_shape((1,) + shape))[1:])


@register_converter(tf.keras.layers.InputLayer, tf.keras.layers.Dropout)
def _identity(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    return [], shape  # (Dropout is the identity at inference)


@register_converter(tf.keras.layers.Flatten, tf.keras.layers.Reshape)
def _reshape(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    _channels_last(layer, where)  # a channels_first Flatten transposes; the row-major order is the flat order
    return [], _output_shape(layer, shape)


@register_converter(tf.keras.layers.Activation)
def _activation(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    act = _activation_step(layer.activation, where)
    return ([act] if act else []), shape


@register_converter(tf.keras.layers.Dense)
def _dense(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    kernel = layer.kernel.numpy().astype(np.float64)
    # Keras applies Dense to the last axis; on a rank > 1 sample that is one block per leading position.
    blocks = _size(shape[:-1])
    _check_matrix_size(_size(shape), blocks * kernel.shape[1], where)
    steps: list = [("matmul", kernel if blocks == 1 else np.kron(np.eye(blocks), kernel))]
    if layer.use_bias:
        steps.append(("add", np.tile(layer.bias.numpy().astype(np.float64), blocks)))
    act = _activation_step(layer.activation, where)
    if act:
        steps.append(act)
    return steps, shape[:-1] + (int(kernel.shape[1]),)


_CONV_CALL = tf.keras.layers.Conv2D.call  # the plain convolution's call (Conv.call); variants override it


@register_converter(tf.keras.layers.Conv1D, tf.keras.layers.Conv2D, tf.keras.layers.Conv3D)
def _conv(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    if type(layer).call is not _CONV_CALL:  # Conv2DTranspose subclasses Conv2D but is another map
        raise ValueError(f"compile_model: {where} has no CKKS form (transposed convolutions are not supported)")
    _channels_last(layer, where)
    if layer.padding == "causal":
        raise ValueError(f"compile_model: {where} has padding 'causal'; use 'valid' or 'same'")
    if len(shape) != layer.rank + 1:
        raise ValueError(
            f"compile_model: {where} needs samples of rank {layer.rank + 1} (spatial axes and channels), got shape "
            f"{shape}"
        )
    out_shape = _output_shape(layer, shape)
    kernel = tf.cast(layer.kernel, tf.float64)
    steps: list = [("matmul", _linear_matrix(lambda x: layer.convolution_op(x, kernel), shape, out_shape, where))]
    if layer.use_bias:
        # channels_last: the channel is the fastest-moving index of the flattened output
        steps.append(("add", np.tile(layer.bias.numpy().astype(np.float64), _size(out_shape[:-1]))))
    act = _activation_step(layer.activation, where)
    if act:
        steps.append(act)
    return steps, out_shape


@register_converter(tf.keras.layers.AveragePooling2D)
def _average_pooling(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    _channels_last(layer, where)
    if len(shape) != 3:
        raise ValueError(f"compile_model: {where} needs samples of shape (height, width, channels), got {shape}")
    out_shape = _output_shape(layer, shape)
    pool = lambda x: tf.nn.avg_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())  # noqa: E731
    return [("matmul", _linear_matrix(pool, shape, out_shape, where))], out_shape


@register_converter(tf.keras.layers.GlobalAveragePooling2D)
def _global_average_pooling(layer: tf.keras.layers.Layer, shape: tuple, where: str) -> tuple[list, tuple]:
    _channels_last(layer, where)
    if len(shape) != 3:
        raise ValueError(f"compile_model: {where} needs samples of shape (height, width, channels), got {shape}")
    out_shape = _output_shape(layer, shape)
    mean = lambda x: tf.reduce_mean(x, axis=[1, 2], keepdims=bool(layer.keepdims))  # noqa: E731
    return [("matmul", _linear_matrix(mean, shape, out_shape, where))], out_shape


def _fuse_affine(steps: list) -> list:
    """Merges runs of matmul/add steps into one x @ W + b (one level instead of several), unless the fused
    matrix would have more entries than the separate ones together."""
    out: list = []
    matrix: np.ndarray | None = None  # pending x @ matrix + bias (matrix None: the identity)
    bias: np.ndarray | None = None

    def flush() -> None:
        nonlocal matrix, bias
        if matrix is not None:
            out.append(("matmul", matrix))
        if bias is not None:
            out.append(("add", bias))
        matrix = bias = None

    for step in steps:
        if step[0] == "matmul":
            w = step[1]
            if matrix is not None and matrix.shape[0] * w.shape[1] > matrix.size + w.size:
                flush()
            matrix = w if matrix is None else matrix @ w
            bias = None if bias is None else bias @ w
        elif step[0] == "add":
            bias = step[1] if bias is None else bias + step[1]
        else:
            flush()
            out.append(step)
    flush()
    return out


def compile_model(model: tf.keras.Model) -> HEModel:
    """Turns a Keras model of linear layers and HE-friendly activations into an HEModel.

    Supported layers: InputLayer, Dropout (inference: identity), Flatten and Reshape (channels-last), Dense (any
    units, bias or not), Conv1D/Conv2D/Conv3D (channels-last, any strides, dilation or 'valid'/'same' padding),
    AveragePooling2D, GlobalAveragePooling2D, and Activation layers; activations linear / square / Polynomial.
    Linear layers become plain matrices on the flattened sample (see the module docstring), fused when
    consecutive, so e.g. the TenSEAL tutorial ConvNet (Conv2D 4x7x7 stride 3 -> square -> Flatten -> Dense 64 ->
    square -> Dense 10) compiles to depth 5.

    Args:
        model: a built tf.keras Sequential or functional model with one input and a single chain of layers.

    Returns:
        The HEModel; see `.depth`, `.rotation_steps`, `.context_parameters()` and `.flatten()`. A declared batch
        size (`tf.keras.Input((64,), batch_size=1)`) becomes `.batch_size`, enforced when the model is served.

    Raises:
        TypeError: if `model` is not a Keras model.
        ValueError: naming the first layer or activation without a CKKS form, or a model that is not built, has
            several or variable-size inputs, or computes nothing.

    Example:
        >>> conv = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Conv2D(4, 7, strides=3),
        ...                             tf.keras.layers.Activation(square), tf.keras.layers.Flatten(),
        ...                             tf.keras.layers.Dense(10)])
        >>> program = compile_model(conv)
        >>> program.depth, program.input_dim, program.input_shape
        (3, 784, (28, 28, 1))
    """
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"compile_model: argument `model` must be a tf.keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("compile_model: the model must be built (call it once or give it an Input)")
    try:
        input_shape = model.input_shape
    except (AttributeError, RuntimeError):
        raise ValueError("compile_model: the model has no defined input shape; give it a tf.keras.Input") from None
    if isinstance(input_shape, list) or not isinstance(input_shape, tuple):
        raise ValueError(f"compile_model: the model must have a single input, got input shapes {input_shape}")
    shape = tuple(input_shape[1:])
    if not shape or any(d is None for d in shape):
        raise ValueError(f"compile_model: the model's input must have a fixed per-sample shape, got {input_shape}")
    shape = tuple(int(d) for d in shape)
    in_shape = shape
    steps: list = []
    for layer in model.layers:
        where = f"layer {layer.name!r} ({type(layer).__name__})"
        converter = _converter_for(layer)
        if converter is None:
            supported = ", ".join(sorted({t.__name__ for t in _CONVERTERS}))
            raise ValueError(f"compile_model: {where} has no CKKS form (supported: {supported})")
        layer_steps, shape = converter(layer, shape, where)
        steps.extend(layer_steps)
    if not steps:
        raise ValueError("compile_model: the model computes nothing (no Dense, convolution or activation layer)")
    batch = input_shape[0] if input_shape else None
    return HEModel(
        steps=_fuse_affine(steps),
        input_dim=_size(in_shape),
        output_dim=_size(shape),
        input_shape=in_shape,
        batch_size=int(batch) if batch is not None else None,
    )
