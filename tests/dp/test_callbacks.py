"""PrivacyBudget reports epsilon and stops before the budget is exceeded."""

import numpy as np
import pytest
import tensorflow as tf

from tfppml.dp import DPSGD, PrivacyBudget, compute_epsilon, poisson_sample

N, BATCH, DELTA = 200, 20, 1e-3


def model_and_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(4,))])
    model.compile(optimizer=DPSGD(l2_norm_clip=1.0, noise_multiplier=2.0, learning_rate=0.1),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y


def test_reports_epsilon_every_epoch():
    model, x, y = model_and_data()
    budget = PrivacyBudget(N, BATCH, DELTA, poisson=False)  # Model.fit's shuffled batches
    hist = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[budget])
    expected = [compute_epsilon(N, BATCH, 2.0, e, DELTA, poisson=False) for e in (1, 2, 3)]
    np.testing.assert_allclose(hist.history["epsilon"], expected)
    assert budget.epsilon == pytest.approx(expected[-1])


def test_stops_at_budget():
    model, x, y = model_and_data()
    target = (compute_epsilon(N, BATCH, 2.0, 3, DELTA, poisson=False)
              + compute_epsilon(N, BATCH, 2.0, 4, DELTA, poisson=False)) / 2
    budget = PrivacyBudget(N, BATCH, DELTA, target_epsilon=target, poisson=False)
    hist = model.fit(x, y, batch_size=BATCH, epochs=20, verbose=0, callbacks=[budget])
    assert len(hist.history["loss"]) == 3 and budget.epochs_done == 3
    assert budget.epsilon <= target


def test_refuses_to_start_when_one_epoch_is_too_much():
    model, x, y = model_and_data()
    with pytest.raises(ValueError, match="one more epoch"):
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                  callbacks=[PrivacyBudget(N, BATCH, DELTA, target_epsilon=0.01, poisson=False)])


def test_zero_noise_with_budget_is_an_error():
    with pytest.raises(ValueError, match="noise_multiplier is 0"):
        PrivacyBudget(N, BATCH, DELTA, target_epsilon=1.0, noise_multiplier=0.0)


def test_needs_noise_for_plain_optimizer():
    model, x, y = model_and_data()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="noise_multiplier="):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[PrivacyBudget(N, BATCH, DELTA)])


def test_poisson_pipeline_batch_sizes():
    x = np.arange(1000, dtype="float32")[:, None]
    sizes = [int(b.shape[0]) for b in poisson_sample(x, batch_size=100, seed=3)]
    assert len(sizes) == 10 and 60 < np.mean(sizes) < 140 and len(set(sizes)) > 1


def test_default_sampling_is_poisson_as_in_compute_epsilon():
    # Issue #19: PrivacyBudget assumed shuffled batches while compute_epsilon assumed Poisson sampling.
    budget = PrivacyBudget(N, BATCH, DELTA, noise_multiplier=2.0)
    assert budget.poisson is True
    assert budget.epsilon_after(3) == compute_epsilon(N, BATCH, 2.0, 3, DELTA)
    assert PrivacyBudget(N, BATCH, DELTA, noise_multiplier=2.0, poisson=False).epsilon_after(3) > budget.epsilon_after(3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise_multiplier=float("inf")), "noise_multiplier must be a finite"),
    (dict(target_epsilon=float("nan")), "target_epsilon must be a finite"),
    (dict(delta=float("nan")), "delta must be a finite"),
])
def test_non_finite_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrivacyBudget(**(dict(n=N, batch_size=BATCH, delta=DELTA) | kwargs))


def test_poisson_flag_must_be_a_bool():
    with pytest.raises(TypeError, match="poisson must be a bool"):
        PrivacyBudget(N, BATCH, DELTA, poisson=1)
