"""Ring elementwise ops, reduce_sum and shift against NumPy's uint64 arithmetic (which wraps mod 2**64)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfppml import ops

U64 = np.uint64
EDGE = np.array([0, 1, 2, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1], dtype=U64)

BINARY = [
    (ops.ring_add, np.add),
    (ops.ring_sub, np.subtract),
    (ops.ring_mul, np.multiply),
]

uint64_values = st.integers(min_value=0, max_value=2**64 - 1)


def ring_arrays(shape):
    return hnp.arrays(U64, shape, elements=uint64_values)


@pytest.mark.parametrize("ours,reference", BINARY)
def test_binary_edge_values_wrap(ours, reference):
    x, y = np.meshgrid(EDGE, EDGE)
    with np.errstate(over="ignore"):
        expected = reference(x, y)
    result = ours(x, y)
    assert result.dtype == tf.uint64
    np.testing.assert_array_equal(result.numpy(), expected)


@pytest.mark.parametrize("ours,reference", BINARY)
@given(data=st.data())
def test_binary_broadcasting_matches_numpy(ours, reference, data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=5))
    x = data.draw(ring_arrays(shapes.input_shapes[0]))
    y = data.draw(ring_arrays(shapes.input_shapes[1]))
    with np.errstate(over="ignore"):
        expected = reference(x, y)
    np.testing.assert_array_equal(ours(x, y).numpy(), expected)


@pytest.mark.parametrize("ours,reference", BINARY)
def test_binary_large_parallel(ours, reference):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**64, size=(300, 1000), dtype=U64, endpoint=False)
    y = rng.integers(0, 2**64, size=(1000,), dtype=U64, endpoint=False)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(ours(x, y).numpy(), reference(x, y))
        np.testing.assert_array_equal(ours(x, x).numpy(), reference(x, x))


def test_neg_is_additive_inverse():
    result = ops.ring_neg(EDGE).numpy()
    np.testing.assert_array_equal(result, (U64(0) - EDGE))
    np.testing.assert_array_equal(ops.ring_add(result, EDGE).numpy(), np.zeros_like(EDGE))


@given(data=st.data())
def test_reduce_sum_matches_numpy(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    x = data.draw(ring_arrays(shape))
    rank = len(shape)
    axis = data.draw(
        st.none() | st.lists(st.integers(-rank, rank - 1), unique_by=lambda a: a % rank, max_size=rank)
        if rank
        else st.none()
    )
    keepdims = data.draw(st.booleans())
    np_axis = None if axis is None else tuple(axis)
    with np.errstate(over="ignore"):
        expected = np.sum(x, axis=np_axis, keepdims=keepdims, dtype=U64)
    np.testing.assert_array_equal(ops.ring_reduce_sum(x, axis=axis, keepdims=keepdims).numpy(), expected)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, [0, 2], [1, 2], None])
def test_reduce_sum_large_wraps(axis):
    x = np.full((40, 70, 90), 2**63 + 12345, dtype=U64)
    with np.errstate(over="ignore"):
        expected = np.sum(x, axis=None if axis is None else tuple(np.atleast_1d(axis)), dtype=U64)
    np.testing.assert_array_equal(ops.ring_reduce_sum(x, axis=axis).numpy(), expected)


@given(x=ring_arrays(st.integers(0, 50)), bits=st.integers(0, 63))
def test_shift_right_is_arithmetic(x, bits):
    expected = (x.view(np.int64) >> bits).view(U64)
    np.testing.assert_array_equal(ops.ring_shift_right(x, bits).numpy(), expected)


def test_shift_right_keeps_sign_of_negative_fixed_point():
    encoded = ops.fixed_point_encode(np.array([-3.0, 3.0]), frac_bits=32)
    shifted = ops.ring_shift_right(encoded, 16)
    np.testing.assert_array_equal(ops.fixed_point_decode(shifted, frac_bits=16).numpy(), [-3.0, 3.0])


def test_ops_work_inside_tf_function():
    @tf.function
    def f(a, b):
        return ops.ring_reduce_sum(ops.ring_mul(ops.ring_sub(a, b), b), axis=0)

    a = np.array([[5, 7], [1, 2]], dtype=U64)
    b = np.array([[6, 7], [3, 1]], dtype=U64)
    with np.errstate(over="ignore"):
        expected = np.sum((a - b) * b, axis=0, dtype=U64)
    np.testing.assert_array_equal(f(tf.constant(a), tf.constant(b)).numpy(), expected)


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: ops.ring_add(np.ones(3, np.int64), np.ones(3, U64)), TypeError, ["ring_add", "`x`", "uint64", "int64"]),
        (lambda: ops.ring_mul(np.ones(3, U64), np.ones(3, np.float32)), TypeError, ["ring_mul", "`y`", "float32"]),
        (lambda: ops.ring_sub(np.ones((2, 3), U64), np.ones((4,), U64)), ValueError, ["ring_sub", "broadcast"]),
        (lambda: ops.ring_add([1, -1], np.ones(2, U64)), ValueError, ["ring_add", "`x`", "-1", "2**64"]),
        (lambda: ops.ring_add([2**64], np.ones(1, U64)), ValueError, ["ring_add", "`x`"]),
        (lambda: ops.ring_neg(np.ones(3, np.int32)), TypeError, ["ring_neg", "`x`"]),
        (lambda: ops.ring_reduce_sum(np.ones((2, 3), U64), axis=2), ValueError, ["ring_reduce_sum", "`axis`"]),
        (lambda: ops.ring_reduce_sum(np.ones((2, 3), U64), axis=[1, -1]), ValueError, ["`axis`", "repeats"]),
        (lambda: ops.ring_reduce_sum(np.ones((2, 3), U64), axis=1.0), TypeError, ["`axis`"]),
        (lambda: ops.ring_shift_right(np.ones(3, U64), 64), ValueError, ["ring_shift_right", "`bits`", "64"]),
        (lambda: ops.ring_shift_right(np.ones(3, U64), -1), ValueError, ["`bits`"]),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_python_ints_in_range_are_accepted():
    np.testing.assert_array_equal(ops.ring_add([2**64 - 1, 5], [1, 2**63]).numpy(), np.array([0, 2**63 + 5], U64))
