"""The size of a Keras model from its configuration alone, before anything is built or allocated.

A 968-byte configuration can declare a Dense layer of 15000 x 15000 (225 million parameters, gigabytes and
seconds of CPU to initialise) or nineteen nested Concatenate layers whose activations double at each level:
building the model to find out is the attack.  `size_model` walks the checked configuration (see
`tfppml.remote.models.check_model_config`) with the shape rules of every allowed layer and returns its parameter
count, its activations per example and an estimate of its arithmetic per example.  A layer's ``build_config``
(the shape Keras would build it with) must agree with the shape the layer receives, since Keras builds from it.

Only fixed shapes can be sized: every dimension but the batch must be declared.  Single-input, single-output
Sequential and Functional models (Keras 2 configuration format) are supported; anything else is refused with a
message naming the layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ModelSize", "size_model"]

#: Largest dimension accepted in a configuration (also keeps the arithmetic below small integers).
MAX_DIM = 1 << 31
#: Most layer calls in one configuration: 700 weightless layers took 16 s to build (2000: a RecursionError after
#: 49 s), under the build lock every identity shares.
MAX_LAYERS = 128
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelSize:
    """A model's size from its configuration.

    Attributes:
      params: Number of weights (trainable or not).
      activations: Elements of every layer output for one example (the input included).
      flops: Estimated floating-point operations of one example's forward pass (2 per multiply-add of Dense and
        convolution layers, one per element elsewhere): an estimate, used for limits only.
      input_shape, output_shape: One example's shapes (no batch axis).
      itemsize: Bytes per element of the model's float type.
      largest_layer: Parameters of the largest layer (bounds a per-example gradient of one layer).
      layers: Layer calls in the configuration, nested models' included (building and tracing take time in
        their number, with no weights at all).
    """

    params: int
    activations: int
    flops: int
    input_shape: Shape
    output_shape: Shape
    itemsize: int
    largest_layer: int
    layers: int = 0

    @property
    def param_bytes(self) -> int:
        return self.params * self.itemsize

    def batch_bytes(self, batch: int, training: bool, per_example_grads: bool = False) -> int:
        """Estimated bytes of one batch's activations (training keeps them for the backward pass, with their
        gradients: counted twice; DP-SGD may materialise one layer's per-example gradients)."""
        size = batch * self.activations * self.itemsize * (2 if training else 1)
        if per_example_grads:
            size += batch * self.largest_layer * self.itemsize
        return size


class _Walk:
    def __init__(self) -> None:
        self.params = 0
        self.activations = 0
        self.flops = 0
        self.largest = 0
        self.itemsize = 4
        self.layers = 0


def size_model(config: dict[str, Any]) -> ModelSize:
    """Sizes a checked model configuration (`json.loads(model.to_json())`).

    Raises:
      ValueError: a shape that is not declared or not consistent, a layer or format that cannot be sized,
        or a ``build_config`` that disagrees with what the layer receives (named with the layer).
    """
    walk = _Walk()
    cls = config.get("class_name")
    body = config.get("config")
    if not isinstance(body, dict):
        raise ValueError("`model`: the configuration has no 'config' mapping")
    if cls == "Sequential":
        inputs, output = _sequential(body, None, walk, "model")
    else:
        inputs, output = _functional(body, walk, "model")
    return ModelSize(walk.params, walk.activations, walk.flops, inputs, output, walk.itemsize, walk.largest,
                     walk.layers)


# -- containers


def _sequential(body: dict[str, Any], given: Shape | None, walk: _Walk, where: str) -> tuple[Shape, Shape]:
    layers = body.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"`model`: {where} has no layers")
    shape = given
    start = 0
    first = layers[0]
    if isinstance(first, dict) and first.get("class_name") == "InputLayer":
        declared = _input_shape(first.get("config", {}), f"{where}.layers[0]")
        if shape is not None and declared != shape:
            raise ValueError(f"`model`: {where} declares input {list(declared)} but receives {list(shape)}")
        shape = declared
        walk.activations += math.prod(shape)
        start = 1
    elif isinstance(first, dict) and isinstance(first.get("config"), dict) and "batch_input_shape" in first["config"]:
        declared = _input_shape(first["config"], f"{where}.layers[0]")
        # Keras builds a nested Sequential from its first layer's declared shape, whatever it is called on: a
        # declared shape that differs from the one received built a 100 M parameter model sized at 10,000.
        if shape is not None and declared != shape:
            raise ValueError(
                f"`model`: {where}.layers[0] declares batch_input_shape {[None, *declared]} but the model receives "
                f"{[None, *shape]} (Keras would build it with the declared shape)"
            )
        if shape is None:
            shape = declared
            walk.activations += math.prod(shape)
    if shape is None:
        raise ValueError(
            f"`model`: {where} declares no input shape (add tf.keras.Input(shape=...) first): the worker sizes a "
            "model before building it"
        )
    built = body.get("build_input_shape")
    if built is not None and built != [None, *shape]:
        raise ValueError(
            f"`model`: {where}.build_input_shape is {built!r} but the model receives {[None, *shape]} (Keras would "
            "build it with the declared shape)"
        )
    begin = shape
    for index in range(start, len(layers)):
        shape = _apply(layers[index], [shape], walk, f"{where}.layers[{index}]")
    return begin, shape


def _functional(body: dict[str, Any], walk: _Walk, where: str) -> tuple[Shape, Shape]:
    layers = body.get("layers")
    ins, outs = body.get("input_layers"), body.get("output_layers")
    if not isinstance(layers, list) or not isinstance(ins, list) or not isinstance(outs, list):
        raise ValueError(f"`model`: {where} is not a Keras 2 functional configuration (layers/input_layers/...)")
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(
            f"`model`: remote models take one input and give one output; this one has {len(ins)} inputs and "
            f"{len(outs)} outputs"
        )
    shapes: dict[tuple[str, int], Shape] = {}
    built: dict[str, Shape | None] = {}
    for index, layer in enumerate(layers):
        path = f"{where}.layers[{index}]"
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            raise ValueError(f"`model`: {path} is not a named layer")
        name = layer["name"]
        if name in built:
            raise ValueError(f"`model`: {path} repeats the layer name {name!r}")
        nodes = layer.get("inbound_nodes")
        if layer.get("class_name") == "InputLayer":
            shape = _input_shape(layer.get("config", {}), path)
            shapes[(name, 0)] = shape
            walk.activations += math.prod(shape)
            built[name] = shape
            continue
        if not isinstance(nodes, list) or not nodes:
            raise ValueError(f"`model`: {path} ({name!r}) is not connected (no inbound_nodes)")
        built[name] = None
        counted = False
        # Keras numbers a nested model's calls after the node its own InputLayer made (its first node is skipped).
        offset = 1 if _has_own_input(layer) else 0
        for node_index, node in enumerate(nodes):
            inputs = []
            if not isinstance(node, list) or not node:
                raise ValueError(f"`model`: {path}.inbound_nodes[{node_index}] must be a list of inputs")
            for entry in node:
                if not (isinstance(entry, list) and len(entry) in (3, 4) and isinstance(entry[0], str)
                        and entry[1:3] and all(isinstance(v, int) and not isinstance(v, bool) for v in entry[1:3])):
                    raise ValueError(f"`model`: {path}.inbound_nodes[{node_index}] has a malformed input {entry!r}")
                if entry[2] != 0 or (len(entry) == 4 and entry[3] not in ({}, None)):
                    raise ValueError(
                        f"`model`: {path}.inbound_nodes[{node_index}] passes call arguments or a tensor index "
                        f"({entry!r}); only plain calls can be sized"
                    )
                source = (entry[0], entry[1])
                if source not in shapes:
                    raise ValueError(
                        f"`model`: {path} takes {entry[0]!r} node {entry[1]} before it is defined (layers must be "
                        "listed in order, as Keras writes them)"
                    )
                inputs.append(shapes[source])
            # A shared layer's weights are counted once; every call adds its activations.
            before = walk.params
            shapes[(name, node_index + offset)] = _apply(layer, inputs, walk, path)
            if counted:
                walk.params = before
            counted = True
    ends = []
    for which, entry in (("input_layers", ins[0]), ("output_layers", outs[0])):
        if not (isinstance(entry, list) and len(entry) == 3 and (entry[0], entry[1]) in shapes):
            raise ValueError(f"`model`: {where}.{which} names an unknown layer: {entry!r}")
        ends.append(shapes[(entry[0], entry[1])])
    return ends[0], ends[1]


def _has_own_input(layer: dict[str, Any]) -> bool:
    if layer.get("class_name") != "Sequential" or not isinstance(layer.get("config"), dict):
        return False
    layers = layer["config"].get("layers")
    first = layers[0] if isinstance(layers, list) and layers else None
    return isinstance(first, dict) and (
        first.get("class_name") == "InputLayer"
        or (isinstance(first.get("config"), dict) and "batch_input_shape" in first["config"])
    )


# -- layers


def _input_shape(config: dict[str, Any], where: str) -> Shape:
    shape = config.get("batch_input_shape")
    if not isinstance(shape, list) or len(shape) < 2:
        raise ValueError(f"`model`: {where} must declare batch_input_shape [None, ...], got {shape!r}")
    return _dims(shape[1:], f"{where}.batch_input_shape")


def _dims(values: Any, where: str) -> Shape:
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DIM for v in values
    ):
        raise ValueError(
            f"`model`: {where} must be a list of fixed dimensions in [1, {MAX_DIM}] (no None: the worker sizes "
            f"models before building them), got {values!r}"
        )
    return tuple(values)


def _tuple(value: Any, rank: int, where: str, *, allow_none: bool = False) -> Shape | None:
    if value is None and allow_none:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * rank
    if not isinstance(value, list) or len(value) != rank:
        raise ValueError(f"`model`: {where} must be an int or a list of {rank} ints, got {value!r}")
    return _dims(value, where)


def _apply(layer: Any, inputs: list[Shape], walk: _Walk, where: str) -> Shape:
    if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
        raise ValueError(f"`model`: {where} is not a layer configuration")
    cls, config = layer.get("class_name"), layer["config"]
    walk.layers += 1
    if walk.layers > MAX_LAYERS:
        raise ValueError(
            f"`model`: more than {MAX_LAYERS} layers (at {where}): the worker builds models under a lock, and "
            "building takes time in the number of layers, with or without weights"
        )
    declared = layer.get("build_config", {}).get("input_shape") if isinstance(layer.get("build_config"), dict) else None
    if declared is not None:
        expected = [None, *inputs[0]] if len(inputs) == 1 else [[None, *s] for s in inputs]
        if declared != expected:
            raise ValueError(
                f"`model`: {where}.build_config.input_shape is {declared!r} but the layer receives {expected!r} "
                "(Keras would build it with the declared shape)"
            )
    if cls == "Sequential":
        if len(inputs) != 1:
            raise ValueError(f"`model`: {where} (a nested Sequential) takes one input")
        return _sequential(config, inputs[0], walk, where)[1]
    rule = _RULES.get(cls)
    if rule is None:
        raise ValueError(f"`model`: {where} is a {cls!r}, which the worker cannot size (nest no functional models)")
    dtype = config.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype not in _ITEMSIZE:
        raise ValueError(f"`model`: {where}.dtype must be one of {sorted(_ITEMSIZE)}, got {dtype!r}")
    walk.itemsize = max(walk.itemsize, _ITEMSIZE[dtype])
    if cls not in ("Concatenate", "Add") and len(inputs) != 1:
        raise ValueError(f"`model`: {where} ({cls}) takes one input, got {len(inputs)}")
    shape, params, flops = rule(config, inputs, where)
    walk.params += params
    walk.largest = max(walk.largest, params)
    walk.activations += math.prod(shape)
    walk.flops += flops
    return shape


def _same(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    return inputs[0], 0, math.prod(inputs[0])


def _dense(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    units = _tuple(config.get("units"), 1, f"{where}.units")[0]
    shape = inputs[0]
    inner = shape[-1]
    params = inner * units + (units if config.get("use_bias", True) else 0)
    return shape[:-1] + (units,), params, 2 * inner * units * math.prod(shape[:-1])


def _flatten(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    return (math.prod(inputs[0]),), 0, 0


def _reshape(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    target = config.get("target_shape")
    total = math.prod(inputs[0])
    if not isinstance(target, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in target) or (
        sum(1 for v in target if v == -1) > 1 or any(v == 0 or v < -1 for v in target)
    ):
        raise ValueError(f"`model`: {where}.target_shape must be positive ints with at most one -1, got {target!r}")
    known = math.prod(v for v in target if v != -1)
    if -1 in target:
        if total % known:
            raise ValueError(f"`model`: {where} cannot reshape {list(inputs[0])} into {target}")
        target = [total // known if v == -1 else v for v in target]
    if math.prod(target) != total:
        raise ValueError(f"`model`: {where} cannot reshape {list(inputs[0])} into {target}")
    return tuple(target), 0, 0


def _axes(config: dict, rank: int, where: str) -> list[int]:
    axis = config.get("axis", -1)
    axes = axis if isinstance(axis, list) else [axis]
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int) or not -(rank + 1) <= a <= rank or a == 0:
            raise ValueError(f"`model`: {where}.axis must name non-batch axes of a rank-{rank + 1} input, got {axis!r}")
        out.append((a % (rank + 1)) - 1)
    return out


def _normalization(config: dict, inputs: list[Shape], where: str, stats: int) -> tuple[Shape, int, int]:
    shape = inputs[0]
    size = math.prod(shape[a] for a in _axes(config, len(shape), where))
    params = size * (stats + int(config.get("center", True)) + int(config.get("scale", True)))
    return shape, params, 4 * math.prod(shape)


def _conv(config: dict, inputs: list[Shape], where: str, rank: int) -> tuple[Shape, int, int]:
    shape = inputs[0]
    if len(shape) != rank + 1:
        raise ValueError(f"`model`: {where} needs inputs of rank {rank + 2} (with the batch), got {len(shape) + 1}")
    if config.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"`model`: {where}.data_format must be 'channels_last' to be sized")
    filters = _tuple(config.get("filters"), 1, f"{where}.filters")[0]
    kernel = _tuple(config.get("kernel_size"), rank, f"{where}.kernel_size")
    strides = _tuple(config.get("strides", 1), rank, f"{where}.strides")
    dilation = _tuple(config.get("dilation_rate", 1), rank, f"{where}.dilation_rate")
    groups = _tuple(config.get("groups", 1), 1, f"{where}.groups")[0]
    channels = shape[-1]
    if channels % groups or filters % groups:
        raise ValueError(f"`model`: {where}.groups={groups} must divide the {channels} channels and the filters")
    spatial = _windows(shape[:-1], kernel, strides, dilation, config.get("padding", "valid"), where)
    per_position = math.prod(kernel) * (channels // groups) * filters
    params = per_position + (filters if config.get("use_bias", True) else 0)
    return spatial + (filters,), params, 2 * per_position * math.prod(spatial)


def _windows(spatial: Shape, kernel: Shape, strides: Shape, dilation: Shape, padding: Any, where: str) -> Shape:
    out = []
    for n, k, s, d in zip(spatial, kernel, strides, dilation):
        if padding in ("same", "causal"):
            out.append(-(-n // s))
        elif padding == "valid":
            span = d * (k - 1) + 1
            if span > n:
                raise ValueError(f"`model`: {where}: a window of {span} does not fit in a dimension of {n}")
            out.append((n - span) // s + 1)
        else:
            raise ValueError(f"`model`: {where}.padding must be 'valid' or 'same', got {padding!r}")
    return tuple(out)


def _pool(config: dict, inputs: list[Shape], where: str, rank: int) -> tuple[Shape, int, int]:
    shape = inputs[0]
    if len(shape) != rank + 1:
        raise ValueError(f"`model`: {where} needs inputs of rank {rank + 2} (with the batch), got {len(shape) + 1}")
    if config.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"`model`: {where}.data_format must be 'channels_last' to be sized")
    pool = _tuple(config.get("pool_size", 2), rank, f"{where}.pool_size")
    strides = _tuple(config.get("strides"), rank, f"{where}.strides", allow_none=True) or pool
    spatial = _windows(shape[:-1], pool, strides, (1,) * rank, config.get("padding", "valid"), where)
    return spatial + (shape[-1],), 0, math.prod(pool) * math.prod(spatial) * shape[-1]


def _global_pool(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    shape = inputs[0]
    if config.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"`model`: {where}.data_format must be 'channels_last' to be sized")
    out = (1,) * (len(shape) - 1) + (shape[-1],) if config.get("keepdims") else (shape[-1],)
    return out, 0, math.prod(shape)


def _embedding(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    vocabulary = _tuple(config.get("input_dim"), 1, f"{where}.input_dim")[0]
    width = _tuple(config.get("output_dim"), 1, f"{where}.output_dim")[0]
    return inputs[0] + (width,), vocabulary * width, math.prod(inputs[0]) * width


def _concatenate(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    rank = len(inputs[0])
    if len(inputs) < 2 or any(len(s) != rank for s in inputs):
        raise ValueError(f"`model`: {where} concatenates at least two inputs of one rank, got {inputs!r}")
    axis = _axes(config, rank, where)[0]
    rest = {s[:axis] + s[axis + 1 :] for s in inputs}
    if len(rest) != 1:
        raise ValueError(f"`model`: {where} cannot concatenate shapes {[list(s) for s in inputs]} on axis {axis + 1}")
    shape = list(inputs[0])
    shape[axis] = sum(s[axis] for s in inputs)
    return tuple(shape), 0, math.prod(shape)


def _add(config: dict, inputs: list[Shape], where: str) -> tuple[Shape, int, int]:
    if len(inputs) < 2 or len(set(inputs)) != 1:
        raise ValueError(f"`model`: {where} adds at least two inputs of one shape, got {[list(s) for s in inputs]}")
    return inputs[0], 0, len(inputs) * math.prod(inputs[0])


_RULES: dict[str, Callable[[dict, list[Shape], str], tuple[Shape, int, int]]] = {
    "Dense": _dense,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Dropout": _same,
    "Activation": _same,
    "ReLU": _same,
    "Softmax": _same,
    "LeakyReLU": _same,
    "BatchNormalization": lambda c, i, w: _normalization(c, i, w, stats=2),
    "LayerNormalization": lambda c, i, w: _normalization(c, i, w, stats=0),
    "Conv1D": lambda c, i, w: _conv(c, i, w, 1),
    "Conv2D": lambda c, i, w: _conv(c, i, w, 2),
    "MaxPooling1D": lambda c, i, w: _pool(c, i, w, 1),
    "MaxPooling2D": lambda c, i, w: _pool(c, i, w, 2),
    "AveragePooling1D": lambda c, i, w: _pool(c, i, w, 1),
    "AveragePooling2D": lambda c, i, w: _pool(c, i, w, 2),
    "GlobalAveragePooling1D": _global_pool,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "Embedding": _embedding,
    "Concatenate": _concatenate,
    "Add": _add,
}
