"""Models a driver sends to a remote worker: the Keras configuration allow-list, compile arguments, building.

A model arrives as a Keras JSON configuration plus weight arrays, never as pickle or h5: every class name,
module and activation in the configuration is on an allow-list (no Lambda layers, no custom objects, no code).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["DP_OPTIMIZERS", "build_model", "check_compile", "check_model_config", "model_bytes", "size_spec"]

# Keras classes a model configuration may name (layers, initializers, regularizers, constraints, containers).
_ALLOWED_CLASSES = frozenset(
    {
        "Sequential", "Functional", "Model", "InputLayer", "Dense", "Flatten", "Reshape", "Dropout",
        "Activation", "ReLU", "Softmax", "LeakyReLU", "BatchNormalization", "LayerNormalization", "Conv1D",
        "Conv2D", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Embedding", "Concatenate",
        "Add", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal",
        "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal", "Orthogonal",
        "L1", "L2", "L1L2", "MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm",
    }
)  # fmt: skip
_ALLOWED_MODULES = frozenset(
    {None, "keras", "keras.layers", "keras.initializers", "keras.regularizers", "keras.constraints",
     "keras.models", "keras.src.engine.functional", "keras.engine.functional"}
)  # fmt: skip
_ALLOWED_ACTIVATIONS = frozenset(
    {"linear", "relu", "sigmoid", "softmax", "tanh", "elu", "selu", "softplus", "softsign", "gelu", "swish",
     "exponential", "hard_sigmoid", "leaky_relu", "relu6", "silu"}
)  # fmt: skip
_LOSSES = frozenset(
    {"mse", "mae", "mean_squared_error", "mean_absolute_error", "binary_crossentropy",
     "categorical_crossentropy", "sparse_categorical_crossentropy", "huber"}
)  # fmt: skip
_METRICS = frozenset({"accuracy", "mse", "mae", "binary_accuracy", "sparse_categorical_accuracy"})
_OPTIMIZER_CLASSES = {
    "sgd": lambda **kw: _keras().optimizers.SGD(**kw),
    "adam": lambda **kw: _keras().optimizers.Adam(**kw),
    "rmsprop": lambda **kw: _keras().optimizers.RMSprop(**kw),
    "adagrad": lambda **kw: _keras().optimizers.Adagrad(**kw),
    "dpsgd": lambda **kw: _dp().DPSGD(**kw),
    "dpadam": lambda **kw: _dp().DPAdam(**kw),
    "dpadagrad": lambda **kw: _dp().DPAdagrad(**kw),
}
_OPTIMIZERS = frozenset(_OPTIMIZER_CLASSES)
#: The DP-SGD optimizers (tfppml.dp): they need `l2_norm_clip` and `noise_multiplier`, and a fit with them is
#: accounted and charged against the data set's DP budget.
DP_OPTIMIZERS = frozenset({"dpsgd", "dpadam", "dpadagrad"})
#: Losses by name -> their Keras class (built as objects, so that from_logits is honoured).
_LOSS_CLASSES = {
    "mse": "MeanSquaredError", "mean_squared_error": "MeanSquaredError", "mae": "MeanAbsoluteError",
    "mean_absolute_error": "MeanAbsoluteError", "binary_crossentropy": "BinaryCrossentropy",
    "categorical_crossentropy": "CategoricalCrossentropy",
    "sparse_categorical_crossentropy": "SparseCategoricalCrossentropy", "huber": "Huber",
}  # fmt: skip
_LOGIT_LOSSES = frozenset({"binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy"})


def _dp() -> Any:
    import tfppml.dp

    return tfppml.dp


def _keras() -> Any:
    import tensorflow as tf

    return tf.keras


def check_model_config(config: Any, *, where: str = "`model`") -> None:
    """Checks a Keras model configuration against the allow-list (no Lambda, no custom objects, no code).

    Args:
      config: The parsed JSON configuration (`json.loads(model.to_json())`).
      where: Name used in messages.

    Raises:
      ValueError: A class, module or activation that is not allowed, or something that is not plain data;
        the message names it and its path.

    Example:
      >>> check_model_config({"class_name": "Sequential", "config": {"layers": [{"class_name": "Lambda"}]}})
      Traceback (most recent call last):
      ...
      ValueError: `model` names class 'Lambda' at model.config.layers[0].class_name, which is not allowed; ...
    """

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > 64:
            raise ValueError(f"{where} is nested too deeply at {path}")
        if isinstance(node, dict):
            if "class_name" in node:
                name = node["class_name"]
                if name not in _ALLOWED_CLASSES:
                    raise ValueError(
                        f"{where} names class {name!r} at {path}.class_name, which is not allowed; allowed: "
                        f"{sorted(_ALLOWED_CLASSES)}"
                    )
                if node.get("module") not in _ALLOWED_MODULES or node.get("registered_name") not in (
                    None,
                    name,
                ):
                    raise ValueError(
                        f"{where}: {path} comes from module {node.get('module')!r} / registered name "
                        f"{node.get('registered_name')!r}; only built-in Keras objects are allowed"
                    )
            for key, value in node.items():
                if key in ("function", "function_type", "module_name", "custom_objects"):
                    raise ValueError(
                        f"{where}: {path}.{key} is not allowed (no code in model configurations)"
                    )
                if key == "activation" and isinstance(value, str) and value not in _ALLOWED_ACTIVATIONS:
                    raise ValueError(
                        f"{where}: activation {value!r} at {path}.activation is not allowed; allowed: "
                        f"{sorted(_ALLOWED_ACTIVATIONS)}"
                    )
                walk(value, f"{path}.{key}", depth + 1)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]", depth + 1)
        elif not isinstance(node, (str, int, float, bool, type(None))):
            raise ValueError(f"{where}: {path} holds a {type(node).__name__}, not plain JSON")

    if not isinstance(config, dict) or config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise ValueError(f"{where} must be a Sequential or Functional model configuration")
    walk(config, "model", 0)


def check_compile(spec: Any) -> dict[str, Any]:
    """The compile arguments a driver sent, checked: every field is honoured or refused (named).

    Raises:
      ValueError: an unknown field, or a value outside what the worker can build.
    """
    if not isinstance(spec, dict):
        raise ValueError(
            f"`compile` must be a mapping with loss/optimizer/metrics, got {type(spec).__name__}"
        )
    unknown = sorted(set(spec) - {"loss", "optimizer", "learning_rate", "metrics", "from_logits", "l2_norm_clip",
                                  "noise_multiplier"})
    if unknown:
        raise ValueError(f"`compile` has unknown field(s) {unknown}")
    loss = spec.get("loss", "mse")
    if loss not in _LOSSES:
        raise ValueError(f"`compile.loss` must be one of {sorted(_LOSSES)}, got {loss!r}")
    optimizer = spec.get("optimizer", "sgd")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"`compile.optimizer` must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
    rate = spec.get("learning_rate", 0.01)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 100:
        raise ValueError(f"`compile.learning_rate` must be a number in (0, 100), got {rate!r}")
    metrics = spec.get("metrics", [])
    if not isinstance(metrics, list) or any(m not in _METRICS for m in metrics):
        raise ValueError(f"`compile.metrics` must be a list drawn from {sorted(_METRICS)}, got {metrics!r}")
    from_logits = spec.get("from_logits", False)
    if not isinstance(from_logits, bool):
        raise ValueError(f"`compile.from_logits` must be a bool, got {from_logits!r}")
    if from_logits and loss not in _LOGIT_LOSSES:
        raise ValueError(f"`compile.from_logits` applies to {sorted(_LOGIT_LOSSES)} only, not to loss {loss!r}")
    checked = {"loss": loss, "optimizer": optimizer, "learning_rate": float(rate), "metrics": list(metrics),
               "from_logits": from_logits}  # fmt: skip
    dp_fields = [key for key in ("l2_norm_clip", "noise_multiplier") if key in spec]
    if optimizer in DP_OPTIMIZERS:
        for key, high in (("l2_norm_clip", 1e6), ("noise_multiplier", 1e3)):
            value = spec.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
                raise ValueError(
                    f"`compile.{key}` must be a number in (0, {high:g}] for optimizer {optimizer!r}, got {value!r}"
                )
            checked[key] = float(value)
    elif dp_fields:
        raise ValueError(
            f"`compile` fields {dp_fields} apply to the DP optimizers {sorted(DP_OPTIMIZERS)} only, not to "
            f"{optimizer!r}"
        )
    return checked


#: Optimizer state per weight (Adam keeps two moments, RMSprop and Adagrad one accumulator, plain SGD none).
_SLOTS = {"sgd": 0, "adam": 2, "rmsprop": 1, "adagrad": 1, "dpsgd": 0, "dpadam": 2, "dpadagrad": 1}


def size_spec(spec: dict[str, Any]) -> Any:
    """The `tfppml.remote.sizing.ModelSize` of a spec's model configuration, checked, without building it.

    Raises:
      TypeError, ValueError: not a JSON configuration of at most 1 MiB, not allowed, or not sizable (named).
    """
    from tfppml.remote.sizing import size_model

    config = spec.get("model")
    if not isinstance(config, str) or len(config) > 1 << 20:
        raise TypeError("`model` must be a Keras model's JSON configuration (str, at most 1 MiB)")
    try:
        parsed = json.loads(config)
    except ValueError as err:
        raise ValueError(f"`model` is not valid JSON: {err}") from None
    check_model_config(parsed)
    return size_model(parsed)


def model_bytes(size: Any, optimizer: str) -> int:
    """Bytes a compiled model holds: its weights and its optimizer's state."""
    return size.param_bytes * (1 + _SLOTS[optimizer])


def build_model(spec: dict[str, Any], tensors: dict[str, np.ndarray]) -> Any:
    """Builds and compiles the model of a checked `spec` ({"model": JSON, "compile": check_compile(...)}) with
    the weight arrays "w0".."wN" (TF's Keras state is process-wide: the caller serialises builds).

    Raises:
      TypeError, ValueError: the configuration is not allowed, or the weights do not fit it (named).
    """
    import tensorflow as tf

    config = spec.get("model")
    if not isinstance(config, str) or len(config) > 1 << 20:
        raise TypeError("`model` must be a Keras model's JSON configuration (str, at most 1 MiB)")
    try:
        parsed = json.loads(config)
    except ValueError as err:
        raise ValueError(f"`model` is not valid JSON: {err}") from None
    check_model_config(parsed)
    from tfppml.remote.sizing import size_model

    size = size_model(parsed)  # the configuration is parsed and checked above: size it as it is
    try:
        # Built with zero initializers: every weight is overwritten by set_weights below, and an initializer's
        # cost is not in any estimate (an orthogonal 20 M parameter kernel took 12 s under the build lock).
        model = tf.keras.models.model_from_json(json.dumps(_zero_initializers(parsed)))
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as err:
        raise ValueError(f"`model` could not be built: {type(err).__name__}: {str(err)[:300]}") from None
    if model.count_params() != size.params:  # defence in depth: the sizing must describe what was built
        raise ValueError(
            f"`model` built {model.count_params()} parameters but its configuration was sized at {size.params}; "
            "refused (please report this configuration)"
        )
    expected = model.get_weights()
    names = [f"w{i}" for i in range(len(expected))]
    if sorted(tensors) != sorted(names):
        raise ValueError(
            f"the model has {len(expected)} weight arrays; send tensors {names[:3]}..., "
            f"got {sorted(tensors)[:5]}"
        )
    for key, want in zip(names, expected):
        got = tensors[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"weight {key} has shape {list(got.shape)} and dtype {got.dtype.name}; the model expects "
                f"{list(want.shape)} {want.dtype.name}"
            )
    model.set_weights([tensors[key] for key in names])
    comp = spec["compile"]
    options = {"learning_rate": comp["learning_rate"]}
    if comp["optimizer"] in DP_OPTIMIZERS:
        options.update(l2_norm_clip=comp["l2_norm_clip"], noise_multiplier=comp["noise_multiplier"])
    optimizer = _OPTIMIZER_CLASSES[comp["optimizer"]](**options)
    # A loss object, not a name: `tf.keras.losses.get` of a class-name config returns the plain function and
    # silently drops from_logits (a model trained on logits as if they were probabilities).
    loss_class = getattr(tf.keras.losses, _LOSS_CLASSES[comp["loss"]])
    loss = loss_class(from_logits=True) if comp["from_logits"] else loss_class()
    model.compile(optimizer=optimizer, loss=loss, metrics=comp["metrics"])
    return model


def _zero_initializers(node: Any) -> Any:
    """A copy of a configuration with every ``*_initializer`` replaced by Zeros."""
    if isinstance(node, list):
        return [_zero_initializers(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: {"class_name": "Zeros", "config": {}} if key.endswith("_initializer") and isinstance(value, dict)
        else _zero_initializers(value)
        for key, value in node.items()
    }  # fmt: skip
