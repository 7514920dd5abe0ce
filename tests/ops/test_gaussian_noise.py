"""Gaussian noise kernels: distribution (moments, KS, chi-square, tail), NumPy reference, keys, arguments."""

import math

import numpy as np
import pytest
import tensorflow as tf
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from tfppml import ops

# Marsaglia & Tsang (2000), 256-layer normal Ziggurat: right edge R of the base strip, area V of every layer.
PUBLISHED_R, PUBLISHED_V = 3.6541528853610088, 0.00492867323399


# ------------------------------------------------------------------------------------------------------------
# An independent NumPy reference of the specification in cc/kernels/gaussian_noise_kernels.cc: keystream words
# from OpenSSL's ChaCha20 (via `cryptography`), the Ziggurat written from Marsaglia & Tsang's description.
# ------------------------------------------------------------------------------------------------------------
def keystream(key_words, nonce, first_block, count):
    """`count` little-endian uint64 keystream words from block counter `first_block` under a 64-bit nonce."""
    key = np.asarray(key_words, dtype="<u8").tobytes()
    iv = int(first_block).to_bytes(8, "little") + int(nonce).to_bytes(8, "little")
    data = Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor().update(bytes(8 * count))
    return [int(w) for w in np.frombuffer(data, dtype="<u8")]


def f(x):
    return math.exp(-0.5 * x * x)


def ziggurat_layers(r, layers=256):
    """(x, v) for base edge r, or None when the layers run out of height (r too small)."""
    v = r * f(r) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    x = [v / f(r), r]
    for _ in range(2, layers):
        arg = v / x[-1] + f(x[-1])
        if arg >= 1:
            return None
        x.append(math.sqrt(-2 * math.log(arg)))
    return x + [0.0], v


def reference_table():
    lo, hi = 2.0, 5.0
    for _ in range(200):  # bisection on r: the top layer's area must equal v
        mid = (lo + hi) / 2
        built = ziggurat_layers(mid)
        too_small = built is None or built[0][255] * (1 - f(built[0][255])) <= built[1]
        lo, hi = (mid, hi) if too_small else (lo, mid)
    return ziggurat_layers(lo)


TABLE, V = reference_table()


def unit(w):
    """[0, 1) from the top 52 bits."""
    return (w >> 12) / 2.0**52


def reference_normals(key_words, nonce, n, chunk=1024, paths=None):
    """The kernel's output for a 256-bit key; `paths` (a dict) counts the samples that took each slow path."""
    x = TABLE
    paths = {} if paths is None else paths
    out = []
    for c in range((n + chunk - 1) // chunk):
        m = min(chunk, n - c * chunk)
        words = keystream(key_words, nonce, c << 32, m)
        fallback = iter(keystream(key_words, nonce, (c << 32) + 2**31, 4096))
        for w in words:
            i, negative, u = w & 0xFF, bool(w & 0x100), unit(w)
            while True:
                if u < x[i + 1] / x[i]:
                    z = u * x[i]
                    break
                paths["wedge" if i else "tail"] = paths.get("wedge" if i else "tail", 0) + 1
                if i == 0:  # Marsaglia's tail method beyond R
                    while True:
                        t = -math.log(1 - unit(next(fallback))) / x[1]
                        s = -math.log(1 - unit(next(fallback)))
                        if 2 * s > t * t:
                            break
                    z = x[1] + t
                    break
                z = u * x[i]
                if f(x[i]) + unit(next(fallback)) * (f(x[i + 1]) - f(x[i])) < f(z):
                    break
                w2 = next(fallback)
                i, u = w2 & 0xFF, unit(w2)
            out.append(-z if negative else z)
    return np.array(out)


def test_reference_table_closes_at_published_constants():
    assert TABLE[1] == pytest.approx(PUBLISHED_R, rel=1e-12)
    assert V == pytest.approx(PUBLISHED_V, rel=1e-10)


@pytest.mark.parametrize("force_scalar", [False, True])
def test_matches_numpy_reference(force_scalar):
    key = [0x0123456789ABCDEF, 2, 3, 2**64 - 1]
    n = 20_500  # twenty full chunks and a partial one
    got = ops.gaussian_noise([n], 1.0, dtype=tf.float64, seed=np.array(key, np.uint64), nonce=77,
                             force_scalar=force_scalar).numpy()
    paths = {}
    np.testing.assert_allclose(got, reference_normals(key, 77, n, paths=paths), rtol=1e-13, atol=1e-15)
    assert paths["tail"] >= 1 and paths["wedge"] >= 20  # every path of the algorithm was compared


def test_int_seed_is_little_endian_words():
    seed = 5 + (7 << 64) + (11 << 192)
    a = ops.gaussian_noise([100], 1.0, seed=seed).numpy()
    b = ops.gaussian_noise([100], 1.0, seed=np.array([5, 7, 0, 11], np.uint64)).numpy()
    np.testing.assert_array_equal(a, b)


def test_vector_and_portable_paths_agree_on_large_outputs():
    for dtype in (tf.float32, tf.float64):
        a = ops.gaussian_noise([300_001], 1.7, dtype=dtype, seed=3, nonce=9).numpy()
        b = ops.gaussian_noise([300_001], 1.7, dtype=dtype, seed=3, nonce=9, force_scalar=True).numpy()
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------------------
# The distribution.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("seed", [None, 12345])
def test_moments(dtype, seed):
    n, sigma = 1_000_000, 2.5
    z = ops.gaussian_noise([n], sigma, dtype=dtype, seed=seed).numpy().astype(np.float64)
    assert z.dtype == np.float64 and z.shape == (n,)
    # Five standard errors of each estimator (a false alarm is a < 1e-6 event).
    assert abs(z.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(z.std() / sigma - 1) < 5 * math.sqrt(1 / (2 * n))
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)


@pytest.mark.parametrize("force_scalar", [False, True])
def test_kolmogorov_smirnov_and_chi_square(force_scalar):
    n, sigma = 2_000_000, 0.3
    z = ops.gaussian_noise([n], sigma, dtype=tf.float64, force_scalar=force_scalar).numpy()
    assert stats.kstest(z, "norm", args=(0, sigma)).pvalue > 1e-6
    # 400 equiprobable bins: the chi-square test sees errors in single Ziggurat layers that KS would blur.
    edges = stats.norm.ppf(np.linspace(0, 1, 401)[1:-1], scale=sigma)
    counts = np.bincount(np.searchsorted(edges, z), minlength=400)
    assert stats.chisquare(counts).pvalue > 1e-6


def test_tail_beyond_the_base_strip():
    """Samples beyond R come from the tail algorithm: their count and shape must be the normal's."""
    n = 4_000_000
    z = np.abs(ops.gaussian_noise([n], 1.0, dtype=tf.float64).numpy())
    tail = z[z > PUBLISHED_R]
    expected = n * 2 * stats.norm.sf(PUBLISHED_R)  # about 1030
    assert abs(len(tail) - expected) < 5 * math.sqrt(expected)
    truncated = stats.truncnorm(PUBLISHED_R, np.inf)
    assert stats.kstest(tail, truncated.cdf).pvalue > 1e-6
    assert z.max() < 7.5  # P(|z| > 7.5) ~ 6e-14 per sample


def test_add_noise_is_x_plus_the_same_noise():
    x = np.linspace(-3, 3, 5000)
    noise = ops.gaussian_noise([5000], 0.7, dtype=tf.float64, seed=42, nonce=3).numpy()
    noisy = ops.add_gaussian_noise(x, 0.7, seed=42, nonce=3).numpy()
    np.testing.assert_array_equal(noisy, x + noise)
    x32 = tf.zeros([3, 5], tf.float32)
    np.testing.assert_array_equal(ops.add_gaussian_noise(x32, 2.0, seed=1).numpy(),
                                  ops.gaussian_noise([3, 5], 2.0, seed=1).numpy())


def test_add_noise_std_and_independence_of_nonces():
    x = tf.fill([200_000], 5.0)
    a = ops.add_gaussian_noise(x, 1.5, seed=8, nonce=0).numpy() - 5.0
    b = ops.add_gaussian_noise(x, 1.5, seed=8, nonce=1).numpy() - 5.0
    assert abs(a.std() / 1.5 - 1) < 5 * math.sqrt(1 / 400_000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(200_000)


def test_zero_stddev_and_empty_shapes():
    assert np.all(ops.gaussian_noise([4, 3], 0.0).numpy() == 0)
    x = tf.constant([1.0, 2.0])
    np.testing.assert_array_equal(ops.add_gaussian_noise(x, 0.0).numpy(), [1.0, 2.0])
    assert ops.gaussian_noise([0, 7], 1.0).shape == (0, 7)
    assert ops.gaussian_noise([], 1.0).shape == ()
    assert ops.gaussian_noise(tf.constant([2, 3], tf.int32), 1.0, dtype="float64").dtype == tf.float64


# ------------------------------------------------------------------------------------------------------------
# Keys: explicit seeds are reproducible, OS keys are fresh at every execution (also inside tf.function).
# ------------------------------------------------------------------------------------------------------------
def test_explicit_seed_is_deterministic():
    a = ops.gaussian_noise([64, 33], 1.0, seed=2024, nonce=5).numpy()
    b = ops.gaussian_noise([64, 33], 1.0, seed=2024, nonce=5).numpy()
    np.testing.assert_array_equal(a, b)


def test_different_seeds_and_nonces_differ():
    a = ops.gaussian_noise([1000], 1.0, seed=1).numpy()
    assert np.mean(a == ops.gaussian_noise([1000], 1.0, seed=2).numpy()) == 0
    assert np.mean(a == ops.gaussian_noise([1000], 1.0, seed=1, nonce=1).numpy()) == 0
    assert np.mean(a == ops.gaussian_noise([1000], 1.0, seed=1 << 255).numpy()) == 0


def test_os_keyed_noise_is_fresh_every_call():
    assert np.mean(ops.gaussian_noise([1000], 1.0).numpy() == ops.gaussian_noise([1000], 1.0).numpy()) == 0


def test_os_keyed_noise_is_not_folded_or_merged_in_graphs():
    x = tf.zeros([500])

    @tf.function
    def draw():
        return ops.gaussian_noise([500], 1.0), ops.gaussian_noise([500], 1.0), ops.add_gaussian_noise(x, 1.0)

    first, second = draw(), draw()
    values = [t.numpy() for t in first + second]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert np.mean(values[i] == values[j]) == 0, (i, j)


def test_tensor_arguments_in_tf_function():
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([], tf.int64)])
    def noisy(x, nonce):
        return ops.add_gaussian_noise(x, tf.constant(0.5), seed=9, nonce=nonce)

    a = noisy(tf.zeros([4, 3]), tf.constant(1, tf.int64)).numpy()
    np.testing.assert_array_equal(a, ops.gaussian_noise([4, 3], 0.5, seed=9, nonce=1).numpy())


def test_gradient_of_add_noise_is_identity():
    x = tf.Variable([1.0, 2.0, 3.0])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(ops.add_gaussian_noise(x, 1.0) * [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------------------------------------
# Bad arguments.
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(shape=[3], stddev=-1.0), ValueError, "stddev"),
        (dict(shape=[3], stddev=float("nan")), ValueError, "stddev"),
        (dict(shape=[3], stddev=float("inf")), ValueError, "stddev"),
        (dict(shape=[3], stddev="1"), TypeError, "stddev"),
        (dict(shape=[3], stddev=tf.constant([1.0, 2.0])), ValueError, "stddev"),
        (dict(shape=[3], stddev=tf.constant(1)), TypeError, "stddev"),
        (dict(shape=[3, -1], stddev=1.0), ValueError, "shape"),
        (dict(shape=[3.5], stddev=1.0), TypeError, "shape"),
        (dict(shape=3, stddev=1.0), TypeError, "shape"),
        (dict(shape=tf.constant([1.0]), stddev=1.0), TypeError, "shape"),
        (dict(shape=tf.constant([2, -2]), stddev=1.0), ValueError, "shape"),
        (dict(shape=[3], stddev=1.0, dtype=tf.int32), TypeError, "dtype"),
        (dict(shape=[3], stddev=1.0, dtype=tf.float16), TypeError, "dtype"),
        (dict(shape=[3], stddev=1.0, seed=-1), ValueError, "seed"),
        (dict(shape=[3], stddev=1.0, seed=2**256), ValueError, "seed"),
        (dict(shape=[3], stddev=1.0, seed=1.5), TypeError, "seed"),
        (dict(shape=[3], stddev=1.0, seed=np.zeros(3, np.uint64)), ValueError, "seed"),
        (dict(shape=[3], stddev=1.0, seed=np.zeros(4, np.int64)), TypeError, "seed"),
        (dict(shape=[3], stddev=1.0, seed=1, nonce=-1), ValueError, "nonce"),
        (dict(shape=[3], stddev=1.0, seed=1, nonce=2**63), ValueError, "nonce"),
        (dict(shape=[3], stddev=1.0, nonce=1.0), TypeError, "nonce"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.gaussian_noise(**kwargs)


@pytest.mark.parametrize(
    "x, kwargs, error, match",
    [
        (tf.constant([1, 2]), dict(stddev=1.0), TypeError, "`x`"),
        (np.zeros(3, np.float16), dict(stddev=1.0), TypeError, "`x`"),
        ("abc", dict(stddev=1.0), TypeError, "`x`"),
        (tf.zeros([3]), dict(stddev=-0.5), ValueError, "stddev"),
        (tf.zeros([3]), dict(stddev=1.0, seed=[1, 2, 3, 4]), TypeError, "seed"),
    ],
)
def test_add_noise_bad_arguments(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.add_gaussian_noise(x, **kwargs)


def test_kernel_checks_values_known_only_at_run_time():
    @tf.function(input_signature=[tf.TensorSpec([], tf.float64)])
    def noise(stddev):
        return ops.gaussian_noise([3], stddev)

    with pytest.raises(tf.errors.InvalidArgumentError, match="stddev must be finite and >= 0"):
        noise(tf.constant(-1.0, tf.float64))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.uint64)])
    def seeded(seed):
        return ops.gaussian_noise([3], 1.0, seed=seed)

    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must be an empty vector"):
        seeded(tf.constant([1, 2], tf.uint64))
