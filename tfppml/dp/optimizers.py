"""DP-SGD optimizers for ``model.compile``: DPSGD, DPAdam, DPAdagrad.

Usage is one compile argument; the loss keeps its default reduction and there are no microbatches::

    model.compile(optimizer=tfppml.dp.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1, learning_rate=0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(tfppml.dp.poisson_sample(x, y, batch_size=256), epochs=3, callbacks=[tfppml.dp.PrivacyBudget(...)])

(``Model.fit(x, y, batch_size=256)`` would draw shuffled fixed-size batches instead: then the callback needs
``poisson=False``, since the accounting's default is Poisson sampling.)

How the optimizer hooks into Keras 2 (design)
---------------------------------------------
A Keras 2 optimizer only sees ``minimize(loss, var_list, tape)`` with a loss that is already a batch mean, and
Keras never hands it the model, so an optimizer alone cannot clip per example.  TF Privacy works around this by
asking for an unreduced loss (``reduction=NONE``, the trap its users hit) and computing a Jacobian per example.

tfppml instead lets the optimizer own the *whole training step*: creating the first DP optimizer installs, once,
a dispatcher as ``tf.keras.Model.train_step`` that calls the original step unless ``model.optimizer`` is a DP
optimizer, in which case it runs :meth:`DPOptimizerMixin.train_step`.  That step instruments the model's layers
(instance-level, see :mod:`tfppml.dp.clipping`), runs one forward and one backward pass for per-example
gradient norms with ghost clipping, adds Gaussian noise once per batch, applies the update with the base Keras
optimizer (SGD / Adam / Adagrad), and updates Keras's metrics exactly as the default step does.  Models whose
class overrides ``train_step`` are not touched by the dispatcher.

Callers that compute gradients themselves (a custom ``train_step``, a custom loop, TensorFlow Federated client
work) call :meth:`DPOptimizerMixin.compute_private_gradients` and then ``apply_gradients``.  ``minimize`` and
``apply_gradients`` refuse any gradient that did not come from that method, so gradients of a plain
``tape.gradient`` can never be applied silently without privacy (the failure of tensorflow-federated#1381).

Privacy note: the guarantee is example-level with add-or-remove-one adjacency, accounted by
:func:`tfppml.dp.compute_epsilon` for the noise multiplier, batch size, number of examples and epochs actually
used; see :class:`tfppml.dp.PrivacyBudget`.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from tfppml.dp.clipping import PrivateGradients

__all__ = ["DPAdagrad", "DPAdam", "DPOptimizerMixin", "DPSGD"]

_ORIGINAL_TRAIN_STEP = None


def _install_train_step_dispatcher() -> None:
    """Makes ``tf.keras.Model.train_step`` defer to a DP optimizer's step; installed once, idempotent."""
    global _ORIGINAL_TRAIN_STEP
    if _ORIGINAL_TRAIN_STEP is not None:
        return
    model_class = tf.keras.Model
    original = model_class.train_step

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        optimizer = getattr(self, "optimizer", None)
        if isinstance(optimizer, DPOptimizerMixin):
            return optimizer.train_step(self, data)
        inner = getattr(optimizer, "inner_optimizer", None)
        if isinstance(inner, DPOptimizerMixin):
            raise TypeError(
                "tfppml.dp optimizers do not support loss scaling (mixed_float16); use a float32 policy"
            )
        return original(self, data)

    train_step.__doc__ = original.__doc__
    train_step._tfppml_dp_original = original  # type: ignore[attr-defined]
    _ORIGINAL_TRAIN_STEP = original
    model_class.train_step = train_step


class DPOptimizerMixin:
    """Turns a Keras 2 optimizer into a DP-SGD optimizer (exact per-example clipping + Gaussian noise).

    Args:
        l2_norm_clip: Clip norm C > 0 applied to every example's whole gradient.
        noise_multiplier: Noise standard deviation divided by C (>= 0). Use
            :func:`tfppml.dp.calibrate_noise` to derive it from a target epsilon.
        seed: Optional int seed of the noise (tests only; None draws a fresh seed).
        **kwargs: Passed to the base Keras optimizer (``learning_rate``, ``momentum``, ...).

    Raises:
        TypeError, ValueError: ``l2_norm_clip``, ``noise_multiplier`` or ``seed`` is invalid.
    """

    def __init__(self, *, l2_norm_clip: float, noise_multiplier: float, seed: int | None = None, **kwargs):
        self._private = PrivateGradients(l2_norm_clip, noise_multiplier, seed=seed)
        super().__init__(**kwargs)
        self._private_refs: set = set()
        _install_train_step_dispatcher()

    @property
    def l2_norm_clip(self) -> float:
        """The per-example clip norm C."""
        return self._private.l2_norm_clip

    @property
    def noise_multiplier(self) -> float:
        """Noise standard deviation / C."""
        return self._private.noise_multiplier

    def compute_private_gradients(
        self,
        model: tf.keras.Model,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        loss: Callable | None = None,
    ) -> tuple[tf.Tensor, Any, list[tf.Tensor]]:
        """Forward pass plus DP-SGD gradients for one batch: ``(loss, y_pred, gradients)``.

        The gradients are aligned with ``model.trainable_variables`` and may be passed to
        :meth:`apply_gradients`.  Works inside ``tf.function`` (custom train steps, TFF client updates).

        Args:
            model: The Keras model being trained.
            x, y, sample_weight: One batch.
            loss: ``loss(y_true, y_pred[, sample_weight])`` returning the batch mean; None uses the model's
                compiled loss.

        Example:
            >>> loss, y_pred, grads = opt.compute_private_gradients(model, x, y)  # doctest: +SKIP
            >>> opt.apply_gradients(zip(grads, model.trainable_variables))  # doctest: +SKIP
        """
        loss_value, y_pred, grads = self._private.compute(model, x, y, sample_weight, loss=loss)
        self._private_refs = {g.ref() for g in grads}
        return loss_value, y_pred, grads

    @tf.autograph.experimental.do_not_convert
    def train_step(self, model: tf.keras.Model, data: Any) -> dict:
        """Keras's default ``train_step`` with DP gradients (called through the dispatcher)."""
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        loss, y_pred, grads = self.compute_private_gradients(model, x, y, sample_weight)
        model._validate_target_and_loss(y, loss)
        self.apply_gradients(zip(grads, model.trainable_variables))
        return model.compute_metrics(x, y, y_pred, sample_weight)

    def minimize(self, loss, var_list, tape=None):
        """Refused: a reduced loss cannot be clipped per example. Use :meth:`compute_private_gradients`."""
        raise TypeError(
            f"{type(self).__name__}.minimize() received an already-reduced loss, from which per-example "
            f"gradients cannot be recovered. In a custom train_step or loop use "
            f"`loss, y_pred, grads = optimizer.compute_private_gradients(model, x, y)` followed by "
            f"`optimizer.apply_gradients(zip(grads, model.trainable_variables))`; Model.fit does this for you."
        )

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        """Applies gradients returned by :meth:`compute_private_gradients`; any other gradient is refused.

        Raises:
            ValueError: a gradient did not come from :meth:`compute_private_gradients` (for example, from a plain
                ``tape.gradient``), which would silently train without privacy.
        """
        grads_and_vars = list(grads_and_vars)
        foreign = [v.name for g, v in grads_and_vars if g is not None and g.ref() not in self._private_refs]
        if foreign:
            raise ValueError(
                f"{type(self).__name__}.apply_gradients() got gradients for {foreign} that were not computed by "
                f"compute_private_gradients(); applying them would train without differential privacy. Compute "
                f"them with `optimizer.compute_private_gradients(model, x, y)` (this is what a TFF client update "
                f"or custom loop must call instead of tape.gradient)."
            )
        return super().apply_gradients(grads_and_vars, *args, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(l2_norm_clip=self.l2_norm_clip, noise_multiplier=self.noise_multiplier)
        return config


def _make(base: type, doc_name: str) -> type:
    class DPOptimizer(DPOptimizerMixin, base):
        pass

    DPOptimizer.__name__ = DPOptimizer.__qualname__ = f"DP{doc_name}"
    DPOptimizer.__doc__ = f"""{doc_name} with DP-SGD: exact per-example clipping and Gaussian noise.

    Args:
        l2_norm_clip: Clip norm C > 0 of each example's whole gradient.
        noise_multiplier: Noise standard deviation / C, >= 0.
        seed: Optional int seed of the noise (tests only).
        **kwargs: Arguments of ``tf.keras.optimizers.{doc_name}`` (``learning_rate`` and so on).

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).

    Example:
        >>> model.compile(optimizer=DP{doc_name}(l2_norm_clip=1.0, noise_multiplier=1.1),
        ...               loss="sparse_categorical_crossentropy")  # doctest: +SKIP
    """
    return DPOptimizer


DPSGD = _make(tf.keras.optimizers.SGD, "SGD")
DPAdam = _make(tf.keras.optimizers.Adam, "Adam")
DPAdagrad = _make(tf.keras.optimizers.Adagrad, "Adagrad")
DPSGD.__module__ = DPAdam.__module__ = DPAdagrad.__module__ = __name__
