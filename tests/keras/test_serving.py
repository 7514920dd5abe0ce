"""Private inference from Keras: agreement with plaintext Keras for every supported layer, refusals, and the
serving life cycle, on the in-process back end and on three real server processes."""

import threading

import numpy as np
import pytest
import tensorflow as tf

import tfppml.mpc as mpc
from tfppml.errors import PolicyDenied
from tfppml.keras import Client, KerasHook, UnsupportedLayerError

L = tf.keras.layers
KerasHook(tf.keras)


def logits_model(model):
    """The plaintext reference without a final softmax (private outputs are logits)."""
    last = model.layers[-1]
    if isinstance(last, L.Softmax) or (isinstance(last, L.Activation) and last.activation is tf.keras.activations.softmax):
        return tf.keras.Model(model.inputs, model.layers[-2].output)
    if getattr(last, "activation", None) is tf.keras.activations.softmax:
        clone = tf.keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        clone.layers[-1].activation = tf.keras.activations.linear
        return clone
    return model


def randomize_batch_norm(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if i != 1 else rng.normal(size=w.shape) * 0.1
                               for i, w in enumerate(layer.get_weights())][:2] + [
                rng.normal(size=layer.moving_mean.shape) * 0.1, rng.uniform(0.5, 2.0, layer.moving_variance.shape)])
    return model


MODELS = {
    "dense": lambda: tf.keras.Sequential([L.Dense(16, activation="relu", input_shape=(12,)), L.Dropout(0.5), L.Dense(5), L.Softmax()]),
    "cnn": lambda: tf.keras.Sequential([
        L.Conv2D(4, 3, input_shape=(10, 10, 1)), L.AveragePooling2D(2), L.Activation("relu"),
        L.Conv2D(6, 2, strides=(1, 1), padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(3, activation="softmax")]),
    "functional_bn_reshape": lambda: (lambda inp: tf.keras.Model(inp, L.Dense(4)(L.ReLU()(L.BatchNormalization()(
        L.Dense(8)(L.Reshape((24,))(L.Flatten()(inp))))))))(tf.keras.Input((6, 4))),
    # Conv2D + folded BatchNormalization before 2x2 pooling (the conv is left untruncated), and before 3x3
    # pooling (a product by 1/9, the conv truncated as usual).
    "cnn_bn_pools": lambda: tf.keras.Sequential([
        L.Conv2D(3, 3, input_shape=(12, 12, 2)), L.BatchNormalization(), L.AveragePooling2D(2), L.ReLU(),
        L.Conv2D(4, 2, padding="same"), L.AveragePooling2D(3, strides=1), L.Flatten(), L.Dense(3)]),
    "bn_after_relu": lambda: tf.keras.Sequential([L.Dense(8, activation="relu", input_shape=(5,)), L.BatchNormalization(), L.Dense(2)]),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_private_logits_match_keras(inprocess, kind):
    rng = np.random.default_rng(0)
    tf.keras.utils.set_random_seed(0)
    model = randomize_batch_norm(MODELS[kind](), rng)
    name = f"m_{kind}"
    model.share(inprocess, name=name, identity="driver")
    model.serve(7, block=False)  # the quota counts rows
    client = Client().connect_to_model(model.input_shape, logits_model(model).output_shape, inprocess, model_name=name)
    x = rng.normal(size=(7, *model.input_shape[1:]))
    private = client.query_model(x)
    plain = logits_model(model)(x).numpy()
    np.testing.assert_allclose(private, plain, atol=5e-3)
    np.testing.assert_array_equal(private.argmax(-1), plain.argmax(-1))


@pytest.mark.parametrize(
    "model_name, convs, truncations, relus",
    [
        # The first conv feeds 2x2 average pooling and then a ReLU: its product stays unshared, the pooling sums
        # terms, and the ReLU truncates 16 + 2 bits at once; the second conv's own ReLU moves past the max
        # pooling after it (max and ReLU commute), so that conv is truncated as usual.
        ("cnn", [(0, True), (16, False)], [], [18, 0]),
        # Conv + folded BatchNormalization before 2x2 pooling and a ReLU: the same; the second conv feeds 3x3
        # pooling (a product by 1/9): truncated as usual.
        ("cnn_bn_pools", [(0, True), (16, False)], [], [18]),
    ],
)
def test_products_are_truncated_once_before_relus_and_pooling(inprocess, model_name, convs, truncations, relus):
    tf.keras.utils.set_random_seed(0)
    model = MODELS[model_name]()
    name = f"m_trunc_{model_name}"
    model.share(inprocess, name=name, identity="driver")
    steps = inprocess.backend.parties[0].programs[name].steps
    assert [(step["args"]["trunc"], step["args"].get("terms", False)) for step in steps if step["op"] == "conv2d"] == convs
    assert [step["args"]["bits"] for step in steps if step["op"] == "truncate"] == truncations
    assert [step["args"].get("trunc", 0) for step in steps if step["op"] == "relu"] == relus


@pytest.mark.parametrize(
    "layers,unshared",
    [
        ([L.Dense(6, activation="relu", input_shape=(4,)), L.Dense(3), L.Softmax()], True),
        ([L.Dense(6, activation="relu", input_shape=(4,)), L.Dense(3, activation="softmax")], True),
        ([L.Dense(6, activation="relu", input_shape=(4,)), L.Dense(6), L.Reshape((2, 3))], True),
        ([L.Dense(6, activation="relu", input_shape=(4,)), L.Dense(3, activation="relu")], False),
    ],
)
def test_the_output_layer_returns_its_terms_without_a_round(inprocess, layers, unshared):
    # The model's last linear layer leaves its product unshared (no reshare/truncation round): the servers hand
    # their terms to the client, which decodes at twice the fractional bits.
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential(layers)
    name = f"m_terms_{len(layers)}_{unshared}_{layers[-1].name}"
    model.share(inprocess, name=name, identity="driver")
    program = inprocess.backend.parties[0].programs[name]
    products = [step["args"] for step in program.steps if step["op"] == "matmul"]
    # The hidden layer's product goes unshared into its ReLU, the output layer's to the client (or, when the
    # model ends in a ReLU, into that ReLU too).
    assert [args.get("terms", False) for args in products] == [True, True]
    assert program.output_frac_bits == (2 if unshared else 1) * inprocess.frac_bits
    model.serve(5, block=False)
    client = Client().connect_to_model(model.input_shape, logits_model(model).output_shape, inprocess, model_name=name)
    x = np.random.default_rng(1).normal(size=(5, 4))
    np.testing.assert_allclose(client.query_model(x), logits_model(model)(x).numpy(), atol=2e-3)


@pytest.mark.parametrize(
    "layers,fused,relu_trunc",
    [
        ([L.Dense(6, input_shape=(4,)), L.ReLU(), L.Dense(3)], True, 16),
        ([L.Dense(6, input_shape=(4,)), L.Activation("relu"), L.Dense(3)], True, 16),
        ([L.Dense(6, input_shape=(4,)), L.BatchNormalization(), L.ReLU(), L.Dense(3)], True, 16),
        ([L.Dense(6, input_shape=(4,)), L.Dropout(0.1), L.ReLU(), L.Dense(3)], False, 0),
        # The first product is truncated as usual; the second layer's own ReLU truncates its product.
        ([L.Dense(6, input_shape=(4,)), L.Dense(6, activation="relu"), L.Dense(3)], False, 16),
    ],
)
def test_a_product_feeding_a_relu_is_truncated_by_the_relu(inprocess, layers, fused, relu_trunc):
    # Only where nothing but a (folded) layer stands between the product and the ReLU: the ReLU then truncates
    # the product's unshared terms in its own opening (for small tensors one round less).
    tf.keras.utils.set_random_seed(2)
    model = tf.keras.Sequential(layers)
    name = f"m_fused_{len(layers)}_{fused}_{layers[1].name}"
    model.share(inprocess, name=name, identity="driver")
    steps = inprocess.backend.parties[0].programs[name].steps
    first = next(step["args"] for step in steps if step["op"] == "matmul")
    assert (first["trunc"], first.get("terms", False)) == ((0, True) if fused else (16, False))
    relu = next(step["args"] for step in steps if step["op"] == "relu")
    assert relu.get("trunc", 0) == relu_trunc
    model.serve(3, block=False)
    client = Client().connect_to_model(model.input_shape, model.output_shape, inprocess, model_name=name)
    x = np.random.default_rng(2).normal(size=(3, 4))
    np.testing.assert_allclose(client.query_model(x), model(x, training=False).numpy(), atol=2e-3)


@pytest.mark.parametrize(
    "layers",
    [
        [L.Conv2D(3, 3, activation="relu", input_shape=(9, 9, 2)), L.MaxPooling2D(2), L.Flatten(), L.Dense(2)],
        [L.Conv2D(3, 3, input_shape=(9, 9, 2)), L.ReLU(), L.MaxPooling2D(2), L.Flatten(), L.Dense(2)],
        [L.Conv2D(3, 3, input_shape=(9, 9, 2)), L.Activation("relu"), L.MaxPooling2D(3, strides=2), L.Flatten(),
         L.Dense(2)],
    ],
)
def test_a_relu_before_max_pooling_moves_after_it(inprocess, layers):
    # relu(max(a, b)) = max(relu(a), relu(b)): the ReLU runs on the pooled tensor, the convolution is truncated.
    tf.keras.utils.set_random_seed(3)
    model = tf.keras.Sequential(layers)
    name = f"m_relu_pool_{layers[1].name}"
    model.share(inprocess, name=name, identity="driver")
    steps = inprocess.backend.parties[0].programs[name].steps
    ops = [step["op"] for step in steps]
    assert ops.index("max_pool2d") < ops.index("relu")
    conv = next(step["args"] for step in steps if step["op"] == "conv2d")
    assert (conv["trunc"], conv.get("terms", False)) == (16, False)
    model.serve(2, block=False)
    client = Client().connect_to_model(model.input_shape, model.output_shape, inprocess, model_name=name)
    x = np.random.default_rng(3).normal(size=(2, 9, 9, 2))
    np.testing.assert_allclose(client.query_model(x), model(x).numpy(), atol=2e-3)


@pytest.mark.parametrize(
    "layers,words",
    [
        ([L.Dense(4, activation="tanh", input_shape=(3,))], ["tanh", "dense"]),
        ([L.Dense(4, input_shape=(3,)), L.LayerNormalization()], ["LayerNormalization", "no secure form"]),
        ([L.Conv2D(2, 3, dilation_rate=2, input_shape=(9, 9, 1))], ["dilation"]),
        ([L.Dense(4, input_shape=(3,)), L.Softmax(), L.Dense(2)], ["Softmax"]),
    ],
)
def test_unsupported_layers_are_refused_before_sharing(inprocess, layers, words):
    model = tf.keras.Sequential(layers)
    before = sum(len(p.store) for p in inprocess.backend.parties)
    with pytest.raises(UnsupportedLayerError) as info:
        model.share(inprocess, name="refused")
    for word in words:
        assert word in str(info.value)
    assert sum(len(p.store) for p in inprocess.backend.parties) == before, "nothing may be shared"


def test_serving_stops_after_num_requests_and_restarts(inprocess):
    model = MODELS["dense"]()
    model.share(inprocess, name="lifecycle")
    client = Client().connect_to_model(model.input_shape, (None, 5), inprocess, model_name="lifecycle")
    x = np.ones((1, 12))
    with pytest.raises(PolicyDenied, match="not serving"):
        client.query_model(x)  # shared but not served yet
    model.serve(2, block=False)
    client.query_model(x)
    client.query_model(x)
    with pytest.raises(PolicyDenied, match="answered 2 of 2"):
        client.query_model(x)
    model.serve(1, block=False)
    client.query_model(x)
    model.serve(5, block=False)
    assert model.stop() == 0
    with pytest.raises(PolicyDenied):
        client.query_model(x)


def test_bad_client_input_is_refused(inprocess):
    model = MODELS["dense"]()
    model.share(inprocess, name="shapes")
    model.serve(1, block=False)
    client = Client().connect_to_model(model.input_shape, (None, 5), inprocess, model_name="shapes")
    with pytest.raises(ValueError, match="shape"):
        client.query_model(np.ones((2, 11)))


@pytest.fixture(scope="module")
def served(cluster):
    """A CNN shared by the model owner and served in the background, on real server processes."""
    tf.keras.utils.set_random_seed(1)
    model = MODELS["cnn"]()
    model.share(cluster, name="cnn")
    yield model
    model.stop()


def test_networked_clients_get_their_own_answers_concurrently(cluster, served):
    served.serve(8, block=False)  # four queries of two rows
    reference = logits_model(served)
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(2, 10, 10, 1)) for _ in range(4)]
    results, errors = [None] * 4, []
    # Connections first (TLS handshakes), then the four queries at once.
    clients = [Client().connect_to_model(served.input_shape, (None, 3), cluster, model_name="cnn") for _ in range(4)]

    def ask(i):
        try:
            results[i] = clients[i].query_model(inputs[i])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, reference(x).numpy(), atol=5e-3)
    assert served._tfppml_shared.protocol.program_status("cnn")["served"] == 8


def test_a_client_learns_nothing_but_its_own_output(cluster, served):
    served.serve(1, block=False)
    client = Client().connect_to_model(served.input_shape, (None, 3), cluster, model_name="cnn")
    prot = client.protocol
    weights = served._tfppml_shared.context.weights
    # Neither revealing nor computing on the owner's weights is allowed to the client ...
    handle = mpc.SharedTensor(prot, weights[0].id, weights[0].shape, 16)
    with pytest.raises(PolicyDenied):
        prot.reveal(handle)
    with pytest.raises(PolicyDenied):
        prot.reveal(handle * 1.0)
    # ... nor controlling the model, nor reading another client's input.
    with pytest.raises(PolicyDenied):
        prot.serve("cnn", 100)
    # ... nor even sharing a value of its own: a client only queries (tests/adversarial has every operation).
    with pytest.raises(PolicyDenied, match="only the model owners"):
        prot.share(np.ones((1, 10, 10, 1)))
    # Its own query still works.
    assert client.query_model(np.zeros((1, 10, 10, 1))).shape == (1, 3)
