"""The ChaCha20 PRG: known-answer against an independent ChaCha20, determinism, offsets, uniformity."""

import numpy as np
import pytest
import tensorflow as tf
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from tfppml import ops
from tfppml.ops.prg import new_seed


def reference_words(seed: np.ndarray, count: int, offset: int = 0) -> np.ndarray:
    """ChaCha20 keystream words from the `cryptography` package (OpenSSL), 256-bit keys only.

    OpenSSL's 16-byte "nonce" is words 12-15 of the state; with our 64-bit counter starting at block
    offset // 8 and nonce 0, the two layouts agree while the counter stays below 2**32.
    """
    first_block, skip = divmod(offset, 8)
    nonce = int(first_block).to_bytes(8, "little") + bytes(8)
    cipher = Cipher(algorithms.ChaCha20(seed.astype("<u8").tobytes(), nonce), mode=None)
    stream = cipher.encryptor().update(bytes(8 * (skip + count)))
    return np.frombuffer(stream, dtype="<u8")[skip:].astype(np.uint64)


def test_known_answer_rfc8439_zero_key():
    # RFC 8439 appendix A.1, test vector 1: all-zero key and nonce, block counter 0.
    words = ops.prg_uniform(np.zeros(4, np.uint64), [2]).numpy()
    assert words.astype("<u8").tobytes().hex() == "76b8e0ada0f13d90405d6ae55386bd28"


@given(seed_words=st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4),
       count=st.integers(0, 300), offset=st.integers(0, 10_000))
def test_matches_independent_chacha20(seed_words, count, offset):
    seed = np.array(seed_words, np.uint64)
    np.testing.assert_array_equal(ops.prg_uniform(seed, [count], offset=offset).numpy(),
                                  reference_words(seed, count, offset))


def test_large_output_matches_reference_across_threads():
    seed = new_seed()
    np.testing.assert_array_equal(ops.prg_uniform(seed, [1000, 1000], offset=13).numpy().reshape(-1),
                                  reference_words(seed, 1_000_000, 13))


@pytest.mark.parametrize("bits", [128, 256])
def test_deterministic_and_offset_consistent(bits):
    seed = new_seed(bits)
    a = ops.prg_uniform(seed, [7, 11]).numpy().reshape(-1)
    b = ops.prg_uniform(seed, [7, 11]).numpy().reshape(-1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ops.prg_uniform(seed, [30], offset=40).numpy(), a[40:70])


@pytest.mark.parametrize("bits", [128, 256])
def test_different_seeds_and_offsets_differ(bits):
    seed = new_seed(bits)
    other = seed.copy()
    other[0] ^= np.uint64(1)  # one bit of key
    a = ops.prg_uniform(seed, [1000]).numpy()
    assert np.mean(a == ops.prg_uniform(other, [1000]).numpy()) == 0
    assert np.mean(a == ops.prg_uniform(seed, [1000], offset=1000).numpy()) == 0


def test_128_bit_key_differs_from_zero_padded_256_bit_key():
    seed = new_seed(128)
    padded = np.concatenate([seed, np.zeros(2, np.uint64)])
    assert not np.array_equal(ops.prg_uniform(seed, [64]).numpy(), ops.prg_uniform(padded, [64]).numpy())


@pytest.mark.parametrize("bits", [128, 256])
def test_output_bits_are_uniform(bits):
    words = ops.prg_uniform(new_seed(bits), [200_000]).numpy()
    # Each of the 64 bit positions is a fair coin: a two-sided binomial test at a strict level, Bonferroni.
    bit_counts = np.array([np.count_nonzero((words >> np.uint64(b)) & np.uint64(1)) for b in range(64)])
    p_bits = [stats.binomtest(int(c), len(words), 0.5).pvalue for c in bit_counts]
    assert min(p_bits) > 1e-4 / 64
    # Byte values are uniform over 256 (chi-square), and consecutive words are uncorrelated.
    byte_counts = np.bincount(words.view(np.uint8), minlength=256)
    assert stats.chisquare(byte_counts).pvalue > 1e-4
    top = (words >> np.uint64(40)).astype(np.float64)
    assert abs(np.corrcoef(top[:-1], top[1:])[0, 1]) < 0.02


def test_shape_and_offset_as_tensors_in_tf_function():
    seed = new_seed()

    @tf.function
    def draw(offset):
        return ops.prg_uniform(seed, tf.constant([3, 4], tf.int64), offset=offset)

    out = draw(tf.constant(8, tf.int64))
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out.numpy().reshape(-1), ops.prg_uniform(seed, [20]).numpy()[8:])


def test_empty_shape():
    assert ops.prg_uniform(new_seed(), [0, 5]).shape == (0, 5)


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: ops.prg_uniform(np.ones(3, np.uint64), [2]), ValueError, ["prg_uniform", "`seed`", "2 or 4"]),
        (lambda: ops.prg_uniform(np.ones(4, np.int64), [2]), TypeError, ["`seed`", "uint64"]),
        (lambda: ops.prg_uniform(new_seed(), [2, -1]), ValueError, ["`shape`", "negative"]),
        (lambda: ops.prg_uniform(new_seed(), [2.5]), TypeError, ["`shape`"]),
        (lambda: ops.prg_uniform(new_seed(), [2], offset=-1), ValueError, ["`offset`"]),
        (lambda: ops.prg_uniform(new_seed(), [2], offset=2**63), ValueError, ["`offset`"]),
        (lambda: ops.prg_uniform(new_seed(), [4], offset=2**63 - 2), ValueError, ["offset", "overflow"]),
        (lambda: new_seed(64), ValueError, ["`bits`"]),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


# --- prg_uniform_numpy: the same keystream without a TF op dispatch (the MPC runtime's small masks) ---------


@given(seed_words=st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4),
       count=st.integers(0, 300), offset=st.integers(0, 10_000))
def test_numpy_variant_matches_independent_chacha20(seed_words, count, offset):
    seed = np.array(seed_words, np.uint64)
    np.testing.assert_array_equal(ops.prg_uniform_numpy(seed, [count], offset=offset),
                                  reference_words(seed, count, offset))


@pytest.mark.parametrize("bits", [128, 256])
@pytest.mark.parametrize("shape,offset", [([3, 5], 0), ([1], 7), ([64], 63), ([2, 2, 100], 1001), ([0, 4], 5), ([], 2)])
def test_numpy_variant_equals_the_tf_kernel(bits, shape, offset):
    seed = new_seed(bits)
    ours = ops.prg_uniform_numpy(seed, shape, offset=offset)
    assert ours.shape == tuple(shape) and ours.dtype == np.uint64
    np.testing.assert_array_equal(ours, ops.prg_uniform(seed, shape, offset=offset).numpy())


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: ops.prg_uniform_numpy(np.ones(3, np.uint64), [2]), ValueError, ["prg_uniform_numpy", "`seed`"]),
        (lambda: ops.prg_uniform_numpy(np.ones(4, np.int64), [2]), TypeError, ["`seed`", "uint64"]),
        (lambda: ops.prg_uniform_numpy([1, 2, 3, 4], [2]), TypeError, ["`seed`"]),
        (lambda: ops.prg_uniform_numpy(new_seed(), [2, -1]), ValueError, ["`shape`", "negative"]),
        (lambda: ops.prg_uniform_numpy(new_seed(), [2.5]), TypeError, ["`shape`"]),
        (lambda: ops.prg_uniform_numpy(new_seed(), [2], offset=-1), ValueError, ["`offset`"]),
        (lambda: ops.prg_uniform_numpy(new_seed(), [4], offset=2**63 - 2), ValueError, ["`offset`"]),
        (lambda: ops.prg_uniform_numpy(new_seed(), [2], offset=1.0), TypeError, ["`offset`"]),
    ],
)
def test_numpy_variant_bad_arguments(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


# Every vector-width path of the ChaCha20 core must give the same words: each cap of TFPPML_ISA (see
# tfppml.ops._library) runs the kernel and the NumPy variant in a fresh process, on sizes and offsets that
# cover single groups of 8 blocks, pairs (ChaCha20Blocks16) and ragged ends.
_ISA_PROBE = """
import json, sys
import numpy as np
from tfppml import ops
seed = np.array([0x0123456789ABCDEF, 0xFEDCBA9876543210, 7, 2**63 + 5], dtype=np.uint64)
out = {}
for count, offset in [(1, 0), (64, 0), (65, 3), (128, 64), (1000, 13), (300_001, 77)]:
    out[f"{count}@{offset}"] = [
        ops.prg_uniform(seed, [count], offset=offset).numpy().tolist()[:2000],
        ops.prg_uniform_numpy(seed, [count], offset=offset).tolist()[:2000],
        int(np.bitwise_xor.reduce(ops.prg_uniform(seed, [count], offset=offset).numpy())),
    ]
print(json.dumps(out))
"""


@pytest.mark.parametrize("cap", ["scalar", "avx2", "avx512"])
def test_every_isa_path_gives_the_reference_keystream(cap):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "TFPPML_ISA": cap, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", _ISA_PROBE], env=env, capture_output=True, text=True, check=True)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    seed = np.array([0x0123456789ABCDEF, 0xFEDCBA9876543210, 7, 2**63 + 5], dtype=np.uint64)
    for key, (kernel, numpy_variant, xor_all) in got.items():
        count, offset = map(int, key.split("@"))
        want = reference_words(seed, count, offset)
        assert kernel == want[:2000].tolist(), key
        assert numpy_variant == want[:2000].tolist(), key
        assert xor_all == int(np.bitwise_xor.reduce(want)), key


def test_bad_isa_cap_is_refused_at_import():
    import os
    import subprocess
    import sys

    env = {**os.environ, "TFPPML_ISA": "avx9000", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", "import tfppml.ops"], env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "TFPPML_ISA must be one of scalar, avx2, avx512, amx" in run.stderr
