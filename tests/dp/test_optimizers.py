"""DP optimizers in model.compile/fit, custom loops, and the refusals that prevent silent non-private training."""

import numpy as np
import pytest
import tensorflow as tf

import tfppml.dp
from tfppml.dp import DPAdagrad, DPAdam, DPSGD

L = tf.keras.layers
SCCE = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10)).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")


def mlp():
    return tf.keras.Sequential([L.Dense(16, activation="relu", input_shape=(10,)), L.Dense(2)])


@pytest.mark.parametrize(
    "make", [lambda: DPSGD(l2_norm_clip=1.0, noise_multiplier=0.3, learning_rate=0.5, seed=1),
             lambda: DPAdam(l2_norm_clip=1.0, noise_multiplier=0.3, learning_rate=0.02, seed=1),
             lambda: DPAdagrad(l2_norm_clip=1.0, noise_multiplier=0.3, learning_rate=0.3, seed=1)],
    ids=["sgd", "adam", "adagrad"],
)
def test_fit_learns_with_one_compile_argument(make):
    tf.keras.utils.set_random_seed(0)
    x, y = data()
    model = mlp()
    model.compile(optimizer=make(), loss=SCCE, metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    assert hist.history["accuracy"][-1] > 0.8
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_fit_step_equals_private_gradient_step():
    """One fit step with noise 0 moves the weights by exactly -lr * clipped mean gradient."""
    x, y = data(16)
    model = mlp()
    model.compile(optimizer=DPSGD(l2_norm_clip=0.05, noise_multiplier=0.0, learning_rate=1.0), loss=SCCE)
    before = [v.numpy() for v in model.trainable_variables]
    _, _, grads = tfppml.dp.PrivateGradients(0.05, 0.0).compute(model, x, y, loss=SCCE)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for b, g, v in zip(before, grads, model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - g.numpy(), rtol=1e-4, atol=1e-6)


def test_plain_models_untouched_by_dispatcher():
    DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0)  # installs the dispatcher
    x, y = data(64)
    model = mlp()
    model.compile(optimizer="sgd", loss=SCCE)
    model.fit(x, y, epochs=1, verbose=0)
    assert not hasattr(model, "_tfppml_dp_capture")


def test_custom_loop_in_tf_function():
    x, y = data(64)
    model = mlp()
    opt = DPSGD(l2_norm_clip=1.0, noise_multiplier=0.5, learning_rate=0.5)

    @tf.function
    def step(xb, yb):
        loss, _, grads = opt.compute_private_gradients(model, xb, yb, loss=SCCE)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    model(x[:1])
    losses = [float(step(x, y)) for _ in range(20)]
    assert losses[-1] < losses[0]


def test_plain_gradients_are_refused():
    x, y = data(8)
    model = mlp()
    opt = DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0)
    with tf.GradientTape() as tape:
        loss = SCCE(y, model(x))
    grads = tape.gradient(loss, model.trainable_variables)
    with pytest.raises(ValueError, match="without differential privacy"):
        opt.apply_gradients(zip(grads, model.trainable_variables))
    with pytest.raises(TypeError, match="compute_private_gradients"):
        opt.minimize(loss, model.trainable_variables, tape=tape)


def test_reduction_none_is_refused_in_compile():
    x, y = data(32)
    model = mlp()
    none = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    model.compile(optimizer=DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0), loss=none)
    with pytest.raises(ValueError, match="reduction"):
        model.fit(x, y, epochs=1, verbose=0)


def test_batch_norm_is_refused_in_fit():
    x, y = data(32)
    model = tf.keras.Sequential([L.Dense(8, input_shape=(10,)), L.BatchNormalization(), L.Dense(2)])
    model.compile(optimizer=DPSGD(l2_norm_clip=1.0, noise_multiplier=1.0), loss=SCCE)
    # Raised while Keras traces the train function, which wraps it in its StagingError; the message is ours.
    with pytest.raises(Exception, match="BatchNormalization: its batch statistics mix"):
        model.fit(x, y, epochs=1, verbose=0)


def test_config_roundtrip():
    opt = DPAdam(l2_norm_clip=0.7, noise_multiplier=1.3, learning_rate=0.01)
    config = opt.get_config()
    assert config["l2_norm_clip"] == 0.7 and config["noise_multiplier"] == 1.3
    again = DPAdam.from_config(config)
    assert again.noise_multiplier == 1.3 and again.l2_norm_clip == 0.7


@pytest.mark.parametrize("kwargs, error", [(dict(l2_norm_clip=-1.0, noise_multiplier=1.0), ValueError),
                                           (dict(l2_norm_clip=1.0, noise_multiplier=-2.0), ValueError)])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(k for k in kwargs if (kwargs[k] or 0) < 0))):
        DPSGD(**kwargs)
