"""Smoke test of the Bazel-built op library (run by `bazel test //:bazel_smoke_test`, see //:BUILD).

It loads the library that Bazel built with tf.load_op_library, directly and not through the tfppml package
(which loads setup.py's build of the same ops), and checks a few ops against NumPy.  The file name does not
match pytest's test patterns on purpose: the main suite has no Bazel-built library to load.

Usage: bazel_smoke.py PATH_TO_LIBRARY [unittest arguments]
"""

from __future__ import annotations

import os
import sys
import unittest

# TensorFlow's start-up chatter (CUDA stubs) would bury the test output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MASK64 = (1 << 64) - 1
LIBRARY_PATH = ""
ops = None  # the loaded op module


def u64(values) -> np.ndarray:
    """uint64 array from Python ints taken modulo 2**64 (so negative ints are two's complement)."""
    return np.array([v & MASK64 for v in values], dtype=np.uint64)


class BazelOpLibraryTest(unittest.TestCase):
    def test_library_is_the_bazel_build(self):
        self.assertTrue(os.path.isfile(LIBRARY_PATH), LIBRARY_PATH)
        self.assertNotIn("site-packages", os.path.realpath(LIBRARY_PATH))
        for name in ("tfppml_ring_add", "tfppml_ring_sub", "tfppml_ring_mul", "tfppml_ring_neg"):
            self.assertTrue(hasattr(ops, name), f"{name} missing from {LIBRARY_PATH}")

    def test_ring_add_wraps_mod_2_64(self):
        x = u64([MASK64, 1 << 63, 5, 0, MASK64 - 1])
        y = u64([1, 1 << 63, 7, MASK64, 3])
        got = ops.tfppml_ring_add(x=x, y=y).numpy()
        self.assertEqual(got.dtype, np.uint64)
        np.testing.assert_array_equal(got, u64([0, 0, 12, MASK64, 1]))
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(got, x + y)

    def test_ring_add_broadcasts(self):
        rng = np.random.default_rng(0)
        x = rng.integers(0, MASK64, size=(3, 4), dtype=np.uint64, endpoint=True)
        y = rng.integers(0, MASK64, size=(4,), dtype=np.uint64, endpoint=True)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(ops.tfppml_ring_add(x=x, y=y).numpy(), x + y)

    def test_ring_sub_mul_neg_against_numpy(self):
        rng = np.random.default_rng(1)
        x = rng.integers(0, MASK64, size=(257,), dtype=np.uint64, endpoint=True)
        y = rng.integers(0, MASK64, size=(257,), dtype=np.uint64, endpoint=True)
        x[:3] = u64([0, MASK64, 1 << 63])
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(ops.tfppml_ring_sub(x=x, y=y).numpy(), x - y)
            np.testing.assert_array_equal(ops.tfppml_ring_mul(x=x, y=y).numpy(), x * y)
            np.testing.assert_array_equal(ops.tfppml_ring_neg(x=x).numpy(), np.uint64(0) - x)

    def test_ring_matmul_is_exact_mod_2_64(self):
        rng = np.random.default_rng(2)
        a = rng.integers(0, MASK64, size=(37, 70), dtype=np.uint64, endpoint=True)
        b = rng.integers(0, MASK64, size=(70, 29), dtype=np.uint64, endpoint=True)
        want = ((a.astype(object) @ b.astype(object)) % (1 << 64)).astype(np.uint64)
        np.testing.assert_array_equal(ops.tfppml_ring_mat_mul(a=a, b=b).numpy(), want)

    def test_fixed_point_round_trip_of_negative_values(self):
        x = np.array([-1.5, -0.25, 0.0, 3.75], dtype=np.float64)
        encoded = ops.tfppml_fixed_point_encode(x=x, frac_bits=16).numpy()
        np.testing.assert_array_equal(encoded, u64([-(3 << 15), -(1 << 14), 0, 15 << 14]))
        decoded = ops.tfppml_fixed_point_decode(x=encoded, frac_bits=16, out_type=tf.float64).numpy()
        np.testing.assert_array_equal(decoded, x)

    def test_prg_is_deterministic_per_seed(self):
        seed = u64([1, 2])
        first = ops.tfppml_prg_uniform(seed=seed, shape=np.array([4, 8], np.int64), offset=np.int64(0))
        again = ops.tfppml_prg_uniform(seed=seed, shape=np.array([4, 8], np.int64), offset=np.int64(0))
        other = ops.tfppml_prg_uniform(seed=u64([1, 3]), shape=np.array([4, 8], np.int64), offset=np.int64(0))
        self.assertEqual(first.dtype, tf.uint64)
        self.assertEqual(first.shape, (4, 8))
        np.testing.assert_array_equal(first.numpy(), again.numpy())
        self.assertFalse(np.array_equal(first.numpy(), other.numpy()))

    def test_bad_input_is_an_invalid_argument_error(self):
        with self.assertRaises(tf.errors.InvalidArgumentError):
            ops.tfppml_prg_uniform(seed=u64([1, 2, 3]), shape=np.array([2], np.int64), offset=np.int64(0))


def main(argv: list[str]) -> None:
    global LIBRARY_PATH, ops
    if len(argv) < 2:
        sys.exit(f"usage: {argv[0]} PATH_TO_LIBRARY [unittest arguments]")
    LIBRARY_PATH = os.path.abspath(argv[1])
    print(f"tf {tf.__version__} ({tf.__file__}), python {sys.executable}, library {LIBRARY_PATH}", flush=True)
    ops = tf.load_op_library(LIBRARY_PATH)
    unittest.main(argv=[argv[0]] + argv[2:], verbosity=2)


if __name__ == "__main__":
    main(sys.argv)
