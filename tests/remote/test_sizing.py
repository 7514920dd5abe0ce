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
