"""`size_model` against Keras itself: the parameter count and the output shape computed from a configuration
alone must equal what Keras builds, for every allowed layer (the worker sizes models before building them)."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfppml.remote.models import check_model_config
from tfppml.remote.sizing import size_model

L = tf.keras.layers


def _models():
    yield "mlp", tf.keras.Sequential([L.Input((13,)), L.Dense(7, activation="relu"), L.Dropout(0.1),
                                      L.Dense(3, use_bias=False), L.Softmax()])
    yield "input_shape_kw", tf.keras.Sequential([L.Dense(5, input_shape=(4,)), L.ReLU(), L.Dense(2)])
    yield "cnn", tf.keras.Sequential([
        L.Input((17, 15, 3)), L.Conv2D(8, 3, strides=2, padding="same"), L.BatchNormalization(),
        L.LeakyReLU(), L.Conv2D(4, (3, 2), dilation_rate=(2, 1), padding="valid", use_bias=False),
        L.MaxPooling2D(), L.AveragePooling2D(pool_size=(2, 1), strides=1, padding="same"),
        L.GlobalAveragePooling2D(), L.Dense(2)])
    yield "conv1d", tf.keras.Sequential([L.Input((20, 6)), L.Conv1D(6, 5, groups=2, padding="causal"),
                                         L.MaxPooling1D(3), L.AveragePooling1D(), L.LayerNormalization(),
                                         L.GlobalAveragePooling1D(keepdims=True), L.Flatten(), L.Dense(1)])
    yield "embedding", tf.keras.Sequential([L.Input((9,)), L.Embedding(50, 4), L.Reshape((-1, 6)),
                                            L.Flatten(), L.Activation("tanh"), L.Dense(2)])
    yield "global_max", tf.keras.Sequential([L.Input((6, 6, 2)), L.GlobalMaxPooling2D(), L.Dense(2)])
    i = tf.keras.Input((5,))
    a = L.Dense(4)(i)
    shared = L.Dense(4)
    b = shared(a)
    c = shared(b)  # a shared layer: its weights once, its activations twice
    d = L.Concatenate()([a, L.Add()([b, c])])
    yield "functional", tf.keras.Model(i, L.Dense(3)(d))
    inner = tf.keras.Sequential([L.Input((4,)), L.Dense(6)])
    j = tf.keras.Input((4,))
    yield "nested", tf.keras.Model(j, L.Dense(2)(inner(j)))
    yield "float64", tf.keras.Sequential([L.Input((3,)), L.Dense(2, dtype="float64")])


@pytest.mark.parametrize("name,model", list(_models()), ids=[n for n, _ in _models()])
def test_size_matches_keras(name, model):
    config = json.loads(model.to_json())
    check_model_config(config)
    size = size_model(config)
    assert size.params == model.count_params()
    assert size.input_shape == tuple(model.input_shape[1:])
    assert size.output_shape == tuple(model.output_shape[1:])
    outputs = [np.prod(layer.output_shape[1:]) for layer in model.layers if not isinstance(layer, tf.keras.Model)]
    assert size.activations >= sum(outputs)
    assert size.itemsize == (8 if name == "float64" else 4)


def _dense_bomb(units=15000):
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, units], "dtype": "float32"}},
        {"class_name": "Dense", "config": {"units": units, "dtype": "float32"}}]}}


def test_the_dense_bomb_is_sized_without_building():
    size = size_model(_dense_bomb())
    assert size.params == 15000 * 15000 + 15000


def test_a_build_config_that_disagrees_with_the_input_is_refused():
    config = _dense_bomb(10)
    config["config"]["layers"][1]["build_config"] = {"input_shape": [None, 15000]}
    with pytest.raises(ValueError, match=r"build_config.input_shape.*receives"):
        size_model(config)


def test_the_concatenate_bomb_is_sized_without_building():
    i = tf.keras.Input((8,))
    x = i
    for _ in range(6):
        x = L.Concatenate()([x, x])
    config = json.loads(tf.keras.Model(i, x).to_json())
    # The same model with 19 levels (the attack) is never built: edit the configuration's shapes instead.
    size = size_model(config)
    assert size.output_shape == (8 * 2**6,)
    assert size.activations == 8 + sum(8 * 2**k for k in range(1, 7))


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["config"]["layers"][0]["config"].update(batch_input_shape=[None, None]), "fixed dimensions"),
    (lambda c: c["config"]["layers"].pop(0), "declares no input shape"),
    (lambda c: c["config"]["layers"][1]["config"].update(units=0), "units"),
    (lambda c: c["config"]["layers"][1]["config"].update(dtype="int8"), "dtype"),
])
def test_configurations_that_cannot_be_sized_are_refused(edit, match):
    config = _dense_bomb(4)
    edit(config)
    with pytest.raises(ValueError, match=match):
        size_model(config)


# -- configurations crafted to be sized as one model and built as another (red team of issue #18)


def _nested_bomb(variant):
    """A nested Sequential that receives 10 features but declares 3,000 (its first layer's batch_input_shape,
    or its own build_input_shape): Keras builds it with the declared shape (the red team's used 10,000: 100 M
    parameters from a 1 kB configuration sized at 10,000)."""
    outer = json.loads(tf.keras.Sequential([L.Input((10,)), tf.keras.Sequential([L.Input((10,)), L.Dense(3000)])])
                       .to_json())  # fmt: skip
    inner = outer["config"]["layers"][1]
    dense = inner["config"]["layers"][1]
    inner["config"]["layers"] = [dense]  # no InputLayer of its own, and no build_config to contradict
    dense.pop("build_config", None)
    inner.pop("build_config", None)
    if variant == "first-layer":
        dense["config"]["batch_input_shape"] = [None, 3000]
    else:
        inner["config"]["build_input_shape"] = [None, 3000]
    return outer, inner


@pytest.mark.parametrize("variant", ["first-layer", "build-input-shape"])
def test_a_nested_sequential_must_declare_what_it_receives(variant):
    bomb, inner = _nested_bomb(variant)
    with pytest.raises(ValueError, match="declares batch_input_shape|build_input_shape is"):
        size_model(bomb)
    # Control: Keras builds the nested model with the declared shape (9 M parameters where 10 x 3000 flow),
    # before it finds out that the outer model feeds it 10 features.
    assert tf.keras.models.model_from_json(json.dumps(inner)).count_params() == 3000 * 3000 + 3000


def test_layer_count_and_dtype_are_checked_before_building():
    deep = tf.keras.Sequential([L.Input((4,))] + [L.ReLU() for _ in range(129)])
    with pytest.raises(ValueError, match="more than 128 layers"):
        size_model(json.loads(deep.to_json()))
    size_model(json.loads(tf.keras.Sequential([L.Input((4,))] + [L.ReLU() for _ in range(127)]).to_json()))
    config = json.loads(tf.keras.Sequential([L.Input((4,)), L.Dense(2)]).to_json())
    config["config"]["layers"][1]["config"]["dtype"] = ["float32"]
    with pytest.raises(ValueError, match=r"layers\[1\]\.dtype must be one of"):
        size_model(config)


def test_build_model_uses_zero_initializers_and_names_build_errors():
    import time

    from tfppml.remote.models import build_model, check_compile

    spec = {"compile": check_compile({"loss": "mse"})}
    model = tf.keras.Sequential([L.Input((3000,)), L.Dense(3000, kernel_initializer="orthogonal")])
    spec["model"] = model.to_json()
    started = time.monotonic()
    built = build_model(spec, {f"w{i}": w for i, w in enumerate(model.get_weights())})
    assert time.monotonic() - started < 5  # an orthogonal 9 M-entry kernel takes seconds to initialise
    np.testing.assert_array_equal(built.get_weights()[0], model.get_weights()[0])
    config = json.loads(spec["model"])
    config["config"]["layers"][1]["config"]["units"] = "many"
    with pytest.raises((TypeError, ValueError)):
        build_model({**spec, "model": json.dumps(config)}, {})
