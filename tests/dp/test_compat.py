"""TF Privacy's optimizer names (tfppml.dp.compat): the tutorial's code with only the import changed, agreement
with TF Privacy 0.9.0 itself, and the arguments whose privacy meaning differs refused with the reason."""

import numpy as np
import pytest
import tensorflow as tf

import tfppml.dp
from tfppml.dp import (
    DPSGD,
    DPGradientDescentGaussianOptimizer,
    DPKerasAdagradOptimizer,
    DPKerasAdamOptimizer,
    DPKerasSGDOptimizer,
)

L = tf.keras.layers
BATCH = 32


def data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    labels = (x[:, 0] - x[:, 1] > 0).astype("int64")
    return x, tf.keras.utils.to_categorical(labels, 2)


def model():
    tf.keras.utils.set_random_seed(0)
    return tf.keras.Sequential([L.Dense(8, activation="relu", input_shape=(6,)), L.Dense(2)])


def unreduced_loss():
    # As TF Privacy's tutorial tells its users to compile.
    return tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=tf.losses.Reduction.NONE)


def test_the_tutorials_code_runs_with_the_import_changed():
    x, y = data(256)
    # TF Privacy's tutorial, positional as in its slides: (l2_norm_clip, noise_multiplier, num_microbatches,
    # learning_rate), num_microbatches equal to the batch size, an unreduced loss.
    optimizer = tfppml.dp.DPKerasSGDOptimizer(1.0, 0.5, BATCH, 0.25)
    assert optimizer.learning_rate.numpy() == pytest.approx(0.25) and optimizer.num_microbatches == BATCH
    net = model()
    net.compile(optimizer=optimizer, loss=unreduced_loss(), metrics=["accuracy"])
    history = net.fit(x, y, epochs=8, batch_size=BATCH, verbose=0)
    assert history.history["accuracy"][-1] > 0.8
    assert 0.0 < history.history["loss"][-1] < history.history["loss"][0]  # the batch mean, as in TF Privacy
    epsilon = tfppml.dp.compute_epsilon(256, BATCH, 0.5, 8, 1e-5, poisson=False)
    assert np.isfinite(epsilon) and epsilon > 0


def _one_epoch(optimizer, loss):
    x, y = data()
    net = model()
    net.compile(optimizer=optimizer, loss=loss)
    net.fit(x, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    return net.get_weights()


def test_agrees_with_tf_privacy_and_with_the_native_optimizer():
    """Noise 0: the clipped per-example mean alone, so TF Privacy 0.9.0's optimizer on the same batches must give
    the same weights; with noise, the same seed gives the native DPSGD's exact step."""
    tf_privacy = pytest.importorskip("tensorflow_privacy")
    ours = _one_epoch(DPKerasSGDOptimizer(0.5, 0.0, None, 0.3), unreduced_loss())
    theirs = _one_epoch(tf_privacy.DPKerasSGDOptimizer(l2_norm_clip=0.5, noise_multiplier=0.0, num_microbatches=None,
                                                       learning_rate=0.3), unreduced_loss())  # fmt: skip
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Control: without clipping the step differs (the test can tell clipped from plain SGD).
    plain = _one_epoch(tf.keras.optimizers.SGD(0.3), tf.keras.losses.CategoricalCrossentropy(from_logits=True))
    assert max(np.abs(a - b).max() for a, b in zip(ours, plain)) > 1e-3

    noisy = _one_epoch(DPKerasSGDOptimizer(0.5, 1.0, BATCH, 0.3, seed=7), unreduced_loss())
    native = _one_epoch(DPSGD(l2_norm_clip=0.5, noise_multiplier=1.0, learning_rate=0.3, seed=7),
                        tf.keras.losses.CategoricalCrossentropy(from_logits=True))
    for a, b in zip(noisy, native):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_microbatches_of_several_examples_are_refused_with_the_reason():
    net = model()
    net.compile(optimizer=DPKerasSGDOptimizer(1.0, 1.0, 1, 0.1), loss=unreduced_loss())
    x, y = data()
    with pytest.raises(tf.errors.InvalidArgumentError, match="`num_microbatches`=1 differs.*doubles the sensitivity"):
        net.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: DPKerasSGDOptimizer(1.0, 1.0, 0), ValueError, "`num_microbatches` must be None or a positive int"),
        (lambda: DPKerasSGDOptimizer(1.0, 1.0, True), ValueError, "`num_microbatches`"),
        (lambda: DPKerasSGDOptimizer(1.0, 1.0, "4"), ValueError, "`num_microbatches`"),
        (lambda: DPKerasSGDOptimizer(1.0, 1.0, gradient_accumulation_steps=4), ValueError,
         "`gradient_accumulation_steps`=4 is not supported"),
        (lambda: DPKerasSGDOptimizer(1.0, 1.0, None, 0.1, learning_rate=0.2), TypeError,
         "multiple values for argument `learning_rate`"),
        (lambda: DPKerasSGDOptimizer(-1.0, 1.0), ValueError, "l2_norm_clip"),
        (lambda: DPGradientDescentGaussianOptimizer(1.0, 1.0, None, 0.1, 0.9), TypeError,
         "at most 4 positional arguments"),
        (lambda: DPGradientDescentGaussianOptimizer(1.0, 1.0, unroll_microbatches="yes"), ValueError,
         "`unroll_microbatches` must be a bool"),
    ],
    ids=["zero-microbatches", "bool", "str", "accumulation", "twice", "clip", "v1-positional", "v1-unroll"],
)
def test_bad_arguments_are_named(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_positional_arguments_follow_the_keras_optimizers_own_order_and_configs_round_trip():
    adam = DPKerasAdamOptimizer(1.0, 0.7, None, 0.01, 0.8)
    assert adam.learning_rate.numpy() == pytest.approx(0.01) and adam.beta_1 == pytest.approx(0.8)
    adagrad = DPKerasAdagradOptimizer(1.0, 0.7, None, 0.05, 0.2)
    assert adagrad.initial_accumulator_value == pytest.approx(0.2)
    v1 = DPGradientDescentGaussianOptimizer(2.0, 1.5, None, 0.05, unroll_microbatches=True)
    assert isinstance(v1, DPSGD) and v1.l2_norm_clip == 2.0 and v1.learning_rate.numpy() == pytest.approx(0.05)
    config = DPKerasSGDOptimizer(1.5, 0.9, 64, 0.1, momentum=0.5).get_config()
    again = DPKerasSGDOptimizer.from_config(config)
    assert (again.l2_norm_clip, again.noise_multiplier, again.num_microbatches) == (1.5, 0.9, 64)
    assert again.momentum == pytest.approx(0.5)


def test_the_native_optimizer_still_refuses_an_unreduced_loss():
    # For a plain Keras optimizer an unreduced loss means a sum; only TF Privacy's names take it as a mean.
    net = model()
    net.compile(optimizer=DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0), loss=unreduced_loss())
    x, y = data()
    with pytest.raises(ValueError, match="reduction='none'"):
        net.fit(x, y, epochs=1, batch_size=BATCH, verbose=0)
