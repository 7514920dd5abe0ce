"""Ring matmul and conv2d against NumPy references with exact wrap-around modulo 2**64.

Every numerical test runs twice: on the code the CPU would use (AMX tiles for large products where the CPU and
Linux allow it, else the AVX2 micro-kernel where available) and on the portable scalar micro-kernel (forced
through the op's `force_scalar` attribute), so both are checked against NumPy.  The TFPPML_ISA tests below run
each narrower path too, in fresh processes.
"""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from tfppml import ops
from tfppml.ops.ring_matmul import _ring_conv2d, _ring_matmul

U64 = np.uint64
EDGE = np.array(
    [0, 1, 2, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1], dtype=U64
)
IMPLS = {"default": False, "scalar": True}


@pytest.fixture(params=sorted(IMPLS), ids=sorted(IMPLS))
def force_scalar(request):
    return IMPLS[request.param]


def ring_values(rng, shape):
    """Uniform uint64 values, with about a third of them taken from the edge values."""
    values = rng.integers(0, 2**64, size=shape, dtype=U64, endpoint=False)
    edge = rng.choice(EDGE, size=shape)
    return np.where(rng.random(shape) < 0.3, edge, values).astype(U64)


def matmul_reference(a, b):
    """NumPy's integer matmul wraps modulo 2**64 for uint64 (checked against Python ints below)."""
    return np.matmul(a, b)


def conv2d_output_and_padding(size, window, stride, padding):
    """tf.nn.conv2d's output size and leading padding along one dimension."""
    if padding == "VALID":
        return (size - window + stride) // stride, 0
    out = -(-size // stride)
    return out, max((out - 1) * stride + window - size, 0) // 2


def conv2d_reference(x, w, strides, padding):
    """Sum over filter taps of (shifted input window) @ w[kh, kw], in wrapping uint64."""
    batch, in_h, in_w, _ = x.shape
    f_h, f_w, _, out_c = w.shape
    s_h, s_w = strides
    out_h, top = conv2d_output_and_padding(in_h, f_h, s_h, padding)
    out_w, left = conv2d_output_and_padding(in_w, f_w, s_w, padding)
    padded = np.zeros(
        (batch, top + in_h + f_h + s_h * out_h, left + in_w + f_w + s_w * out_w, x.shape[3]), U64
    )
    padded[:, top : top + in_h, left : left + in_w, :] = x
    out = np.zeros((batch, out_h, out_w, out_c), U64)
    for kh in range(f_h):
        for kw in range(f_w):
            window = padded[:, kh : kh + s_h * out_h : s_h, kw : kw + s_w * out_w : s_w, :][:, :out_h, :out_w]
            out += np.matmul(window, w[kh, kw])
    return out


# --------------------------------------------------------------------------------------------- matmul


def test_reference_wraps_like_python_integers():
    rng = np.random.default_rng(1)
    a, b = ring_values(rng, (5, 9)), ring_values(rng, (9, 4))
    exact = (a.astype(object) @ b.astype(object)) % 2**64
    np.testing.assert_array_equal(matmul_reference(a, b), exact.astype(U64))


@pytest.mark.parametrize(
    "m,k,n",
    [
        (1, 1, 1),
        (4, 4, 4),
        (5, 7, 3),
        (8, 16, 12),
        (13, 1, 9),
        (1, 50, 1),
        (2, 700, 1030),  # few rows: B packed block by block as it is used
        (33, 385, 17),  # two k blocks
        (70, 800, 41),
        (250, 90, 66),  # many rows: B packed once and shared
    ],
)
def test_matmul_matches_numpy(force_scalar, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = ring_values(rng, (m, k)), ring_values(rng, (k, n))
    result = _ring_matmul(a, b, force_scalar=force_scalar)
    assert result.dtype == tf.uint64
    np.testing.assert_array_equal(result.numpy(), matmul_reference(a, b))


def test_matmul_edge_values_all_pairs(force_scalar):
    # Every product of two edge values, summed along k with long runs of 2**64 - 1 and 2**63.
    a = np.tile(EDGE[:, None], (1, 600))
    b = np.tile(EDGE[None, :], (600, 1))
    np.testing.assert_array_equal(
        _ring_matmul(a, b, force_scalar=force_scalar).numpy(), matmul_reference(a, b)
    )


def test_matmul_negative_fixed_point_values(force_scalar):
    rng = np.random.default_rng(7)
    a = rng.integers(-(2**20), 2**20, size=(9, 31))
    b = rng.integers(-(2**20), 2**20, size=(31, 6))
    result = _ring_matmul(a.astype(U64), b.astype(U64), force_scalar=force_scalar).numpy()
    np.testing.assert_array_equal(result.view(np.int64), a @ b)


def test_matmul_large_parallel(force_scalar):
    rng = np.random.default_rng(3)
    a, b = ring_values(rng, (301, 403)), ring_values(rng, (403, 199))
    np.testing.assert_array_equal(
        _ring_matmul(a, b, force_scalar=force_scalar).numpy(), matmul_reference(a, b)
    )


def test_matmul_long_k_of_all_ones_bytes(force_scalar):
    # Products large enough for the AMX path (m, n >= 32, k >= 64), k past two of its 8192-column passes, and every byte
    # 0xff: the byte-plane sums are as large as they get, so a lost carry or a wrapped 32-bit sum would show.
    k = 17000  # one pass over all of k would wrap S_3 = 4 * k * 255**2 past 2**32
    rng = np.random.default_rng(11)
    a = np.full((40, k), 2**64 - 1, dtype=U64)
    b = np.full((k, 33), 2**64 - 1, dtype=U64)
    a[0] = rng.choice(EDGE, size=k)  # one row and one column of mixed values; the rest stays all 0xff
    b[:, 0] = rng.choice(EDGE, size=k)
    np.testing.assert_array_equal(_ring_matmul(a, b, force_scalar=force_scalar).numpy(), matmul_reference(a, b))


@pytest.mark.parametrize("m,k,n", [(1, 784, 128), (3, 5, 7), (0, 3, 4), (4, 0, 3), (40, 300, 50), (11, 600, 11)])
def test_numpy_variant_matches_the_kernel(m, k, n):
    rng = np.random.default_rng(m + 10 * k + 100 * n)
    a, b = ring_values(rng, (m, k)), ring_values(rng, (k, n))
    result = ops.ring_matmul_numpy(a, b)
    assert result.dtype == np.uint64 and result.shape == (m, n)
    np.testing.assert_array_equal(result, matmul_reference(a, b))
    np.testing.assert_array_equal(result, ops.ring_matmul(a, b).numpy())
    # Non-contiguous operands are accepted (copied to contiguous ones first).
    np.testing.assert_array_equal(ops.ring_matmul_numpy(np.asfortranarray(a), b[:, ::-1]), matmul_reference(a, b[:, ::-1]))


@pytest.mark.parametrize(
    "a,b,error,message",
    [
        (np.ones((2, 3), np.int64), np.ones((3, 2), np.uint64), TypeError, "`a` must be a uint64 NumPy array"),
        (np.ones((2, 3), np.uint64), [[1, 2]], TypeError, "`b` must be a uint64 NumPy array"),
        (np.ones(3, np.uint64), np.ones((3, 2), np.uint64), ValueError, "`a` must be a matrix"),
        (np.ones((2, 3), np.uint64), np.ones((4, 2), np.uint64), ValueError, "inner dimensions differ"),
    ],
)
def test_numpy_variant_bad_arguments(a, b, error, message):
    with pytest.raises(error, match=message):
        ops.ring_matmul_numpy(a, b)


@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((3, 5, 7), (3, 7, 2)),  # equal batch dimensions
        ((2, 3, 5, 7), (7, 4)),  # one right-hand matrix for all
        ((5, 7), (2, 3, 7, 4)),  # one left-hand matrix for all
        ((2, 1, 5, 7), (3, 7, 4)),  # both broadcast
        ((1, 6, 5), (4, 5, 6)),
        ((2, 0, 3, 4), (4, 5)),  # empty batch
        ((2, 3, 0), (2, 0, 4)),  # k = 0: zeros
        ((2, 0, 3), (2, 3, 4)),  # m = 0
        ((2, 1, 40, 70), (3, 70, 36)),  # both broadcast, large enough for the AMX path
        ((33, 96), (2, 96, 64)),
    ],
)
def test_batched_matmul_broadcasts_like_tf(force_scalar, a_shape, b_shape):
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape))
    a, b = ring_values(rng, a_shape), ring_values(rng, b_shape)
    result = _ring_matmul(a, b, force_scalar=force_scalar)
    expected = matmul_reference(a, b)
    assert result.shape == expected.shape == tf.matmul(a.astype(np.float64), b.astype(np.float64)).shape
    np.testing.assert_array_equal(result.numpy(), expected)


@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    m=st.integers(1, 23),
    k=st.integers(0, 40),
    n=st.integers(1, 23),
    scalar=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_random_shapes(batch, m, k, n, scalar, seed):
    rng = np.random.default_rng(seed)
    a, b = ring_values(rng, (*batch, m, k)), ring_values(rng, (*batch, k, n))
    np.testing.assert_array_equal(_ring_matmul(a, b, force_scalar=scalar).numpy(), matmul_reference(a, b))


def test_matmul_public_wrapper_accepts_tensors_and_lists():
    a = tf.constant([[1, 2], [3, 4]], dtype=tf.uint64)
    np.testing.assert_array_equal(ops.ring_matmul(a, [[5], [6]]).numpy(), [[17], [39]])


def test_matmul_static_shape_in_graph_mode():
    @tf.function(
        input_signature=[tf.TensorSpec([None, 2, 5, 3], tf.uint64), tf.TensorSpec([3, 7], tf.uint64)]
    )
    def product(a, b):
        return ops.ring_matmul(a, b)

    assert product.get_concrete_function().structured_outputs.shape.as_list() == [None, 2, 5, 7]


@pytest.mark.parametrize(
    "a,b,error,message",
    [
        (
            np.ones((2, 3), np.int64),
            np.ones((3, 2), U64),
            TypeError,
            "argument `a` must have dtype uint64, got int64",
        ),
        (np.ones((2, 3), U64), np.ones((3, 2), np.float32), TypeError, "argument `b` must have dtype uint64"),
        (np.ones((3,), U64), np.ones((3, 2), U64), ValueError, "argument `a` must have rank >= 2"),
        (np.ones((2, 3), U64), np.ones((3,), U64), ValueError, "argument `b` must have rank >= 2"),
        (np.ones((2, 3), U64), np.ones((4, 2), U64), ValueError, "inner dimensions differ"),
        (np.ones((2, 2, 3), U64), np.ones((3, 3, 2), U64), ValueError, "cannot be broadcast"),
        ([[-1]], [[1]], ValueError, "outside the ring"),
    ],
)
def test_matmul_bad_inputs_raise_clear_errors(a, b, error, message):
    with pytest.raises(error, match="^ring_matmul: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        ops.ring_matmul(a, b)


# --------------------------------------------------------------------------------------------- conv2d

CONV_CASES = [
    # x shape, filter (h, w, out_c), strides, padding
    ((2, 7, 9, 3), (3, 2, 5), (1, 1), "SAME"),
    ((2, 7, 9, 3), (3, 2, 5), (2, 3), "SAME"),  # odd total padding: the extra row / column goes last
    ((2, 8, 8, 3), (4, 4, 2), (2, 2), "SAME"),
    ((2, 7, 9, 3), (3, 3, 5), (2, 2), "VALID"),
    ((1, 5, 5, 1), (5, 5, 1), (1, 1), "VALID"),  # window = image
    ((3, 6, 6, 20), (1, 1, 7), (1, 1), "SAME"),  # 1 x 1 filters
    ((1, 12, 11, 45), (3, 3, 9), (3, 2), "SAME"),  # k = 405 > one k block
    ((4, 28, 28, 1), (3, 3, 16), (1, 1), "SAME"),  # MNIST first layer
    ((1, 2, 2, 1), (3, 3, 1), (1, 1), "VALID"),  # window larger than the image: empty output, as TF
    ((1, 3, 3, 2), (2, 2, 3), (4, 4), "SAME"),  # stride larger than the window
]


@pytest.mark.parametrize("x_shape,f_shape,strides,padding", CONV_CASES)
def test_conv2d_matches_numpy(force_scalar, x_shape, f_shape, strides, padding):
    rng = np.random.default_rng(sum(x_shape) + sum(f_shape))
    x = ring_values(rng, x_shape)
    w = ring_values(rng, (f_shape[0], f_shape[1], x_shape[3], f_shape[2]))
    result = _ring_conv2d(x, w, strides, padding, force_scalar=force_scalar)
    assert result.dtype == tf.uint64
    np.testing.assert_array_equal(result.numpy(), conv2d_reference(x, w, strides, padding))


@pytest.mark.parametrize("x_shape,f_shape,strides,padding", CONV_CASES)
def test_conv2d_agrees_with_tf_nn_conv2d(x_shape, f_shape, strides, padding):
    # Small signed integers in float64 are exact, so tf.nn.conv2d fixes the shape and padding conventions.
    rng = np.random.default_rng(sum(x_shape) * 7 + sum(f_shape))
    x = rng.integers(-4, 5, size=x_shape)
    w = rng.integers(-4, 5, size=(f_shape[0], f_shape[1], x_shape[3], f_shape[2]))
    expected = tf.nn.conv2d(x.astype(np.float64), w.astype(np.float64), [1, *strides, 1], padding).numpy()
    result = ops.ring_conv2d(x.astype(U64), w.astype(U64), strides, padding).numpy().view(np.int64)
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result, expected.astype(np.int64))


@pytest.mark.parametrize("strides", [2, (2, 2), [2, 2], [1, 2, 2, 1], np.array([2, 2])])
def test_conv2d_stride_forms_are_equivalent(strides):
    rng = np.random.default_rng(5)
    x, w = ring_values(rng, (1, 6, 7, 2)), ring_values(rng, (3, 3, 2, 2))
    np.testing.assert_array_equal(
        ops.ring_conv2d(x, w, strides, "SAME").numpy(), conv2d_reference(x, w, (2, 2), "SAME")
    )


@given(
    batch=st.integers(1, 2),
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    channels=st.tuples(st.integers(1, 5), st.integers(1, 6)),
    window=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.sampled_from(["SAME", "VALID"]),
    scalar=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv2d_random_shapes(batch, size, channels, window, strides, padding, scalar, seed):
    if padding == "VALID" and (size[0] < window[0] or size[1] < window[1]):
        window = (min(window[0], size[0]), min(window[1], size[1]))
    rng = np.random.default_rng(seed)
    x = ring_values(rng, (batch, *size, channels[0]))
    w = ring_values(rng, (*window, *channels))
    np.testing.assert_array_equal(
        _ring_conv2d(x, w, strides, padding, force_scalar=scalar).numpy(),
        conv2d_reference(x, w, strides, padding),
    )


def test_conv2d_static_shape_in_graph_mode():
    @tf.function(
        input_signature=[tf.TensorSpec([None, 7, 8, 3], tf.uint64), tf.TensorSpec([3, 3, 3, 5], tf.uint64)]
    )
    def convolve(x, w):
        return ops.ring_conv2d(x, w, 2, "SAME")

    assert convolve.get_concrete_function().structured_outputs.shape.as_list() == [None, 4, 4, 5]


X = np.ones((1, 5, 5, 2), U64)
W = np.ones((3, 3, 2, 4), U64)


@pytest.mark.parametrize(
    "x,w,strides,padding,error,message",
    [
        (X.astype(np.int64), W, 1, "SAME", TypeError, "argument `x` must have dtype uint64, got int64"),
        (X, W.astype(np.int32), 1, "SAME", TypeError, "argument `filters` must have dtype uint64, got int32"),
        (X[0], W, 1, "SAME", ValueError, "argument `x` must have rank 4"),
        (X, W[0], 1, "SAME", ValueError, "argument `filters` must have rank 4"),
        (X, np.ones((3, 3, 3, 4), U64), 1, "SAME", ValueError, "argument `filters` has 3 input channels"),
        (X, W, 0, "SAME", ValueError, "argument `strides` must be positive"),
        (X, W, (1, -2), "SAME", ValueError, "argument `strides` must be positive"),
        (X, W, (1, 2, 3), "SAME", ValueError, "argument `strides` must be an int, a pair"),
        (X, W, [2, 1, 1, 1], "SAME", ValueError, r"argument `strides` of length 4 must be \[1, stride_h"),
        (X, W, 1.5, "SAME", TypeError, "argument `strides` must be an int, a pair"),
        (X, W, 1, "same", ValueError, "argument `padding` must be 'VALID' or 'SAME'"),
        (X, W, 1, "FULL", ValueError, "argument `padding` must be 'VALID' or 'SAME'"),
        (X, W, 1, None, TypeError, "argument `padding` must be a string"),
        (X, np.ones((7, 1, 2, 4), U64), 1, "VALID", ValueError, "output size would be negative"),
    ],
)
def test_conv2d_bad_inputs_raise_clear_errors(x, w, strides, padding, error, message):
    with pytest.raises(error, match="^ring_conv2d: .*" + message):
        ops.ring_conv2d(x, w, strides, padding)


# Every instruction-set path of the matmul must give the same words: each cap of TFPPML_ISA (see
# tfppml.ops._library) checks shapes on both sides of the AMX path's size threshold in a fresh process.
_ISA_PROBE = """
import sys
import numpy as np
from tfppml import ops
rng = np.random.default_rng(5)
shapes = [((1, 40), (40, 8)), ((64, 300), (300, 96)), ((3, 45, 130), (3, 130, 70)), ((32, 64), (64, 32)),
          ((37, 8200), (8200, 35))]
ok = []
for a_shape, b_shape in shapes:
    a = rng.integers(0, 2**64, size=a_shape, dtype=np.uint64)
    b = rng.integers(0, 2**64, size=b_shape, dtype=np.uint64)
    ok.append(bool((ops.ring_matmul(a, b).numpy() == np.matmul(a, b)).all()))
    if len(a_shape) == 2:
        ok.append(bool((ops.ring_matmul_numpy(a, b) == np.matmul(a, b)).all()))
print(all(ok), ok)
"""


@pytest.mark.parametrize("cap", ["scalar", "avx2", "avx512", "amx"])
def test_every_isa_path_matches_numpy(cap):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TFPPML_ISA": cap, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", _ISA_PROBE], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1].startswith("True"), run.stdout
