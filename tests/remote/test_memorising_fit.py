"""A crafty analyst turns "trained weights may be returned" into a raw read (issue #18, attack 2): one full-batch
SGD step of a bias-free Dense layer from zero weights, mse loss, a one-hot `x` of its own and the table as `y`,
gives W = lr * 2 / (n * m) * table, i.e. the table row for row.  The control is the `unsafe_weights` opt-in
(what `weights: true` used to mean), under which the attack reads every value; without it the weights are
refused, and so are the model's predictions and losses on the data."""

import numpy as np
import pytest
import tensorflow as tf

import tfppml.remote
from tfppml.errors import PolicyDenied

ROWS, COLUMNS, RATE = 200, 4, 50.0


def memorise(remote) -> tuple[object, float]:
    """The trained model's pointer and the factor that turns its weights into the table."""
    table = remote.dataset("patients")
    onehot = tfppml.remote.send(np.eye(ROWS), remote)
    model = tf.keras.Sequential([tf.keras.layers.Input((ROWS,)),
                                 tf.keras.layers.Dense(COLUMNS, use_bias=False, kernel_initializer="zeros")])
    trained = remote.fit(model, onehot, table, epochs=1, batch_size=ROWS, loss="mse", optimizer="sgd",
                         learning_rate=RATE)
    return trained, ROWS * COLUMNS / (2 * RATE)


def test_control_unsafe_weights_are_a_raw_read(hospital, data):
    cluster, _ = hospital
    with tfppml.remote.connect(cluster, worker="hospital", identity="analyst") as analyst:
        trained, factor = memorise(analyst)
        weights = trained.get().get_weights()[0]
    np.testing.assert_allclose(weights * factor, data["patients"], rtol=1e-5)


def test_without_the_opt_in_trained_weights_and_their_outputs_stay_at_the_worker(hospital, data):
    cluster, _ = hospital
    with tfppml.remote.connect(cluster, worker="hospital", identity="careful") as careful:
        trained, _ = memorise(careful)
        onehot = tfppml.remote.send(np.eye(ROWS), careful)
        for pointer in (trained, trained.predict(onehot), trained.evaluate(onehot, careful.dataset("patients"))):
            with pytest.raises(PolicyDenied, match=r"identities\.careful\.(unsafe_weights|raw_read)") as info:
                pointer.get()
            assert str(data["patients"][0, 0])[:6] not in str(info.value)
