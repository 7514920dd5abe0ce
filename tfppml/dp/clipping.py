"""Exact per-example gradient clipping for Keras 2 models, mostly without materialising per-example gradients.

How it works (one forward pass, one backward pass, no second pass over the model):

1. :class:`PrivateGradients` instruments the model once: every leaf layer that owns trainable weights gets an
   instance-level ``call`` wrapper (the class is untouched) that, while a private step is being traced, computes
   the layer's linear part ``z`` itself and records the layer input ``a`` and ``z``.
2. The forward pass and the (mean) loss run under a ``tf.GradientTape``; the backward pass asks only for
   ``g = dL/dz`` of every recorded ``z``.  Because the loss is a mean over independent examples, row ``i`` of
   ``B * g`` is example ``i``'s own gradient with respect to ``z``.
3. A per-layer **rule** turns ``(a, g)`` into each example's squared gradient norm, either from "ghost norms"
   (Dense: ``|a_i|^2 |g_i|^2``; sequences and Conv2D patches: ``<a_i a_i^T, g_i g_i^T>``; Embedding: equal-id
   Gram sums) or, where that is cheaper (Conv2D with many output positions and a small kernel), from the
   materialised per-example gradient.  Norms are summed over layers, clip factors
   ``c_i = min(1, C / |grad_i|)`` follow, and each rule returns ``sum_i c_i grad_i`` directly (a weighted
   ``a^T (c * g)``), so the unclipped weight gradients are never formed.
4. Layers without a rule fall back to a vectorized per-example path (``GradientTape.jacobian`` with pfor over the
   layer alone); this is announced once per layer class.  ``BatchNormalization`` is rejected: its batch
   statistics mix examples, so one example's influence is not confined to its own gradient.

Rules live in a small registry (:func:`register_rule`), one per layer class.

Example:
    >>> model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu"), tf.keras.layers.Dense(2)])
    >>> pg = PrivateGradients(l2_norm_clip=1.0, noise_multiplier=1.1, seed=0)
    >>> loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> loss, y_pred, grads = pg.compute(model, tf.ones([8, 3]), tf.zeros([8]), loss=loss_fn)
"""

from __future__ import annotations

import logging
import math
import numbers
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import tensorflow as tf

from tfppml.ops.gaussian_noise import add_gaussian_noise

__all__ = ["PrivateGradients", "LayerRule", "register_rule", "rule_for", "UnsupportedLayerError"]

_LOG = logging.getLogger("tfppml.dp")
_ANNOUNCED: set[type] = set()


class UnsupportedLayerError(ValueError):
    """A layer cannot be trained with per-example clipping (e.g. BatchNormalization)."""


# --------------------------------------------------------------------------------------------------------------
# Registry of per-layer rules.
# --------------------------------------------------------------------------------------------------------------
class LayerRule:
    """How to run a layer so that per-example gradient norms and clipped sums can be computed.

    A rule's ``forward`` returns ``(outputs, z, data)``: the layer's outputs, the tensor whose gradient the
    backward pass must provide (``z``, batch-major), and whatever the rule needs later.  ``per_example`` turns
    ``data`` and ``g`` (example ``i``'s gradient with respect to ``z`` in row ``i``) into per-example squared
    norms and a function ``finish(c)`` that returns ``sum_i c_i * grad_i`` for each of the layer's trainable
    weights, in ``layer.trainable_weights`` order.  ``per_example_grads`` materialises every example's gradient
    (used when a layer is called more than once per step, and by tests).
    """

    def supports(self, layer: tf.keras.layers.Layer) -> bool:
        return True

    def forward(self, layer, call, inputs, args, kwargs):
        raise NotImplementedError

    def per_example(self, layer, data, g) -> tuple[tf.Tensor, Callable[[tf.Tensor], list]]:
        grads = self.per_example_grads(layer, data, g)
        return _sq_norms_of(grads), lambda c: [tf.einsum("b,b...->...", c, pg) for pg in grads]

    def per_example_grads(self, layer, data, g) -> list[tf.Tensor]:
        raise NotImplementedError


_RULES: dict[type, LayerRule] = {}


def register_rule(layer_class: type) -> Callable[[type], type]:
    """Class decorator registering a :class:`LayerRule` subclass for ``layer_class`` (exact class match).

    Example:
        >>> @register_rule(MyLayer)  # doctest: +SKIP
        ... class MyLayerRule(LayerRule):
        ...     ...
    """

    def decorate(rule_class: type) -> type:
        _RULES[layer_class] = rule_class()
        return rule_class

    return decorate


def rule_for(layer: tf.keras.layers.Layer) -> LayerRule | None:
    """The registered rule for ``layer``'s class, or None (subclasses only inherit a rule if they keep ``call``)."""
    for klass in type(layer).__mro__:
        rule = _RULES.get(klass)
        if rule is not None:
            if type(layer).call is not klass.call or not rule.supports(layer):
                return None
            return rule
    return None


def _sq_norms_of(per_example: Sequence[tf.Tensor]) -> tf.Tensor:
    total = None
    for pg in per_example:
        term = tf.reduce_sum(tf.reshape(tf.square(pg), [tf.shape(pg)[0], -1]), axis=1)
        total = term if total is None else total + term
    return total


def _flat_time(t: tf.Tensor) -> tf.Tensor:
    """(B, d1, ..., dk, C) -> (B, d1*...*dk, C)."""
    return tf.reshape(t, [tf.shape(t)[0], -1, tf.shape(t)[-1]])


def _gram_inner(a: tf.Tensor, g: tf.Tensor) -> tf.Tensor:
    """Per-example |a_i^T g_i|_F^2 = <a_i a_i^T, g_i g_i^T> for a (B, T, d), g (B, T, o)."""
    return tf.reduce_sum(tf.matmul(a, a, transpose_b=True) * tf.matmul(g, g, transpose_b=True), axis=[1, 2])


@register_rule(tf.keras.layers.Dense)
class DenseRule(LayerRule):
    def supports(self, layer):
        return True

    def forward(self, layer, call, inputs, args, kwargs):
        if isinstance(inputs, (tf.SparseTensor, tf.RaggedTensor)):
            raise UnsupportedLayerError(f"layer {layer.name}: sparse or ragged inputs are not supported by DP")
        a = tf.cast(inputs, layer.compute_dtype) if inputs.dtype != layer.compute_dtype else inputs
        if a.shape.rank == 2:
            z = tf.matmul(a, layer.kernel)
        else:
            z = tf.tensordot(a, layer.kernel, [[a.shape.rank - 1], [0]])
        if layer.use_bias:
            z = tf.nn.bias_add(z, layer.bias)
        out = layer.activation(z) if layer.activation is not None else z
        return out, z, a

    def per_example(self, layer, a, g):
        if a.shape.rank == 2:
            g2 = tf.reduce_sum(tf.square(g), axis=1)
            sq = tf.reduce_sum(tf.square(a), axis=1) * g2
            if layer.use_bias:
                sq += g2

            def finish(c):
                gc = g * c[:, None]
                out = [tf.matmul(a, gc, transpose_a=True)]
                if layer.use_bias:
                    out.append(tf.reduce_sum(gc, axis=0))
                return out

            return sq, finish
        a3, g3 = _flat_time(a), _flat_time(g)
        t, d, o = _static_time(a3), a3.shape[-1], g3.shape[-1]
        if t is None or t * (d + o) >= d * o:  # materialising is cheaper than the ghost Gram matrices
            return LayerRule.per_example(self, layer, (a3, g3), g)
        sq = _gram_inner(a3, g3)
        bias_sum = tf.reduce_sum(g3, axis=1)
        if layer.use_bias:
            sq += tf.reduce_sum(tf.square(bias_sum), axis=1)

        def finish(c):
            gc = g3 * c[:, None, None]
            out = [tf.einsum("btd,bto->do", a3, gc)]
            if layer.use_bias:
                out.append(tf.reduce_sum(gc, axis=[0, 1]))
            return out

        return sq, finish

    def per_example_grads(self, layer, data, g):
        a3, g3 = data if isinstance(data, tuple) else (_flat_time(_as3(data)), _flat_time(_as3(g)))
        out = [tf.einsum("btd,bto->bdo", a3, g3)]
        if layer.use_bias:
            out.append(tf.reduce_sum(g3, axis=1))
        return out


def _as3(t):
    return t[:, None, :] if t.shape.rank == 2 else t


def _static_time(t3: tf.Tensor) -> int | None:
    return t3.shape[1] if t3.shape[1] is not None else None


@register_rule(tf.keras.layers.Embedding)
class EmbeddingRule(LayerRule):
    def supports(self, layer):
        return not getattr(layer, "sparse", False)

    def forward(self, layer, call, inputs, args, kwargs):
        ids = inputs
        if ids.dtype not in (tf.int32, tf.int64):
            ids = tf.cast(ids, tf.int32)
        out = tf.nn.embedding_lookup(layer.embeddings, ids)
        if layer._dtype_policy.compute_dtype != layer._dtype_policy.variable_dtype:
            out = tf.cast(out, layer._dtype_policy.compute_dtype)
        return out, out, ids

    def per_example(self, layer, ids, g):
        dim = layer.output_dim
        ids2 = tf.reshape(ids, [tf.shape(ids)[0], -1])
        g3 = tf.reshape(g, [tf.shape(g)[0], -1, dim])
        same = tf.cast(tf.equal(ids2[:, :, None], ids2[:, None, :]), g3.dtype)
        sq = tf.reduce_sum(same * tf.matmul(g3, g3, transpose_b=True), axis=[1, 2])

        def finish(c):
            rows = tf.reshape(g3 * c[:, None, None], [-1, dim])
            return [tf.math.unsorted_segment_sum(rows, tf.reshape(ids2, [-1]), layer.input_dim)]

        return sq, finish

    def per_example_grads(self, layer, ids, g):
        dim = layer.output_dim
        ids2 = tf.reshape(ids, [tf.shape(ids)[0], -1])
        g3 = tf.reshape(g, [tf.shape(g)[0], -1, dim])
        onehot = tf.one_hot(ids2, layer.input_dim, dtype=g3.dtype)  # (B, T, V)
        return [tf.einsum("btv,btd->bvd", onehot, g3)]


_GROUPED_CONVOLUTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _grouped_convolution(layer) -> Callable:
    """The layer's convolution compiled with XLA, as Keras itself runs grouped convolutions: TensorFlow's CPU
    kernels have no gradient for them (float64 fails outright), XLA's do. (This is the forward only; the DP
    noise, which XLA cannot compile, is added outside it.)"""
    conv = _GROUPED_CONVOLUTIONS.get(layer)
    if conv is None:
        conv = _GROUPED_CONVOLUTIONS[layer] = tf.function(layer.convolution_op, jit_compile=True)
    return conv


#: Patch length up to which patches are gathered by a convolution with one-hot filters (cost T * K^2 per example,
#: but oneDNN's); longer ones by a depthwise convolution over the window positions (T * K * kh * kw).
_IDENTITY_CONV_MAX_PATCH = 128


def _conv_patches(a, kernel_size, strides, dilation_rate, padding) -> tf.Tensor:
    """The convolution's input patches, (B, H', W', kh*kw*cin) ordered like its kernel (kh, kw, cin).

    Gathered by convolutions with one-hot filters rather than ``tf.image.extract_patches``, which is 4-8x
    slower on CPU (measured at batch 256: 17.6 ms against 3.0 ms for the tutorial CNN's first layer, most of
    DP-SGD's overhead there); the values are copies of the input, so the result is the same bit for bit.
    """
    kh, kw = kernel_size
    cin = int(a.shape[-1])
    k = kh * kw * cin
    pad = padding.upper()
    if k <= _IDENTITY_CONV_MAX_PATCH:
        eye = tf.reshape(tf.eye(k, dtype=a.dtype), [kh, kw, cin, k])  # filter m picks patch entry m
        return tf.nn.conv2d(a, eye, strides=list(strides), padding=pad, dilations=list(dilation_rate))
    window = tf.reshape(tf.eye(kh * kw, dtype=a.dtype), [kh, kw, 1, kh * kw]) * tf.ones([1, 1, cin, 1], a.dtype)
    out = tf.nn.depthwise_conv2d(a, window, strides=[1, *strides, 1], padding=pad, dilations=list(dilation_rate))
    shape = tf.shape(out)
    out = tf.reshape(out, tf.stack([shape[0], shape[1], shape[2], cin, kh * kw]))  # (c, position) -> (position, c)
    return tf.reshape(tf.transpose(out, [0, 1, 2, 4, 3]), tf.stack([shape[0], shape[1], shape[2], k]))


@register_rule(tf.keras.layers.Conv2D)
class Conv2DRule(LayerRule):
    #: "auto" picks ghost norms or materialised per-example gradients by cost; tests force one or the other.
    mode = "auto"

    def supports(self, layer):
        return layer.data_format == "channels_last"

    def forward(self, layer, call, inputs, args, kwargs):
        a = tf.cast(inputs, layer.compute_dtype) if inputs.dtype != layer.compute_dtype else inputs
        z = _grouped_convolution(layer)(a, layer.kernel) if layer.groups > 1 else layer.convolution_op(a, layer.kernel)
        if layer.use_bias:
            z = tf.nn.bias_add(z, layer.bias)
        out = layer.activation(z) if layer.activation is not None else z
        return out, z, a

    def _patches(self, layer, a):
        return _flat_time(_conv_patches(a, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding))

    def per_example(self, layer, a, g):
        g3 = _flat_time(g)
        t = g3.shape[1]
        k = math.prod(int(d) for d in layer.kernel.shape[:-1])
        o = int(layer.kernel.shape[-1])
        mode = self.mode
        if mode == "auto":
            mode = "direct" if t is None or t * (k + o) >= k * o else "ghost"
        if mode == "direct" or layer.groups > 1:  # grouped: per-example gradients by group (small kernels)
            return LayerRule.per_example(self, layer, a, g)
        p = self._patches(layer, a)
        sq = _gram_inner(p, g3)
        if layer.use_bias:
            sq += tf.reduce_sum(tf.square(tf.reduce_sum(g3, axis=1)), axis=1)

        def finish(c):
            gc = g * tf.reshape(c, tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], 0))
            if self._einsum_finish(layer):
                kernel = tf.einsum("btk,bto->ko", p, _flat_time(gc))
                out = [tf.reshape(kernel, tf.shape(layer.kernel))]
                if layer.use_bias:
                    out.append(tf.reduce_sum(_flat_time(gc), axis=[0, 1]))
                return out
            out = [
                tf.compat.v1.nn.conv2d_backprop_filter(
                    a,
                    tf.shape(layer.kernel),
                    gc,
                    strides=[1, *layer.strides, 1],
                    padding=layer.padding.upper(),
                    dilations=[1, *layer.dilation_rate, 1],
                )
            ]
            if layer.use_bias:
                out.append(tf.reduce_sum(gc, axis=[0, 1, 2]))
            return out

        return sq, finish

    def _einsum_finish(self, layer) -> bool:
        """Whether the clipped sum is computed from the patches (TF's CPU filter-gradient kernel has no
        dilation) rather than by conv2d_backprop_filter."""
        return tuple(layer.dilation_rate) != (1, 1)

    def per_example_grads(self, layer, a, g):
        p = self._patches(layer, a)
        g3 = _flat_time(g)
        groups = layer.groups
        if groups == 1:
            kernel = tf.einsum("btk,bto->bko", p, g3)
        else:
            # Group j convolves input channels [j*cin_g, (j+1)*cin_g) into output channels [j*o_g, (j+1)*o_g);
            # the kernel is (kh, kw, cin_g, cout) with cout = j*o_g + o, and a patch is ordered (kh, kw, cin).
            *spatial, cin_g, cout = (int(d) for d in layer.kernel.shape)
            shape = tf.shape(p)
            pg = tf.reshape(p, tf.stack([shape[0], shape[1], math.prod(spatial), groups, cin_g]))
            gg = tf.reshape(g3, tf.stack([shape[0], shape[1], groups, cout // groups]))
            kernel = tf.einsum("btkjc,btjo->bkcjo", pg, gg)
        out = [tf.reshape(kernel, tf.concat([tf.shape(g3)[:1], tf.shape(layer.kernel)], axis=0))]
        if layer.use_bias:
            out.append(tf.reduce_sum(g3, axis=1))
        return out


@register_rule(tf.keras.layers.Conv1D)
class Conv1DRule(Conv2DRule):
    """Conv1D as a Conv2D over a (1, T) image: the same per-example paths (ghost norms or patches), causal
    padding applied to the input first as Keras does."""

    def forward(self, layer, call, inputs, args, kwargs):
        a = tf.cast(inputs, layer.compute_dtype) if inputs.dtype != layer.compute_dtype else inputs
        if layer.padding == "causal":
            a = tf.pad(a, [[0, 0], [layer.dilation_rate[0] * (layer.kernel_size[0] - 1), 0], [0, 0]])
        conv = _grouped_convolution(layer) if layer.groups > 1 else layer.convolution_op
        z = conv(a, layer.kernel)
        if layer.use_bias:
            z = tf.nn.bias_add(z, layer.bias)
        out = layer.activation(z) if layer.activation is not None else z
        return out, z, a

    def _patches(self, layer, a):
        padding = "valid" if layer.padding == "causal" else layer.padding  # `a` is already padded
        patches = _conv_patches(a[:, None], (1, layer.kernel_size[0]), (1, layer.strides[0]),
                                (1, layer.dilation_rate[0]), padding)  # fmt: skip
        return _flat_time(patches)

    def _einsum_finish(self, layer) -> bool:
        return True


@register_rule(tf.keras.layers.LayerNormalization)
class LayerNormRule(LayerRule):
    def forward(self, layer, call, inputs, args, kwargs):
        x = tf.cast(inputs, tf.float32) if inputs.dtype in (tf.float16, tf.bfloat16) else inputs
        ndims = x.shape.rank
        axes = sorted(a % ndims for a in layer.axis)
        mean, var = tf.nn.moments(x, axes, keepdims=True)
        xhat = (x - mean) * tf.math.rsqrt(var + layer.epsilon)
        shape = [1] * ndims
        for ax in axes:
            shape[ax] = x.shape[ax]
        out = xhat
        if layer.scale:
            out = out * tf.reshape(tf.cast(layer.gamma, x.dtype), shape)
        if layer.center:
            out = out + tf.reshape(tf.cast(layer.beta, x.dtype), shape)
        return tf.cast(out, inputs.dtype), out, (xhat, axes)

    def per_example_grads(self, layer, data, g):
        xhat, axes = data
        reduce = [ax for ax in range(1, xhat.shape.rank) if ax not in axes]
        out = []
        if layer.scale:
            out.append(tf.reduce_sum(g * xhat, axis=reduce) if reduce else g * xhat)
        if layer.center:
            out.append(tf.reduce_sum(g, axis=reduce) if reduce else g)
        return [tf.reshape(t, tf.concat([tf.shape(t)[:1], tf.shape(w)], 0)) for t, w in zip(out, layer.trainable_weights)]


class GenericRule(LayerRule):
    """Vectorized fallback: per-example gradients of one layer, the layer called on each example alone and
    vectorized over the batch (``tf.vectorized_map``, pfor, with a while loop where pfor cannot convert).

    Cheaper than the Jacobian of the whole batch's call (one example's backward pass per example, not the
    batch's): a Conv2DTranspose at batch 64 took longer by Jacobian than a per-example loop over the model.
    Tensors among the call's other arguments are split by example when their leading dimension is the input's
    (the same static size, or both unknown, as in a Keras train step); the rest are passed whole.
    """

    def forward(self, layer, call, inputs, args, kwargs):
        out = call(inputs, *args, **kwargs)
        if not isinstance(out, tf.Tensor):
            raise UnsupportedLayerError(
                f"layer {layer.name} ({type(layer).__name__}) has no DP rule and returns "
                f"{type(out).__name__}; the vectorized fallback needs a single output tensor"
            )
        return out, out, (call, inputs, args, kwargs)

    def per_example_grads(self, layer, data, g):
        call, inputs, args, kwargs = data
        weights = layer.trainable_weights
        first = tf.nest.flatten(inputs)[0]
        leaves = tf.nest.flatten((inputs, args, kwargs))
        batched = [i for i, t in enumerate(leaves) if _splits_by_example(t, first)]

        def one(elems):
            g_i, parts = elems
            own = list(leaves)
            for index, part in zip(batched, parts):
                own[index] = part[None]
            x_i, args_i, kwargs_i = tf.nest.pack_sequence_as((inputs, args, kwargs), own)
            with tf.GradientTape() as tape:
                out = call(x_i, *args_i, **kwargs_i)
                total = tf.reduce_sum(out * tf.stop_gradient(g_i[None]))
            return tape.gradient(total, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return tf.vectorized_map(one, (g, [leaves[i] for i in batched]), fallback_to_while_loop=True)


def _splits_by_example(t: Any, first: tf.Tensor) -> bool:
    if not isinstance(t, tf.Tensor) or t.shape.rank in (None, 0):
        return False
    return t.shape[0] == first.shape[0]  # equal sizes, or both unknown (None == None)


class RecurrentRule(GenericRule):
    """RNN, LSTM, GRU, Bidirectional as a whole: the Jacobian of the batch's call (pfor), since pfor cannot
    convert a recurrent layer called inside another vectorized map (its TensorList loop state)."""

    def per_example_grads(self, layer, data, g):
        call, inputs, args, kwargs = data
        weights = layer.trainable_weights
        with tf.GradientTape() as tape:
            out = call(inputs, *args, **kwargs)
            per_example = tf.reduce_sum(tf.reshape(out * tf.stop_gradient(g), [tf.shape(out)[0], -1]), axis=1)
        jac = tape.jacobian(per_example, weights, experimental_use_pfor=True)
        return [tf.zeros((tf.shape(g)[0], *w.shape), g.dtype) if j is None else j for j, w in zip(jac, weights)]


_GENERIC = GenericRule()
_RECURRENT = RecurrentRule()


# --------------------------------------------------------------------------------------------------------------
# Instrumentation.
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Record:
    layer: Any
    rule: LayerRule
    z: tf.Tensor
    data: Any


@dataclass
class _Capture:
    active: bool = False
    records: list = field(default_factory=list)


def _is_batch_norm(layer) -> bool:
    return isinstance(layer, tf.keras.layers.BatchNormalization) or type(layer).__name__ in (
        "BatchNormalization",
        "SyncBatchNormalization",
    )


def _assign_rules(layer, out: list) -> None:
    if not layer.trainable or not layer.trainable_weights:
        return
    if _is_batch_norm(layer):
        raise UnsupportedLayerError(
            f"layer {layer.name} is a trainable BatchNormalization: its batch statistics mix the examples of a "
            f"batch, so one example's influence is not confined to its own clipped gradient and DP-SGD's "
            f"guarantee does not hold. Use LayerNormalization or GroupNormalization, or freeze the layer "
            f"(layer.trainable = False)."
        )
    if getattr(layer, "activity_regularizer", None) is not None:
        raise UnsupportedLayerError(
            f"layer {layer.name} has an activity_regularizer, whose gradient would bypass per-example clipping; "
            f"remove it (weight regularizers are fine)."
        )
    rule = rule_for(layer)
    if rule is not None:
        out.append((layer, rule))
        return
    if isinstance(layer, (tf.keras.layers.RNN, tf.keras.layers.Bidirectional)):
        # A recurrent layer calls its cell inside a loop over time: the cell's calls cannot be captured one by
        # one, so the layer as a whole is the unit (its weights are its cells').
        out.append((layer, _RECURRENT))
        return
    sublayers = list(layer._flatten_layers(include_self=False, recursive=False))
    if sublayers and not layer._trainable_weights:
        for sub in sublayers:
            _assign_rules(sub, out)
        return
    if type(layer) not in _ANNOUNCED:
        _ANNOUNCED.add(type(layer))
        _LOG.warning(
            "tfppml.dp: %s has no fast per-example gradient rule; using the vectorized per-example fallback "
            "(correct, slower). Register a rule with tfppml.dp.register_rule to speed it up.",
            type(layer).__name__,
        )
    out.append((layer, _GENERIC))


def _instrument(layer, rule: LayerRule, capture: _Capture) -> None:
    original = layer.call

    @tf.autograph.experimental.do_not_convert
    def call(inputs, *args, **kwargs):
        if not capture.active:
            return original(inputs, *args, **kwargs)
        outputs, z, data = rule.forward(layer, original, inputs, args, kwargs)
        capture.records.append(_Record(layer, rule, z, data))
        return outputs

    call._tfppml_dp_original = original  # type: ignore[attr-defined]
    layer.call = call


def _ref_set(variables) -> set:
    return {v.ref() for v in variables}


def _check_number(name: str, value, *, low: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low} and finite, got {value}")
    return value


# --------------------------------------------------------------------------------------------------------------
# The engine.
# --------------------------------------------------------------------------------------------------------------
class PrivateGradients:
    """Computes DP-SGD gradients of a Keras model: exact per-example clipping, then Gaussian noise.

    The returned gradients are ``(sum_i clip(grad_i) + N(0, (noise_multiplier * l2_norm_clip)^2 I)) / B`` for
    a batch of ``B`` examples, where ``grad_i`` is example ``i``'s gradient of its own loss (the batch loss
    being the mean of per-example losses, which is what Keras losses compute by default), plus the gradient of
    any weight regularizers (data-independent, so neither clipped nor noised).

    Under ``tf.distribute`` (MirroredStrategy, MultiWorkerMirroredStrategy, OneDeviceStrategy) each replica
    clips its own examples and adds an independent share N(0, (noise_multiplier * l2_norm_clip)^2 / R I) of the
    noise, R replicas in sync, and divides by the *global* batch size (summed over the replicas, so uneven last
    batches are right too); Keras's all-reduce then sums the replicas' results into exactly the formula above for
    the global batch: the noise is added once per global batch with the stated standard deviation. Other
    strategies are refused.

    Args:
        l2_norm_clip: Clip norm C > 0 of every example's whole gradient (all layers together).
        noise_multiplier: Noise standard deviation divided by C, >= 0 (0 disables noise: no privacy).
        seed: Optional int seed of the noise (tests only: noise from a known seed gives no privacy). None, the
            default, keys tfppml's ChaCha20 noise kernel from the OS CSPRNG afresh at every step.

    Raises:
        TypeError, ValueError: an argument has the wrong type or range.

    Example:
        >>> pg = PrivateGradients(l2_norm_clip=1.0, noise_multiplier=1.1)
        >>> loss, y_pred, grads = pg.compute(model, x, y, loss=loss_fn)  # doctest: +SKIP
    """

    def __init__(self, l2_norm_clip: float, noise_multiplier: float, seed: int | None = None):
        self.l2_norm_clip = _check_number("l2_norm_clip", l2_norm_clip, low=0.0, low_open=True)
        self.noise_multiplier = _check_number("noise_multiplier", noise_multiplier, low=0.0, low_open=False)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
        if seed is not None and not 0 <= seed < 2**256:
            raise ValueError(f"seed must be an int in [0, 2**256) or None, got {seed}")
        self._seed = seed
        self._noise_counter: tf.Variable | None = None
        self._models: dict[int, tuple[Any, _Capture, list]] = {}

    # -- instrumentation ------------------------------------------------------------------------------------
    def attach(self, model: tf.keras.Model) -> list[tuple[Any, LayerRule]]:
        """Instruments ``model`` (once) and returns the (layer, rule) pairs that cover its trainable weights.

        Raises:
            TypeError: ``model`` is not a Keras model.
            UnsupportedLayerError: a layer cannot be trained privately (trainable BatchNormalization,
                activity regularizer), or a trainable variable is not owned by any layer.
        """
        if not isinstance(model, tf.keras.layers.Layer):
            raise TypeError(f"model must be a tf.keras.Model, got {type(model).__name__}")
        entry = self._models.get(id(model))
        if entry is not None and entry[0] is model:
            return entry[2]
        if not model.built:
            raise ValueError(f"model {model.name} is not built yet; call it on a batch or build() it first")
        pairs: list = []
        for sub in model._flatten_layers(include_self=False, recursive=False):
            _assign_rules(sub, pairs)
        covered = set()
        for layer, _ in pairs:
            covered |= _ref_set(layer.trainable_weights)
        missing = [v.name for v in model.trainable_variables if v.ref() not in covered]
        if missing:
            raise UnsupportedLayerError(
                f"trainable variables {missing} of model {model.name} belong to no layer that per-example "
                f"clipping can see (variables created directly on a model are not supported); move them into a "
                f"layer."
            )
        capture = getattr(model, "_tfppml_dp_capture", None)
        if capture is None:
            capture = _Capture()
            for layer, rule in pairs:
                if not hasattr(layer.call, "_tfppml_dp_original"):
                    _instrument(layer, rule, capture)
            model._tfppml_dp_capture = capture
        self._models[id(model)] = (model, capture, pairs)
        return pairs

    # -- the private step ---------------------------------------------------------------------------------
    def _noise_nonces(self, count: int, replicas: int = 1, replica_id: Any = 0) -> list:
        """Stream numbers for the noise of ``count`` tensors in this step: 0s without a seed (every execution
        of the noise kernel then draws its own key from the OS CSPRNG), else a counter that never repeats,
        interleaved by replica so that replicas seeded alike still draw independent noise."""
        if self._seed is None:
            return [0] * count
        if self._noise_counter is None:
            with tf.init_scope():
                self._noise_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="dp_noise_nonce")
        end = self._noise_counter.assign_add(count)
        replica_id = tf.cast(replica_id, tf.int64)
        return [(end - (count - i)) * replicas + replica_id for i in range(count)]

    def _add_noise(self, gmean: tf.Tensor, stddev: tf.Tensor, nonce) -> tf.Tensor:
        """gmean + N(0, stddev^2) from tfppml's ChaCha20-keyed kernel (see tfppml.ops.add_gaussian_noise)."""
        if gmean.dtype in (tf.float32, tf.float64):
            return add_gaussian_noise(gmean, stddev, seed=self._seed, nonce=nonce)
        noisy = add_gaussian_noise(tf.cast(gmean, tf.float32), stddev, seed=self._seed, nonce=nonce)
        return tf.cast(noisy, gmean.dtype)

    def compute(
        self,
        model: tf.keras.Model,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        loss: Callable | None = None,
        add_noise: bool = True,
    ) -> tuple[tf.Tensor, Any, list[tf.Tensor]]:
        """Runs the forward pass and returns ``(loss, y_pred, private_gradients)``.

        Args:
            model: A built Keras model (Sequential, functional or subclassed).
            x, y, sample_weight: One batch, as ``Model.fit`` would receive it.
            loss: ``loss(y_true, y_pred, sample_weight)`` returning the batch *mean* of per-example losses (any
                Keras loss object with its default reduction). None uses the model's compiled loss
                (``model.compute_loss``), which must use Keras's default mean reduction.
            add_noise: False returns the clipped mean without noise (for tests and diagnostics: not private).

        Returns:
            The loss, the predictions, and one gradient per ``model.trainable_variables`` entry.

        Raises:
            ValueError: the loss is not a mean over the batch, or the model cannot be trained privately.
        """
        replicas, replica = _replica_setting()
        _, capture, pairs = self._models.get(id(model), (None, None, None))
        if capture is None:
            pairs = self.attach(model)
            capture = model._tfppml_dp_capture
        with tf.GradientTape(persistent=False) as tape:
            capture.active, capture.records = True, []
            try:
                y_pred = model(x, training=True)
            finally:
                capture.active = False
            # Keep only this pass's tensors: Keras may also trace the layers symbolically while building a
            # Sequential model's graph network on its first call, and those records belong to a scratch graph.
            records, capture.records = [r for r in capture.records if _in_current_context(r.z)], []
            if loss is None:
                loss_value = model.compute_loss(x, y, y_pred, sample_weight)
                _check_compiled_reduction(model)
            else:
                loss_value = (
                    loss(y, y_pred) if sample_weight is None else loss(y, y_pred, sample_weight=sample_weight)
                )
        if loss_value.shape.rank != 0:
            raise ValueError(
                f"loss must return a scalar batch mean (Keras's default reduction), got shape {loss_value.shape}; "
                f"do not use reduction=NONE with tfppml.dp"
            )
        if not records:
            raise ValueError(f"model {model.name} recorded no trainable layer in its forward pass")
        gz = tape.gradient(loss_value, [r.z for r in records], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        batch = tf.shape(records[0].z)[0]
        per_example = _mask_correction(y_pred, loss, batch)
        if per_example is not None:
            gz = [g * tf.reshape(tf.cast(per_example, g.dtype), tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], 0))
                  for g in gz]  # fmt: skip
        # Per-example gradients are B times the batch mean's. Keras's compiled loss is also divided by the number
        # of replicas under a strategy (so that its all-reduced sum is the global mean): undo that too, or every
        # example would be clipped at R times the clip norm.
        scale = tf.cast(batch * (replicas if loss is None else 1), gz[0].dtype)
        by_layer: dict[int, list] = {}
        for rec, g in zip(records, gz):
            by_layer.setdefault(id(rec.layer), []).append((rec, g * scale))
        sq_total = None
        finishers = []
        for items in by_layer.values():
            layer, rule = items[0][0].layer, items[0][0].rule
            if len(items) == 1:
                sq, finish = rule.per_example(layer, items[0][0].data, items[0][1])
            else:  # a layer called several times per step: sum its per-example gradients over the calls
                per = None
                for rec, g in items:
                    grads = rule.per_example_grads(layer, rec.data, g)
                    per = grads if per is None else [p + q for p, q in zip(per, grads)]
                sq = _sq_norms_of(per)
                finish = lambda c, per=per: [tf.einsum("b,b...->...", c, p) for p in per]  # noqa: E731
            finishers.append((layer, finish))
            sq_total = sq if sq_total is None else sq_total + sq
        norms = tf.sqrt(tf.maximum(sq_total, 0.0))
        clip = tf.cast(self.l2_norm_clip, norms.dtype)
        factors = clip / tf.maximum(norms, clip)
        summed: dict = {}
        for layer, finish in finishers:
            for w, gsum in zip(layer.trainable_weights, finish(factors)):
                summed[w.ref()] = gsum
        reg = _regularizer_gradients(model)
        grads = []
        variables = model.trainable_variables
        std = self.noise_multiplier * self.l2_norm_clip
        noisy = add_noise and std > 0
        total = tf.cast(batch, tf.float64)
        if replicas > 1:  # the global batch: replicas' batches may differ (the last one is split unevenly)
            total = replica.all_reduce(tf.distribute.ReduceOp.SUM, total)
        if noisy:
            _check_not_xla()
            # (sum + N(0, std^2)) / B = sum / B + N(0, (std / B)^2): one fused kernel adds the noise in place.
            # With R replicas each adds an independent share of variance std^2 / R; their all-reduced sum has
            # variance std^2, once per global batch.
            mean_std = tf.constant(std / replicas**0.5, tf.float64) / total
            nonces = self._noise_nonces(len(variables), replicas, replica.replica_id_in_sync_group if replica else 0)
        for i, v in enumerate(variables):
            gsum = summed[v.ref()]
            if isinstance(gsum, tf.IndexedSlices):
                gsum = tf.convert_to_tensor(gsum)
            gmean = gsum / tf.cast(total, gsum.dtype)
            if noisy:
                gmean = self._add_noise(gmean, mean_std, nonces[i])
            if v.ref() in reg:
                # Summed over the replicas by the all-reduce like the rest: each contributes its R-th.
                gmean = gmean + reg[v.ref()] / replicas
            grads.append(gmean)
        return loss_value, y_pred, grads


#: Strategies whose replicas all-reduce (sum) the gradients they are given, which the noise shares rely on.
def _supported_strategies() -> tuple:
    return (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.OneDeviceStrategy)


def _replica_setting() -> tuple[int, Any]:
    """(replicas in sync, the replica context) of the current tf.distribute setting; (1, None) without one.

    Raises:
        ValueError: an unsupported strategy, or a strategy's scope outside its replica function.
    """
    if not tf.distribute.has_strategy():
        return 1, None
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, _supported_strategies()):
        raise ValueError(
            f"tfppml.dp does not support {type(strategy).__name__}: DP noise is shared out among replicas that "
            "sum their gradients in sync, which MirroredStrategy, MultiWorkerMirroredStrategy and "
            "OneDeviceStrategy do; train without a strategy or with one of those"
        )
    replica = tf.distribute.get_replica_context()
    if replica is None:
        raise ValueError(
            f"DP gradients under {type(strategy).__name__} must be computed per replica (inside strategy.run, as "
            "Model.fit does), not in the cross-replica context"
        )
    replicas = int(strategy.num_replicas_in_sync)
    return replicas, (replica if replicas > 1 else None)


def _mask_correction(y_pred: Any, loss: Callable | None, batch: tf.Tensor) -> tf.Tensor | None:
    """Per-example factors that make a masked loss's per-example gradients independent of the rest of the batch.

    Keras divides a masked loss by the number V of unmasked steps in the whole *batch*, so B times the batch
    gradient's row i is example i's gradient scaled by B * T_i / V (T_i: its own unmasked steps): how hard an
    example is clipped would depend on the other examples' lengths. tfppml's convention: an example's loss is the
    mean over its own unmasked steps (times its sample weight, which Keras already applies per example), the loss
    Keras computes for that example alone. The factor V / (B * T_i) gives exactly that; fully masked examples
    contribute nothing. None when the output carries no mask.

    Raises:
        ValueError: a masked output with a loss that is not a Keras loss (whether it applies the mask is unknown),
            or masks on a model with several outputs.
    """
    outputs = tf.nest.flatten(y_pred)
    masks = [getattr(t, "_keras_mask", None) for t in outputs]
    if all(m is None for m in masks):
        return None
    if len(outputs) > 1:
        raise ValueError(
            "tfppml.dp: masked outputs of a model with several outputs are not supported (each output's mask "
            "would normalise its loss differently); unmask them or train one output"
        )
    if loss is not None and not isinstance(loss, tf.keras.losses.Loss):
        raise ValueError(
            "tfppml.dp: the model's output carries a Keras mask but `loss` is a plain function, which may or may "
            "not apply it; pass a tf.keras.losses.Loss object (it applies the mask) or compile the model's loss"
        )
    mask = tf.cast(tf.reshape(masks[0], tf.stack([batch, -1])), tf.float64)
    steps = tf.reduce_sum(mask, axis=1)
    total = tf.reduce_sum(steps)
    return tf.where(steps > 0, total / (tf.cast(batch, tf.float64) * tf.maximum(steps, 1.0)), tf.zeros_like(steps))


def _check_not_xla() -> None:
    """DP noise comes from tfppml's ChaCha20 kernel, which XLA cannot compile; say so instead of XLA's message."""
    if tf.executing_eagerly():
        return
    from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import

    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        raise ValueError(
            "tfppml.dp cannot run under XLA (jit_compile=True): its Gaussian noise comes from tfppml's "
            "cryptographically keyed C++ kernel, which XLA cannot compile, and TensorFlow's own samplers are not "
            "an acceptable substitute for DP noise. Compile the model with jit_compile=False."
        )


def _in_current_context(t) -> bool:
    if tf.executing_eagerly():
        return isinstance(t, tf.__internal__.EagerTensor) if hasattr(tf.__internal__, "EagerTensor") else hasattr(
            t, "numpy"
        )
    return getattr(t, "graph", None) is tf.compat.v1.get_default_graph()


def _regularizer_gradients(model) -> dict:
    """Gradients of the weight regularizers (functions of the weights only) of every layer."""
    fns = [fn for layer in model._flatten_layers() for fn in getattr(layer, "_callable_losses", [])]
    if not fns:
        return {}
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        total = tf.add_n([tf.cast(fn(), tf.float32) for fn in fns])
    return {v.ref(): g for v, g in zip(variables, tape.gradient(total, variables)) if g is not None}


def _check_compiled_reduction(model) -> None:
    container = getattr(model, "compiled_loss", None)
    if container is None:
        raise ValueError(
            f"model {model.name} is not compiled; pass loss= (a Keras loss object with its default reduction)"
        )
    for obj in tf.nest.flatten(getattr(container, "_losses", None)):
        reduction = getattr(obj, "reduction", None)
        if reduction is not None and reduction not in ("auto", "sum_over_batch_size"):
            raise ValueError(
                f"the compiled loss {getattr(obj, 'name', obj)!r} uses reduction={reduction!r}; tfppml.dp needs "
                f"Keras's default mean reduction ('auto' / 'sum_over_batch_size') to identify each example's "
                f"gradient. Compile with the loss's default reduction: per-example clipping is done for you."
            )
