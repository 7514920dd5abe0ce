"""Translation of Keras layers into secure computation on shared tensors.

One converter per layer class, registered with `@layer_converter(LayerClass)`.  A converter gets the protocol
(recording a program), the layer and the shared input, and returns the shared output; weights are shared with
`protocol.real.share(...)` so that they leave the model owner only as shares.

Supported: InputLayer, Dense, Conv2D, AveragePooling2D, MaxPooling2D, Activation / activation="relu" and
"linear", Flatten, Reshape, Dropout (identity at inference) and BatchNormalization (folded into the preceding
Dense or Conv2D when that layer has a linear activation, otherwise applied as a shared affine map).  A final
softmax is dropped with a warning (the argmax is unchanged); anything else is refused, naming the layer,
before anything is shared.

Rewrites that keep the function and save rounds or work: a product that feeds a ReLU (directly, or through 2x2
average pooling) is left unshared and truncated by the ReLU; a ReLU right before max pooling runs after it;
a convolution before power-of-two average pooling is truncated once, after the pooling; the output layer's
product goes to the client unshared.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import numpy as np
import tensorflow as tf

import tfppml.mpc as mpc
from tfppml.mpc import SharedTensor
from tfppml.mpc.protocol import divides_by_truncation

layers = tf.keras.layers
Converter = Callable[["ConversionContext", Any, SharedTensor], SharedTensor]
CONVERTERS: dict[type, Converter] = {}


def layer_converter(*classes: type) -> Callable[[Converter], Converter]:
    """Registers a converter for Keras layer classes (subclasses match too)."""

    def register(fn: Converter) -> Converter:
        for cls in classes:
            CONVERTERS[cls] = fn
        return fn

    return register


class UnsupportedLayerError(ValueError):
    """A model holds a layer (or a layer option) that has no secure form."""


@dataclasses.dataclass
class ConversionContext:
    """What converters share: the recording protocol and the real shared weights (kept alive here)."""

    builder: Any
    weights: list = dataclasses.field(default_factory=list)
    final_layer: Any = None
    # The layer converted after the current one (None for the last), for fusions such as conv + pooling.
    next_layer: Any = None
    # Every layer converted after the current one.
    later_layers: list = dataclasses.field(default_factory=list)
    # A ReLU moved past the max pooling that follows it, applied by that pooling's converter.
    relu_after_pooling: bool = False

    def share_weight(self, value: np.ndarray) -> SharedTensor:
        shared = self.builder.real.share(np.asarray(value, dtype=np.float64))
        self.weights.append(shared)
        return shared


def _converter_for(layer: Any) -> Converter | None:
    for cls in type(layer).__mro__:
        if cls in CONVERTERS:
            return CONVERTERS[cls]
    return None


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return tf.keras.activations.serialize(activation) if not isinstance(activation, str) else activation


def _relu(ctx: "ConversionContext", x: SharedTensor) -> SharedTensor:
    if _relu_moves_past(ctx.later_layers):
        ctx.relu_after_pooling = True
        return x
    return mpc.relu(x)


def _apply_activation(ctx: "ConversionContext", name: str, x: SharedTensor, layer: Any) -> SharedTensor:
    if name == "relu":
        return _relu(ctx, x)
    if name == "linear":
        return x
    if name == "softmax" and layer is ctx.final_layer:
        warnings.warn(f"dropping the softmax of the final layer {layer.name!r}: private outputs are logits (same argmax)")
        return x
    raise UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}) uses activation {name!r}; supported: 'relu', 'linear' "
        "(and 'softmax' as the last layer, which is dropped)"
    )


def check_model(model: tf.keras.Model) -> list[Any]:
    """The layers to convert, in order; raises UnsupportedLayerError naming the first unsupported one."""
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"expected a tf.keras.Model, got {type(model).__name__}")
    if len(model.inputs or []) != 1 or len(model.outputs or []) != 1:
        raise UnsupportedLayerError(
            f"model {model.name!r} must have exactly one input and one output (build or call it first)"
        )
    chain = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    # Functional models must be a plain chain: each layer feeds only the next.
    for previous, layer in zip(chain, chain[1:]):
        inbound = [node.inbound_layers for node in layer._inbound_nodes]
        flat = [l for nodes in inbound for l in (nodes if isinstance(nodes, list) else [nodes])]
        if flat and any(l is not previous for l in flat):
            raise UnsupportedLayerError(f"model {model.name!r} is not a single chain of layers at {layer.name!r}")
    for index, layer in enumerate(chain):
        last = index == len(chain) - 1
        if _converter_for(layer) is None and not (last and _is_softmax(layer)):
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({type(layer).__name__}) has no secure form; supported: "
                f"{sorted(cls.__name__ for cls in CONVERTERS)}"
            )
        name = _activation_name(layer) if hasattr(layer, "activation") else "linear"
        if name not in ("relu", "linear") and not (last and name == "softmax"):
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({type(layer).__name__}) uses activation {name!r}; supported: 'relu', "
                "'linear' (and 'softmax' as the last layer, which is dropped)"
            )
    return chain


def _is_output_layer(ctx: "ConversionContext", layer: Any) -> bool:
    """Whether `layer`'s linear output is the model's output: no activation but a final softmax (dropped), and
    only shape changes after it."""
    name = _activation_name(layer)
    if name != "linear" and not (name == "softmax" and layer is ctx.final_layer):
        return False
    return all(
        isinstance(later, (layers.Flatten, layers.Reshape, layers.Dropout))
        or (later is ctx.final_layer and _is_softmax(later))
        for later in ctx.later_layers
    )


def _leaves_product_unshared(ctx: "ConversionContext", layer: Any) -> bool:
    """Whether a linear layer's product skips its reshare round (reshare=False): the model's output layer (the
    servers return their terms to the client as they are) and a layer whose output goes straight into a ReLU
    (its own activation, or a ReLU layer next), which truncates and reshares the terms itself."""
    if _is_output_layer(ctx, layer):
        return True
    if _activation_name(layer) == "relu":
        return not _relu_moves_past(ctx.later_layers)
    return _activation_name(layer) == "linear" and _relu_takes_terms(ctx.later_layers)


def _relu_takes_terms(later: list[Any]) -> bool:
    """Whether the first of the `later` layers is a ReLU (a layer, or an Activation("relu")) applied where it
    stands, not moved past a max pooling."""
    following = later[0] if later else None
    is_relu = isinstance(following, layers.ReLU) or (
        isinstance(following, layers.Activation) and _activation_name(following) == "relu"
    )
    return is_relu and not _relu_moves_past(later[1:])


def _relu_moves_past(later: list[Any]) -> bool:
    """Whether a ReLU followed by `later` moves after the max pooling that comes next: max and ReLU commute, and
    the ReLU then compares 4x fewer elements (2x2 windows) at the same number of rounds."""
    following = later[0] if later else None
    return (
        isinstance(following, layers.MaxPooling2D)
        and following.data_format == "channels_last"
        and following.padding.upper() == "VALID"
    )


def _is_softmax(layer: Any) -> bool:
    return isinstance(layer, layers.Softmax) or (
        isinstance(layer, layers.Activation) and _activation_name(layer) == "softmax"
    )


def convert(model: tf.keras.Model, ctx: ConversionContext, x: SharedTensor) -> SharedTensor:
    """Applies the model's layers to the shared (symbolic) input."""
    chain = check_model(model)
    ctx.final_layer = chain[-1]
    pending_bn = _fold_batch_norms(chain)
    for index, layer in enumerate(chain):
        last = index == len(chain) - 1
        if layer in pending_bn["skip"]:
            continue
        ctx.later_layers = [later for later in chain[index + 1:] if later not in pending_bn["skip"]]
        ctx.next_layer = ctx.later_layers[0] if ctx.later_layers else None
        if last and _is_softmax(layer):
            warnings.warn(f"dropping the final softmax layer {layer.name!r}: private outputs are logits (same argmax)")
            continue
        fold = pending_bn["fold"].get(id(layer))
        x = _converter_for(layer)(ctx, layer, x) if fold is None else _convert_folded(ctx, layer, x, fold, last)
    return x


def _fold_batch_norms(chain: list[Any]) -> dict:
    """BatchNormalization right after a linear Dense/Conv2D is folded into its kernel and bias."""
    fold, skip = {}, set()
    for previous, layer in zip(chain, chain[1:]):
        if (
            isinstance(layer, layers.BatchNormalization)
            and isinstance(previous, (layers.Dense, layers.Conv2D))
            and _activation_name(previous) == "linear"
        ):
            fold[id(previous)] = layer
            skip.add(layer)
    return {"fold": fold, "skip": skip}


def _bn_affine(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return scale, beta - bn.moving_mean.numpy() * scale


def _convert_folded(ctx: ConversionContext, layer: Any, x: SharedTensor, bn: Any, last: bool) -> SharedTensor:
    scale, shift = _bn_affine(bn)
    kernel = layer.kernel.numpy() * scale  # scales the output channel (last axis) of Dense and Conv2D kernels
    bias = (layer.bias.numpy() if layer.use_bias else 0.0) * scale + shift
    return _linear_layer(ctx, layer, x, kernel, bias)


def _linear_layer(ctx: ConversionContext, layer: Any, x: SharedTensor, kernel: np.ndarray, bias: Any) -> SharedTensor:
    w = ctx.share_weight(kernel)
    if isinstance(layer, layers.Conv2D):
        # A linear convolution right before average pooling of 2**k windows is not truncated: the pooling
        # truncates its 2**k times smaller output once, for both (the demo CNN's two convolutions).
        following = ctx.next_layer
        defer = (
            _activation_name(layer) == "linear"
            and isinstance(following, layers.AveragePooling2D)
            and following.data_format == "channels_last"
            and following.padding.upper() == "VALID"
            and divides_by_truncation(int(np.prod(following.pool_size)))
        )
        # When that pooling feeds a ReLU, the product is not even reshared: the ReLU truncates the pooled terms.
        unshared = _relu_takes_terms(ctx.later_layers[1:]) if defer else _leaves_product_unshared(ctx, layer)
        y = mpc.conv2d(x, w, strides=layer.strides, padding=layer.padding.upper(), truncate=not defer,
                       reshare=not unshared)
    else:
        # Dense acts on the last axis; leading axes are batch axes of the matmul.
        y = mpc.matmul(x, w, reshare=not _leaves_product_unshared(ctx, layer))
    if bias is not None and np.ndim(bias) > 0:
        y = y + ctx.share_weight(np.broadcast_to(bias, kernel.shape[-1:]))
    return y


@layer_converter(layers.Dense)
def _dense(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    y = _linear_layer(ctx, layer, x, layer.kernel.numpy(), layer.bias.numpy() if layer.use_bias else None)
    return _apply_activation(ctx, _activation_name(layer), y, layer)


@layer_converter(layers.Conv2D)
def _conv2d(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
        raise UnsupportedLayerError(
            f"Conv2D layer {layer.name!r}: only channels_last, dilation 1 and groups 1 are supported"
        )
    y = _linear_layer(ctx, layer, x, layer.kernel.numpy(), layer.bias.numpy() if layer.use_bias else None)
    return _apply_activation(ctx, _activation_name(layer), y, layer)


def _pool_args(layer: Any) -> tuple:
    if layer.data_format != "channels_last" or layer.padding.upper() != "VALID":
        raise UnsupportedLayerError(
            f"{type(layer).__name__} {layer.name!r}: only channels_last with padding='valid' is supported"
        )
    return tuple(layer.pool_size), tuple(layer.strides)


@layer_converter(layers.AveragePooling2D)
def _avg_pool(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    pool, strides = _pool_args(layer)
    return mpc.avg_pool2d(x, pool, strides)


@layer_converter(layers.MaxPooling2D)
def _max_pool(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    pool, strides = _pool_args(layer)
    y = mpc.max_pool2d(x, pool, strides)
    if ctx.relu_after_pooling:
        ctx.relu_after_pooling = False
        y = mpc.relu(y)
    return y


@layer_converter(layers.Activation, layers.ReLU)
def _activation(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    if isinstance(layer, layers.ReLU):
        if layer.max_value is not None or float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            raise UnsupportedLayerError(f"ReLU layer {layer.name!r}: only the plain ReLU is supported")
        return _relu(ctx, x)
    return _apply_activation(ctx, _activation_name(layer), x, layer)


@layer_converter(layers.Flatten)
def _flatten(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    return x.reshape(-1, int(np.prod(x.shape[1:])))


@layer_converter(layers.Reshape)
def _reshape(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    return x.reshape(-1, *layer.target_shape)


@layer_converter(layers.Dropout)
def _dropout(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    return x  # identity at inference


@layer_converter(layers.BatchNormalization)
def _batch_norm(ctx: ConversionContext, layer: Any, x: SharedTensor) -> SharedTensor:
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0] if len(layer.axis) == 1 else None
    if axis not in (-1, x.ndim - 1):
        raise UnsupportedLayerError(f"BatchNormalization {layer.name!r}: only the last axis is supported")
    scale, shift = _bn_affine(layer)
    return x * ctx.share_weight(scale) + ctx.share_weight(shift)
