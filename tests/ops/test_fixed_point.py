"""Fixed-point encode/decode against a NumPy reference, including range errors instead of wrap-around."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfppml import ops


def reference_encode(x, frac_bits):
    return np.round(np.asarray(x, np.float64) * 2.0**frac_bits).astype(np.int64).view(np.uint64)


@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
                 elements=st.floats(-1e9, 1e9, allow_nan=False)),
    frac_bits=st.integers(0, 30),
)
def test_encode_matches_reference_and_roundtrips(x, frac_bits):
    encoded = ops.fixed_point_encode(x, frac_bits=frac_bits)
    assert encoded.dtype == tf.uint64
    np.testing.assert_array_equal(encoded.numpy(), reference_encode(x, frac_bits))
    decoded = ops.fixed_point_decode(encoded, frac_bits=frac_bits).numpy()
    np.testing.assert_allclose(decoded, x, rtol=0, atol=2.0 ** -(frac_bits + 1) + 1e-9 * np.abs(x).max(initial=0))


def test_negative_values_are_twos_complement():
    encoded = ops.fixed_point_encode(np.array([-1.0, -0.5, 0.0, 0.5]), frac_bits=16).numpy()
    np.testing.assert_array_equal(encoded, np.array([2**64 - 2**16, 2**64 - 2**15, 0, 2**15], np.uint64))


def test_round_half_to_even():
    # 0.5 and 1.5 units of the last place round to the even neighbour, as numpy.round does.
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5]) / 2.0**4
    np.testing.assert_array_equal(ops.fixed_point_encode(x, frac_bits=4).numpy().view(np.int64), [0, 2, 2, 0, -2])


def test_float32_input_and_output():
    x = np.array([[1.25, -3.75]], np.float32)
    encoded = ops.fixed_point_encode(x, frac_bits=8)
    decoded = ops.fixed_point_decode(encoded, frac_bits=8, dtype=tf.float32)
    assert decoded.dtype == tf.float32
    np.testing.assert_array_equal(decoded.numpy(), x)


@pytest.mark.parametrize("frac_bits", [0, 16, 40])
def test_values_near_the_range_limit(frac_bits):
    limit = 2.0 ** (63 - frac_bits)
    inside = np.array([-limit, np.nextafter(limit, 0)])
    np.testing.assert_array_equal(ops.fixed_point_encode(inside, frac_bits).numpy(), reference_encode(inside, frac_bits))
    for outside in (limit, -np.nextafter(limit * 2, 0), 1e300):
        with pytest.raises(ValueError, match=r"out of range for frac_bits=%d" % frac_bits):
            ops.fixed_point_encode(np.array([0.0, outside]), frac_bits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    x = np.zeros(1000)
    x[617] = bad
    with pytest.raises(ValueError) as info:
        ops.fixed_point_encode(x)
    assert "index 617" in str(info.value) and "finite" in str(info.value)
    assert "function_node" not in str(info.value)


def test_error_in_graph_mode_is_invalid_argument():
    @tf.function
    def encode(x):
        return ops.fixed_point_encode(x)

    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        encode(tf.constant([np.nan]))


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: ops.fixed_point_encode(np.ones(3, np.int64)), TypeError, ["fixed_point_encode", "`x`", "int64"]),
        (lambda: ops.fixed_point_encode(np.ones(3), frac_bits=63), ValueError, ["`frac_bits`", "63"]),
        (lambda: ops.fixed_point_encode(np.ones(3), frac_bits=1.5), TypeError, ["`frac_bits`"]),
        (lambda: ops.fixed_point_decode(np.ones(3)), TypeError, ["fixed_point_decode", "`x`", "float64"]),
        (lambda: ops.fixed_point_decode(np.ones(3, np.uint64), dtype=tf.int32), TypeError, ["`dtype`"]),
        (lambda: ops.fixed_point_decode(np.ones(3, np.uint64), frac_bits=-1), ValueError, ["`frac_bits`"]),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
