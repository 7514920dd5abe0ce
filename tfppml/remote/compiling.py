"""Driver side of remote training: how a Keras user's compile arguments become the worker's compile spec.

The worker rebuilds the model from its JSON configuration and compiles it from a small spec (see
`tfppml.remote.models.check_compile`).  Everything the user asked for is either carried over exactly or refused
here with the argument named; nothing is silently replaced:

- the optimizer: a name ("sgd", "adam", "rmsprop", "adagrad", and the DP-SGD optimizers "dpsgd", "dpadam",
  "dpadagrad", which need `l2_norm_clip` and `noise_multiplier`), or an optimizer object of those classes
  (`tf.keras.optimizers.SGD(...)`, `tfppml.dp.DPSGD(...)`), whose learning rate (and clip norm and noise
  multiplier) are read and whose every other setting must be its default (a momentum of 0.9 would be lost, so
  it is refused);
- the loss: a name, or a Keras loss object of a built-in class (its `from_logits` is read);
- the metrics: names;
- an argument not given falls back to what `model.compile(...)` set, then to mse / sgd / 0.01 / no metrics.

Example:
    >>> spec = compile_spec(None, optimizer="dpsgd", l2_norm_clip=1.0, noise_multiplier=1.1, learning_rate=0.1,
    ...                     loss="sparse_categorical_crossentropy", from_logits=True)
    >>> spec["optimizer"], spec["noise_multiplier"], spec["from_logits"]
    ('dpsgd', 1.1, True)
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["compile_spec"]

#: Optimizer class name -> the worker's name for it.
_OPTIMIZER_NAMES = {"SGD": "sgd", "Adam": "adam", "RMSprop": "rmsprop", "Adagrad": "adagrad", "DPSGD": "dpsgd",
                    "DPAdam": "dpadam", "DPAdagrad": "dpadagrad"}  # fmt: skip
_DP_NAMES = frozenset({"dpsgd", "dpadam", "dpadagrad"})
#: Keras loss class name -> the worker's name for it.
_LOSS_NAMES = {"MeanSquaredError": "mse", "MeanAbsoluteError": "mae", "BinaryCrossentropy": "binary_crossentropy",
               "CategoricalCrossentropy": "categorical_crossentropy",
               "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy", "Huber": "huber"}  # fmt: skip
#: Optimizer config entries that are not settings (or are read separately).
_NOT_SETTINGS = frozenset({"name", "learning_rate", "is_legacy_optimizer", "jit_compile", "l2_norm_clip", "noise_multiplier"})


def compile_spec(
    model: Any,
    *,
    loss: Any = None,
    optimizer: Any = None,
    learning_rate: float | None = None,
    metrics: Sequence[str] | None = None,
    from_logits: bool | None = None,
    l2_norm_clip: float | None = None,
    noise_multiplier: float | None = None,
) -> dict[str, Any]:
    """The worker's compile spec for `model` (a Keras model, or None) and the explicit arguments.

    Raises:
      TypeError: an optimizer or loss object of a class the worker cannot build (named).
      ValueError: a setting that would be lost (e.g. an optimizer's momentum), DP arguments without a DP
        optimizer, or a DP optimizer without them.
    """
    compiled = getattr(model, "optimizer", None) is not None and getattr(model, "loss", None) is not None
    if optimizer is None and compiled:
        optimizer = model.optimizer
    if loss is None and compiled:
        loss = model.loss
    if metrics is None and compiled:
        metrics = _compiled_metrics(model)
    spec: dict[str, Any] = {}
    spec.update(_optimizer_spec("sgd" if optimizer is None else optimizer, learning_rate, l2_norm_clip,
                                noise_multiplier))  # fmt: skip
    spec.update(_loss_spec("mse" if loss is None else loss, from_logits))
    spec["metrics"] = list(metrics or [])
    return spec


def _optimizer_spec(optimizer: Any, rate: float | None, clip: float | None, noise: float | None) -> dict:
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name not in _OPTIMIZER_NAMES.values():
            raise ValueError(f"`optimizer` must be one of {sorted(_OPTIMIZER_NAMES.values())}, got {optimizer!r}")
        spec = {"optimizer": name, "learning_rate": 0.01 if rate is None else float(rate)}
    else:
        name = _OPTIMIZER_NAMES.get(type(optimizer).__name__)
        if name is None or not hasattr(optimizer, "get_config"):
            raise TypeError(
                f"`optimizer` must be a name or an optimizer of the classes {sorted(_OPTIMIZER_NAMES)}, got "
                f"{type(optimizer).__name__}"
            )
        _check_default_settings(optimizer)
        own_rate = float(optimizer.get_config()["learning_rate"])
        if rate is not None and float(rate) != own_rate:
            raise ValueError(
                f"`learning_rate`={rate!r} contradicts the optimizer's own learning rate {own_rate!r}; give one"
            )
        spec = {"optimizer": name, "learning_rate": own_rate}
        if name in _DP_NAMES:
            for key, given in (("l2_norm_clip", clip), ("noise_multiplier", noise)):
                own = float(getattr(optimizer, key))
                if given is not None and float(given) != own:
                    raise ValueError(f"`{key}`={given!r} contradicts the optimizer's own {key} {own!r}; give one")
            clip, noise = optimizer.l2_norm_clip, optimizer.noise_multiplier
    if name in _DP_NAMES:
        missing = [key for key, value in (("l2_norm_clip", clip), ("noise_multiplier", noise)) if value is None]
        if missing:
            raise ValueError(f"optimizer {name!r} needs {missing} (the per-example clip norm and the noise scale)")
        spec.update(l2_norm_clip=float(clip), noise_multiplier=float(noise))
    elif clip is not None or noise is not None:
        raise ValueError(
            f"`l2_norm_clip` and `noise_multiplier` apply to the DP optimizers {sorted(_DP_NAMES)}, not to {name!r}"
        )
    return spec


def _check_default_settings(optimizer: Any) -> None:
    """Refuses an optimizer object with a non-default setting the worker's spec cannot carry."""
    kind = type(optimizer)
    dp = _OPTIMIZER_NAMES[kind.__name__] in _DP_NAMES
    try:
        reference = kind(l2_norm_clip=1.0, noise_multiplier=1.0) if dp else kind()
    except TypeError:  # pragma: no cover - a subclass with other required arguments
        raise TypeError(f"`optimizer`: cannot compare {kind.__name__}'s settings with its defaults") from None
    mine, default = optimizer.get_config(), reference.get_config()
    changed = sorted(key for key in mine if key not in _NOT_SETTINGS and mine[key] != default.get(key))
    if changed:
        raise ValueError(
            f"`optimizer` {kind.__name__} sets {', '.join(f'{k}={mine[k]!r}' for k in changed)}; the remote "
            "worker honours the learning rate (and a DP optimizer's clip norm and noise multiplier) only, so it "
            "refuses other settings rather than drop them"
        )


def _loss_spec(loss: Any, from_logits: bool | None) -> dict:
    if isinstance(loss, str):
        return {"loss": loss, "from_logits": bool(from_logits)}
    name = _LOSS_NAMES.get(type(loss).__name__)
    if name is None or not hasattr(loss, "get_config"):
        raise TypeError(
            f"`loss` must be a name or a Keras loss object of the classes {sorted(_LOSS_NAMES)}, got "
            f"{type(loss).__name__}"
        )
    config = loss.get_config()
    own = bool(config.get("from_logits", False))
    if from_logits is not None and bool(from_logits) != own:
        raise ValueError(f"`from_logits`={from_logits!r} contradicts the loss object's from_logits={own!r}")
    settings = {k: v for k, v in config.items() if k not in ("name", "reduction", "from_logits")}
    defaults = {k: v for k, v in type(loss)().get_config().items() if k not in ("name", "reduction", "from_logits")}
    if settings != defaults or config.get("reduction") not in ("auto", "sum_over_batch_size"):
        raise ValueError(
            f"`loss` {type(loss).__name__} has settings {config} beyond from_logits; the remote worker would drop "
            "them, so it refuses the loss"
        )
    return {"loss": name, "from_logits": own}


def _compiled_metrics(model: Any) -> list[str]:
    """The metric names `model.compile(metrics=...)` was given (plain names only)."""
    config = model.get_compile_config() if hasattr(model, "get_compile_config") else None
    metrics = (config or {}).get("metrics") or []
    if isinstance(metrics, (str, dict)):
        metrics = [metrics]
    if not all(isinstance(m, str) for m in metrics):
        raise ValueError(
            f"the model was compiled with metrics {metrics!r}; the remote worker takes metric names only: pass "
            "`metrics=[...]` to fit"
        )
    return list(metrics)
