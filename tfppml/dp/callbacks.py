"""``PrivacyBudget``: a Keras callback that reports epsilon spent every epoch and stops before a budget is exceeded.

The sampling assumption defaults to Poisson sampling, as everywhere in :mod:`tfppml.dp`; it holds only for
batches from :func:`tfppml.dp.poisson_sample`.  ``Model.fit(x, y, batch_size=...)`` draws shuffled fixed-size
batches: say so with ``poisson=False`` (no amplification claimed, a much larger epsilon).

Example:
    >>> batches = tfppml.dp.poisson_sample(x, y, batch_size=256)  # doctest: +SKIP
    >>> budget = PrivacyBudget(n=60000, batch_size=256, delta=1e-5, target_epsilon=3.0)  # doctest: +SKIP
    >>> model.fit(batches, epochs=100, callbacks=[budget])  # doctest: +SKIP
    >>> budget.epsilon  # doctest: +SKIP
    >>> # Keras's own shuffled batches earn no amplification by sampling:
    >>> shuffled = PrivacyBudget(n=60000, batch_size=256, delta=1e-5, target_epsilon=3.0, poisson=False)  # doctest: +SKIP
    >>> model.fit(x, y, batch_size=256, epochs=100, callbacks=[shuffled])  # doctest: +SKIP
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from tfppml.dp import accounting

__all__ = ["PrivacyBudget"]


class PrivacyBudget(tf.keras.callbacks.Callback):
    """Adds ``epsilon`` to the epoch logs (progress bar, History) and stops training before exceeding a budget.

    After each epoch the callback computes the epsilon that *one more* epoch would bring the run to; if that
    exceeds ``target_epsilon`` it sets ``model.stop_training``, so the budget is never overrun.  If even the first
    epoch would exceed it, training is refused before it starts.

    Args:
        n: Number of training examples.
        batch_size: Examples per step (expected size under Poisson sampling).
        delta: Target delta, in (0, 1).
        target_epsilon: The budget; None only reports epsilon.
        noise_multiplier: Noise multiplier used; None reads it from the model's tfppml DP optimizer.
        accountant: ``"rdp"`` or ``"pld"``.
        poisson: The sampling assumption, which must match the input pipeline: True (default, as in
            :func:`tfppml.dp.compute_epsilon`) only with :func:`tfppml.dp.poisson_sample`; False for Keras's
            shuffled fixed-size batches (``Model.fit(x, y, batch_size=...)``), with no amplification claimed.

    Raises:
        TypeError, ValueError: an argument is invalid, or a budget is given with zero noise.

    Attributes:
        epsilon: Epsilon spent so far (0.0 before the first epoch ends).
        epochs_done: Number of epochs completed under this callback.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        delta: float,
        target_epsilon: float | None = None,
        noise_multiplier: float | None = None,
        accountant: str = "rdp",
        poisson: bool = True,
    ):
        super().__init__()
        accounting._check_common(n, batch_size, 1.0, delta, accountant)
        if target_epsilon is not None:
            target_epsilon = accounting._check_real("target_epsilon", target_epsilon, low=0.0, low_open=True)
        if noise_multiplier is not None:
            noise_multiplier = accounting._check_noise(noise_multiplier)
            self._check_noise(noise_multiplier, target_epsilon)
        accounting._check_poisson(poisson)
        self.n, self.batch_size, self.delta = int(n), int(batch_size), float(delta)
        self.target_epsilon, self.noise_multiplier = target_epsilon, noise_multiplier
        self.accountant, self.poisson = accountant, poisson
        self.epsilon = 0.0
        self.epochs_done = 0

    @staticmethod
    def _check_noise(noise: float, target: float | None) -> None:
        if noise == 0.0 and target is not None:
            raise ValueError(
                f"noise_multiplier is 0, so epsilon is infinite and target_epsilon={target} cannot be met; "
                f"use a positive noise multiplier (tfppml.dp.calibrate_noise gives one)"
            )

    def _noise(self) -> float:
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        sigma = getattr(getattr(self.model, "optimizer", None), "noise_multiplier", None)
        if not isinstance(sigma, numbers.Real):
            raise ValueError(
                "PrivacyBudget needs noise_multiplier=: the model's optimizer is not a tfppml.dp optimizer"
            )
        self._check_noise(float(sigma), self.target_epsilon)
        return float(sigma)

    def epsilon_after(self, epochs: float) -> float:
        """Epsilon after ``epochs`` epochs under this callback's assumptions."""
        return accounting.compute_epsilon(
            self.n, self.batch_size, self._noise(), epochs, self.delta, self.accountant, self.poisson
        )

    def on_train_begin(self, logs=None):
        if self.target_epsilon is not None:
            first = self.epsilon_after(self.epochs_done + 1)
            if first > self.target_epsilon:
                raise ValueError(
                    f"one more epoch would spend epsilon={first:.3f} > target_epsilon={self.target_epsilon}; "
                    f"raise the noise multiplier or the batch size, or lower the budget's ambitions"
                )

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_done += 1
        self.epsilon = self.epsilon_after(self.epochs_done)
        if logs is not None:
            logs["epsilon"] = self.epsilon
        if self.target_epsilon is not None:
            upcoming = self.epsilon_after(self.epochs_done + 1)
            if upcoming > self.target_epsilon:
                self.model.stop_training = True
                tf.get_logger().info(
                    "PrivacyBudget: stopping after %d epochs at epsilon=%.3f; one more would reach %.3f > %s",
                    self.epochs_done,
                    self.epsilon,
                    upcoming,
                    self.target_epsilon,
                )
