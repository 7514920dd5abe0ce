"""Secure comparison, ReLU, pooling and argmax against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

import tfppml.mpc as mpc
from tfppml.mpc.primitives import fss
from tfppml.mpc.tensor import SharedTensor

from .conftest import RES, product_tolerance


def test_nonnegative_exact_including_edges(prot):
    bound = prot.encoding.bound
    x = np.array([0.0, RES, -RES, 1.0, -1.0, bound - 1, -(bound - 1), 123.456, -0.0001])
    result = prot.reveal(prot.nonnegative(prot.share(x)))
    assert result.dtype == np.int64
    # Values closer to 0 than half a unit encode to 0, which counts as non-negative.
    expected = (np.round(x / RES) >= 0).astype(np.int64)
    np.testing.assert_array_equal(result, expected)


def test_relu_random(prot, rng):
    x = rng.normal(size=(40, 25)) * 50
    np.testing.assert_allclose(prot.reveal(mpc.relu(prot.share(x))), np.maximum(x, 0), atol=RES)


# ReLUs of up to fss.FSS_RELU_MAX_SIZE elements run the function-secret-sharing protocol, larger ones the
# binary adder: both sizes on both back ends (the networked servers keep their default threshold).
@pytest.mark.parametrize("size", [64, fss.FSS_RELU_MAX_SIZE + 1])
def test_relu_exact_on_both_paths_including_edges(prot, rng, size):
    bound = prot.encoding.bound
    edges = np.array([0.0, RES, -RES, 1.0, -1.0, bound - 1, -(bound - 1), 123.456, -0.0001, 2 * RES, -2 * RES])
    x = np.concatenate([edges, rng.normal(size=size - len(edges)) * 1000])
    expected = np.maximum(np.round(x / RES), 0) * RES
    np.testing.assert_array_equal(prot.reveal(mpc.relu(prot.share(x))), expected)


@pytest.mark.parametrize("size", [300, fss.FSS_RELU_MAX_SIZE + 1])
def test_relu_of_an_untruncated_value_truncates_it(prot, rng, size):
    # Integers read as fixed point with 2f fractional bits (an unshared product's scale): the ReLU divides them
    # by 2^f, off by at most one unit, and the small-tensor protocol rounds stochastically (no bias).
    raw = rng.integers(-(2**40), 2**40, size)
    raw[:6] = [0, 1, -1, 2**16, 2**16 - 1, -(2**16)]
    shared = prot.share(raw, integer=True)
    wide = SharedTensor(prot, shared.id, shared.shape, 2 * prot.frac_bits)
    out = mpc.relu(wide)
    assert out.frac_bits == prot.frac_bits
    got = np.round(prot.reveal(out) / RES).astype(np.int64)
    exact = np.maximum(raw, 0) / 2.0**16
    error = got - exact
    assert np.all(np.abs(error) < 1), error[np.abs(error) >= 1]
    if size <= fss.FSS_RELU_MAX_SIZE:
        # Exact where there is nothing to round: multiples of 2^f and negative values.
        assert got[[0, 2, 3, 5]].tolist() == [0, 0, 1, 0]
        positive = raw > 0
        assert abs(np.mean(error[positive])) < 5 * 0.29 / np.sqrt(positive.sum())


def test_relu_of_products_composes(prot, rng):
    x = rng.normal(size=(8, 16))
    w = rng.normal(size=(16, 4))
    result = prot.reveal(mpc.relu(prot.share(x) @ prot.share(w) + 0.5))
    np.testing.assert_allclose(result, np.maximum(x @ w + 0.5, 0), atol=16 * 5 * RES)


@pytest.mark.parametrize("pool,strides", [(2, None), (3, 1), ((2, 3), (1, 2))])
@pytest.mark.parametrize("shape", [(2, 7, 8, 3), (2, 24, 24, 8)])
def test_max_pool_matches_tf(prot, rng, pool, strides, shape):
    # The small input's comparisons run on the FSS ReLU (max(l, r) = r + ReLU(l - r)), the large one's on the
    # binary adder.
    x = rng.normal(size=shape) * 4
    expected = tf.nn.max_pool2d(x, pool, strides if strides is not None else pool, "VALID").numpy()
    result = prot.reveal(mpc.max_pool2d(prot.share(x), pool, strides))
    np.testing.assert_allclose(result, expected, atol=RES)


@pytest.mark.parametrize("pool,strides", [(2, None), (3, 1), ((2, 3), (1, 2))])
def test_avg_pool_matches_tf(prot, rng, pool, strides):
    x = rng.normal(size=(2, 7, 8, 3)) * 4
    expected = tf.nn.avg_pool2d(x, pool, strides if strides is not None else pool, "VALID").numpy()
    result = prot.reveal(mpc.avg_pool2d(prot.share(x), pool, strides))
    # The window sum (at most window * max|x|) is multiplied by 1/window rounded to within 2**-17.
    window = np.prod(np.broadcast_to(pool, 2))
    np.testing.assert_allclose(result, expected, atol=window * np.abs(x).max() * RES / 2 + 2 * RES)


@pytest.mark.parametrize("pool", [2, (2, 4), 3])
def test_avg_pool_of_an_untruncated_convolution(prot, rng, pool):
    x = rng.normal(size=(2, 9, 9, 2)) * 3
    w = rng.normal(size=(3, 3, 2, 4)) * 0.5
    conv = mpc.conv2d(prot.share(x), prot.share(w), truncate=False)
    assert conv.frac_bits == 2 * prot.frac_bits
    exact = tf.nn.conv2d(x, w, 1, "VALID").numpy()
    # Untruncated: the product of two 16-bit encodings, exact up to the inputs' rounding.
    np.testing.assert_allclose(prot.reveal(conv), exact, atol=product_tolerance(x, w, k=18))
    pooled = mpc.avg_pool2d(conv, pool)
    assert pooled.frac_bits == prot.frac_bits
    expected = tf.nn.avg_pool2d(exact, pool, pool, "VALID").numpy()
    np.testing.assert_allclose(prot.reveal(pooled), expected, atol=product_tolerance(x, w, k=18) + 3 * RES)


def test_avg_pool_of_a_power_of_two_window_is_one_truncation(inprocess, rng):
    x = inprocess.share(rng.normal(size=(1, 8, 8, 2)))
    inprocess.communication_stats(reset=True)
    mpc.avg_pool2d(x, 2)
    received = sorted(stats["messages_received"] for stats in inprocess.communication_stats().values())
    # One one-round truncation (server0 sends to both others, who swap their halves), no product by 1/4: a
    # product would add one message to every server.
    assert received == [0, 2, 2]


@pytest.mark.parametrize("shape,axis", [((6, 10), -1), ((3, 7), 1), ((5, 4, 3), 0), ((1, 1), -1)])
def test_argmax(prot, rng, shape, axis):
    x = rng.normal(size=shape)
    result = prot.reveal(mpc.argmax(prot.share(x), axis=axis))
    np.testing.assert_array_equal(result, np.argmax(x, axis=axis))
