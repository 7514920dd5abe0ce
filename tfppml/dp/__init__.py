"""Differential privacy for Keras: DP-SGD optimizers, honest accounting, a budget callback.

Turn DP on with one compile argument and watch the budget with one callback::

    import tfppml.dp
    # Every accounting function, PrivacyBudget and `tfppml privacy` assume Poisson sampling by default, which
    # tfppml.dp.poisson_sample provides:
    sigma = tfppml.dp.calibrate_noise(target_epsilon=3.0, delta=1e-5, n=60000, batch_size=256, epochs=15)
    model.compile(optimizer=tfppml.dp.DPSGD(l2_norm_clip=1.0, noise_multiplier=sigma, learning_rate=0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(tfppml.dp.poisson_sample(x, y, batch_size=256), epochs=15,
              callbacks=[tfppml.dp.PrivacyBudget(n=60000, batch_size=256, delta=1e-5, target_epsilon=3.0)])
    # Model.fit(x, y, batch_size=256) draws shuffled fixed-size batches, which earn no amplification: then
    # pass poisson=False to calibrate_noise and PrivacyBudget alike (a much larger noise multiplier).

Modules: :mod:`tfppml.dp.optimizers` (DPSGD, DPAdam, DPAdagrad), :mod:`tfppml.dp.compat` (TF Privacy's names:
DPKerasSGDOptimizer, DPKerasAdamOptimizer, DPKerasAdagradOptimizer, DPGradientDescentGaussianOptimizer), :mod:`tfppml.dp.clipping` (per-example
clipping engine and its per-layer rule registry), :mod:`tfppml.dp.accounting` (epsilon and noise calibration
on dp-accounting), :mod:`tfppml.dp.callbacks` (PrivacyBudget), :mod:`tfppml.dp.data` (Poisson sampling),
:mod:`tfppml.dp.pate` (PATE: noisy-max and GNMax aggregation of teacher votes, and their privacy analysis).

PATE, with ``teacher_preds`` the ``[num_teachers, n]`` votes and ``answered`` the examples whose label was
released::

    labels = tfppml.dp.noisy_max(teacher_preds, noise_eps=0.1, num_labels=10)
    dep, indep = tfppml.dp.perform_analysis(teacher_preds, answered, 0.1, delta=1e-5, num_labels=10)

DP noise (DP-SGD and GNMax) comes from tfppml's ChaCha20-keyed Gaussian kernel
(:func:`tfppml.ops.gaussian_noise`), keyed afresh from the OS CSPRNG at every step.
"""

from tfppml.dp.accounting import Epsilon, calibrate_noise, compute_epsilon, dp_sgd_event, privacy_statement
from tfppml.dp.callbacks import PrivacyBudget
from tfppml.dp.compat import (
    DPGradientDescentGaussianOptimizer,
    DPKerasAdagradOptimizer,
    DPKerasAdamOptimizer,
    DPKerasSGDOptimizer,
)
from tfppml.dp.clipping import LayerRule, PrivateGradients, UnsupportedLayerError, register_rule
from tfppml.dp.data import poisson_sample
from tfppml.dp import pate
from tfppml.dp.optimizers import DPAdagrad, DPAdam, DPOptimizerMixin, DPSGD
from tfppml.dp.pate import PateAnalysis, gnmax, gnmax_analysis, laplace_analysis, noisy_max, perform_analysis

__all__ = [
    "DPAdagrad",
    "DPAdam",
    "DPGradientDescentGaussianOptimizer",
    "DPKerasAdagradOptimizer",
    "DPKerasAdamOptimizer",
    "DPKerasSGDOptimizer",
    "DPOptimizerMixin",
    "DPSGD",
    "Epsilon",
    "LayerRule",
    "PateAnalysis",
    "PrivacyBudget",
    "PrivateGradients",
    "UnsupportedLayerError",
    "calibrate_noise",
    "compute_epsilon",
    "dp_sgd_event",
    "gnmax",
    "gnmax_analysis",
    "laplace_analysis",
    "noisy_max",
    "pate",
    "perform_analysis",
    "poisson_sample",
    "privacy_statement",
    "register_rule",
]
