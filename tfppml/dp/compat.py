"""TF Privacy's optimizer names, so code written for ``tensorflow_privacy`` runs with the import changed.

    from tfppml.dp import DPKerasSGDOptimizer          # was: from tensorflow_privacy import ...
    optimizer = DPKerasSGDOptimizer(l2_norm_clip=1.0, noise_multiplier=1.1, num_microbatches=250,
                                    learning_rate=0.25)
    loss = tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.losses.Reduction.NONE)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=250)

Each name is a thin adapter over `tfppml.dp.DPSGD` / `DPAdam` / `DPAdagrad` (the same training step, the same
per-example clipping and noise) that takes TF Privacy's arguments and states what each means here:

- Positional order ``(l2_norm_clip, noise_multiplier, num_microbatches, *args)``, the further positional
  arguments going to the Keras optimizer in its own order (``learning_rate`` first), as in TF Privacy up to 0.8
  and in the tutorials written for it. (TF Privacy 0.9.0 put ``gradient_accumulation_steps`` fourth; here it
  is keyword-only, so a positional learning rate is never taken for it.)
- ``num_microbatches``: None or the batch size means one example per microbatch, which is what tfppml always
  does. Any other value is refused when the batch arrives: TF Privacy would clip the mean gradient of each
  group of examples together, and under add-or-remove-one adjacency that doubles the sensitivity (its own
  privacy statement says so with ``used_microbatching``) for the same noise, so the epsilon printed for the
  run would be wrong; per-example clipping has no such factor and costs nothing extra here.
- ``gradient_accumulation_steps``: 1 only (refused otherwise: accumulating noised steps changes the sampling
  the accountant assumes).
- A loss with ``reduction=NONE`` (TF Privacy asks for per-example losses) is accepted by these names and
  averaged over the batch, which is TF Privacy's meaning of it. The native `tfppml.dp.DPSGD` keeps refusing
  it, since for a plain Keras optimizer an unreduced loss means a *sum*.
- ``DPGradientDescentGaussianOptimizer`` (TF Privacy's v1 name) is `DPKerasSGDOptimizer` with its
  ``unroll_microbatches`` flag accepted (it only chose how TF Privacy looped; the result is the same).

The accounting is `tfppml.dp.compute_epsilon` (Poisson sampling by default; Keras's shuffled batches earn no
amplification: pass ``poisson=False`` for them or sample with `tfppml.dp.poisson_sample`).
"""

from __future__ import annotations

import inspect
from typing import Any

import tensorflow as tf

from tfppml.dp.optimizers import DPAdagrad, DPAdam, DPSGD

__all__ = [
    "DPGradientDescentGaussianOptimizer",
    "DPKerasAdagradOptimizer",
    "DPKerasAdamOptimizer",
    "DPKerasSGDOptimizer",
]


def _positional_names(keras_class: type) -> list[str]:
    """The Keras optimizer's own positional parameters, in order (learning_rate, momentum, ...)."""
    parameters = list(inspect.signature(keras_class.__init__).parameters.values())[1:]
    return [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def _unreduced(model: tf.keras.Model) -> bool:
    """Whether the model's compiled loss is unreduced (reduction NONE), as TF Privacy tells users to compile."""
    # model.loss is what was passed to compile (public in Keras 2 and 3); a name or function has no reduction.
    return any(getattr(obj, "reduction", None) == "none" for obj in tf.nest.flatten(getattr(model, "loss", None)))


class _TFPrivacyArguments:
    """TF Privacy's constructor arguments on top of a tfppml DP optimizer (see the module docstring)."""

    _tf_privacy_name = ""
    _max_positional: int | None = None

    def __init__(
        self,
        l2_norm_clip: float,
        noise_multiplier: float,
        num_microbatches: int | None = None,
        *args: Any,
        gradient_accumulation_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        name = self._tf_privacy_name
        if num_microbatches is not None and (
            isinstance(num_microbatches, bool) or not isinstance(num_microbatches, int) or num_microbatches < 1
        ):
            raise ValueError(f"{name}: `num_microbatches` must be None or a positive int, got {num_microbatches!r}")
        if isinstance(gradient_accumulation_steps, bool) or gradient_accumulation_steps != 1:
            raise ValueError(
                f"{name}: `gradient_accumulation_steps`={gradient_accumulation_steps!r} is not supported (only 1): "
                "accumulating several noised steps into one update changes the sampling the privacy accounting "
                "assumes. Use a larger batch_size instead."
            )
        names = _positional_names(self._keras_base())
        limit = len(names) if self._max_positional is None else self._max_positional
        if len(args) > limit:
            raise TypeError(
                f"{name} takes at most {3 + limit} positional arguments (l2_norm_clip, noise_multiplier, "
                f"num_microbatches, {', '.join(names[:limit])}), got {3 + len(args)}"
            )
        for parameter, value in zip(names, args):
            if parameter in kwargs:
                raise TypeError(f"{name} got multiple values for argument `{parameter}`")
            kwargs[parameter] = value
        super().__init__(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier, **kwargs)
        self.num_microbatches = num_microbatches

    @classmethod
    def _keras_base(cls) -> type:
        for klass in cls.__mro__:
            from_keras = klass.__module__.startswith(("keras", "tensorflow"))
            if from_keras and issubclass(klass, tf.keras.optimizers.Optimizer):
                return klass
        raise TypeError(f"{cls.__name__} has no Keras optimizer base")  # pragma: no cover (construction bug)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, model: tf.keras.Model, data: Any) -> dict:
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        if self.num_microbatches is not None:
            batch = tf.shape(tf.nest.flatten(x)[0])[0]
            tf.debugging.assert_equal(
                batch,
                tf.constant(self.num_microbatches, batch.dtype),
                message=(
                    f"{self._tf_privacy_name}: `num_microbatches`={self.num_microbatches} differs from this batch's "
                    "size: TF Privacy would clip groups of examples together, which doubles the sensitivity under "
                    "add-or-remove adjacency for the same noise; tfppml clips every example. Pass "
                    "num_microbatches=None (or equal to every batch's size)."
                ),
            )
        if not _unreduced(model):
            return super().train_step(model, data)
        _refuse_mixed_reductions(model)

        def mean_of_unreduced(y_true, y_pred, sample_weight=None):
            # TF Privacy's meaning of a per-example loss vector: the batch average of the examples' losses.
            return tf.reduce_mean(model.compute_loss(x, y_true, y_pred, sample_weight))

        loss, y_pred, grads = self.compute_private_gradients(model, x, y, sample_weight, loss=mean_of_unreduced)
        self.apply_gradients(zip(grads, model.trainable_variables))
        return model.compute_metrics(x, y, y_pred, sample_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_microbatches=self.num_microbatches)
        return config


def _refuse_mixed_reductions(model: tf.keras.Model) -> None:
    """With several compiled losses, either all are unreduced or all use the default mean: a mix is ambiguous."""
    losses = tf.nest.flatten(model.loss)
    if len({getattr(obj, "reduction", "auto") == "none" for obj in losses}) > 1:
        raise ValueError(
            f"model {model.name} mixes unreduced (reduction=NONE) and mean-reduced losses; compile them all one way"
        )


def _adapter(dp_class: type, tf_privacy_name: str, max_positional: int | None = None, doc: str = "") -> type:
    adapter = type(
        tf_privacy_name,
        (_TFPrivacyArguments, dp_class),
        {"_tf_privacy_name": tf_privacy_name, "_max_positional": max_positional, "__module__": __name__},
    )
    adapter.__doc__ = (
        f"TF Privacy's ``{tf_privacy_name}`` on `tfppml.dp.{dp_class.__name__}` (see `tfppml.dp.compat`).\n\n"
        f"    Args:\n"
        f"        l2_norm_clip: Clip norm of each example's gradient (> 0).\n"
        f"        noise_multiplier: Noise standard deviation / l2_norm_clip (>= 0).\n"
        f"        num_microbatches: None, or every batch's size (one example per microbatch); others refused.\n"
        f"        *args: The Keras optimizer's positional arguments, ``learning_rate`` first.\n"
        f"        gradient_accumulation_steps: 1 only.\n"
        f"        **kwargs: The Keras optimizer's keyword arguments; ``seed`` (tests only).{doc}\n"
    )
    return adapter


DPKerasSGDOptimizer = _adapter(DPSGD, "DPKerasSGDOptimizer")
DPKerasAdamOptimizer = _adapter(DPAdam, "DPKerasAdamOptimizer")
DPKerasAdagradOptimizer = _adapter(DPAdagrad, "DPKerasAdagradOptimizer")


class DPGradientDescentGaussianOptimizer(_adapter(DPSGD, "DPGradientDescentGaussianOptimizer", max_positional=1)):
    """TF Privacy's v1 ``DPGradientDescentGaussianOptimizer``: `DPKerasSGDOptimizer` taking ``learning_rate`` as
    the one further positional argument and accepting ``unroll_microbatches`` (how TF Privacy looped; the
    result is the same).
    """

    def __init__(
        self,
        l2_norm_clip: float,
        noise_multiplier: float,
        num_microbatches: int | None = None,
        *args: Any,
        unroll_microbatches: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(unroll_microbatches, bool):
            raise ValueError(
                f"DPGradientDescentGaussianOptimizer: `unroll_microbatches` must be a bool, got {unroll_microbatches!r}"
            )
        super().__init__(l2_norm_clip, noise_multiplier, num_microbatches, *args, **kwargs)


DPGradientDescentGaussianOptimizer._tf_privacy_name = "DPGradientDescentGaussianOptimizer"
