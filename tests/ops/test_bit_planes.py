"""Bit-slicing (tfppml.ops.bit_planes): against a NumPy reference, TF kernel and ctypes twin alike."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfppml.ops import bit_planes, bit_planes_numpy, plane_bits_numpy


def reference_planes(x: np.ndarray) -> np.ndarray:
    """planes[j, w] bit b = bit j of element 64w + b, from unpackbits/packbits (slow, obviously right)."""
    flat = x.reshape(-1)
    words = -(-flat.size // 64)
    padded = np.zeros(words * 64, dtype="<u8")
    padded[: flat.size] = flat
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")  # [element, bit]
    packed = np.packbits(np.ascontiguousarray(bits.T), axis=1, bitorder="little")  # [bit, element / 8]
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(64, words)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 128, 1000, 4097])
def test_planes_match_the_reference(size):
    x = np.random.default_rng(size).integers(0, 2**64, size, dtype=np.uint64)
    expected = reference_planes(x)
    np.testing.assert_array_equal(bit_planes_numpy(x), expected)
    np.testing.assert_array_equal(bit_planes(x).numpy(), expected)


def test_any_shape_is_flattened_row_major_and_single_bits_land_where_documented():
    x = np.zeros((3, 50), dtype=np.uint64)
    x[2, 7] = np.uint64(1 << 45)  # element 2 * 50 + 7 = 107: word 1, bit 43 of plane 45
    planes = bit_planes_numpy(x)
    assert planes.shape == (64, 3)
    assert np.count_nonzero(planes) == 1 and planes[45, 1] == np.uint64(1 << 43)
    np.testing.assert_array_equal(bit_planes(tf.constant(x)).numpy(), planes)


def test_plane_bits_inverts_one_plane():
    x = np.random.default_rng(7).integers(0, 2**64, 777, dtype=np.uint64)
    planes = bit_planes_numpy(x)
    for j in (0, 31, 63):
        np.testing.assert_array_equal(plane_bits_numpy(planes[j], x.size), (x >> np.uint64(j)) & np.uint64(1))


def test_in_a_graph_the_static_shape_is_known():
    fn = tf.function(lambda t: bit_planes(t)).get_concrete_function(tf.TensorSpec([5, 30], tf.uint64))
    assert fn.output_shapes.as_list() == [64, 3]


def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="`x` must be a uint64 NumPy array"):
        bit_planes_numpy(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="`x` must have dtype uint64"):
        bit_planes(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="`plane` must be a uint64 NumPy vector"):
        plane_bits_numpy(np.zeros((2, 2), dtype=np.uint64), 3)
    with pytest.raises(ValueError, match="`size` must be in \\[0, 128\\]"):
        plane_bits_numpy(np.zeros(2, dtype=np.uint64), 129)
