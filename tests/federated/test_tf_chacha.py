"""The TF-ops ChaCha20 used inside TFF computations equals tfppml's kernel word for word."""

import numpy as np
import pytest
import tensorflow as tf

import tfppml
from tfppml.federated.tf_chacha import tf_chacha20_uniform


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 64, 650])
def test_matches_prg_uniform_kernel(size):
    rng = np.random.default_rng(size)
    keys = rng.integers(0, 2**64 - 1, size=(3, 4), dtype=np.uint64, endpoint=True)
    got = tf_chacha20_uniform(tf.constant(keys), size).numpy()
    assert got.shape == (3, size)
    for i in range(3):
        np.testing.assert_array_equal(got[i], tfppml.ops.prg_uniform(keys[i], [size]).numpy())


def test_argument_errors():
    with pytest.raises(TypeError, match="`keys` must be uint64, got <dtype: 'int64'>"):
        tf_chacha20_uniform(tf.zeros([1, 4], tf.int64), 3)
    with pytest.raises(ValueError, match=r"`keys` must have shape \[k, 4\], got \(1, 2\)"):
        tf_chacha20_uniform(tf.zeros([1, 2], tf.uint64), 3)
    with pytest.raises(ValueError, match="`size` must be an int >= 0, got -1"):
        tf_chacha20_uniform(tf.zeros([1, 4], tf.uint64), -1)
