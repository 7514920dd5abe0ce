"""DCF keys (tfppml.ops.dcf): the two parties' shares add up to the comparison, every domain size and code
path gives the same keys, one key alone does not show the threshold, and bad arguments are refused."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfppml.ops import dcf

RNG = np.random.default_rng(20261206)


def _keys(alpha, bits=64, rng=RNG):
    n = len(alpha)
    beta = rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    seeds = [rng.integers(0, 2**64, (n, 2), dtype=np.uint64) for _ in range(2)]
    cw = dcf.dcf_gen_numpy(np.asarray(alpha, dtype=np.uint64), beta, *seeds, bits=bits)
    return beta, seeds, cw


def _combined(seeds, cw, x, bits=64):
    return dcf.dcf_eval_numpy(0, seeds[0], cw, x, bits) + dcf.dcf_eval_numpy(1, seeds[1], cw, x, bits)


def _expected(alpha, beta, x):
    less = np.asarray(x, dtype=np.uint64) < np.asarray(alpha, dtype=np.uint64)[:, None]
    return np.where(less[..., None], beta[:, None, :], np.uint64(0))


# FIPS-197 appendix C.1 and SP 800-38A F.1.1 (AES-128 ECB).
@pytest.mark.parametrize(
    "key, plain, cipher",
    [
        ("000102030405060708090a0b0c0d0e0f", "00112233445566778899aabbccddeeff", "69c4e0d86a7b0430d8cdb78070b4c55a"),
        ("2b7e151628aed2a6abf7158809cf4f3c", "6bc1bee22e409f96e93d7e117393172a", "3ad77bb40d7a3660a89ecaf32466ef97"),
    ],
)
def test_aes_known_answers(key, plain, cipher):
    blocks = np.frombuffer(bytes.fromhex(plain) * 20, dtype="<u8").astype(np.uint64).reshape(20, 2)
    out = dcf.aes128_encrypt_numpy(bytes.fromhex(key), blocks)
    assert out.astype("<u8").tobytes() == bytes.fromhex(cipher) * 20


@pytest.mark.parametrize("bits", [1, 2, 5, 7])
def test_every_threshold_and_point_of_small_domains(bits):
    size = 1 << bits
    alpha = np.arange(size, dtype=np.uint64)
    beta, seeds, cw = _keys(alpha, bits)
    x = np.tile(np.arange(size, dtype=np.uint64), (size, 1))
    assert np.array_equal(_combined(seeds, cw, x, bits), _expected(alpha, beta, x))


def test_64_bit_thresholds_at_and_around_the_point():
    n = 3000
    alpha = RNG.integers(0, 2**64, n, dtype=np.uint64)
    alpha[:4] = [0, 1, 2**63, 2**64 - 1]
    beta, seeds, cw = _keys(alpha)
    one = np.uint64(1)
    with np.errstate(over="ignore"):
        random = RNG.integers(0, 2**64, n, dtype=np.uint64)
        x = np.stack([alpha, alpha - one, alpha + one, alpha ^ np.uint64(1 << 40), random], 1)
    x[:, 4][:4] = [2**64 - 1, 0, 2**63 - 1, 2**64 - 2]
    assert np.array_equal(_combined(seeds, cw, x), _expected(alpha, beta, x))


def test_tf_ops_equal_the_numpy_entries():
    alpha = RNG.integers(0, 2**64, 257, dtype=np.uint64)
    beta, seeds, cw = _keys(alpha)
    assert np.array_equal(dcf.dcf_gen(alpha, beta, *seeds).numpy(), cw)
    x = np.stack([alpha, RNG.integers(0, 2**64, 257, dtype=np.uint64)], 1)
    for party in (0, 1):
        kernel = dcf.dcf_eval(party, seeds[party], cw, x).numpy()
        assert np.array_equal(kernel, dcf.dcf_eval_numpy(party, seeds[party], cw, x))


def test_tf_ops_refuse_wrong_ranks_in_graphs():
    # The shape functions check ranks before reading dimensions (a scalar once read past the shape's end).
    pairs = np.zeros((1, 2), np.uint64)
    gen = tf.function(lambda alpha: dcf.dcf_gen(alpha, pairs, pairs, pairs))
    evaluate = tf.function(lambda x: dcf.dcf_eval(0, pairs, np.zeros((1, 260), np.uint64), x))
    for call, arg in ((gen, np.uint64(5)), (evaluate, np.uint64(0)), (evaluate, np.zeros(3, np.uint64))):
        with pytest.raises(ValueError, match="rank"):
            call(arg)


def test_empty_batch():
    empty = np.zeros((0, 2), dtype=np.uint64)
    cw = dcf.dcf_gen_numpy(np.zeros(0, dtype=np.uint64), empty, empty, empty)
    assert cw.shape == (0, dcf.dcf_key_words())
    assert dcf.dcf_eval_numpy(0, empty, cw, np.zeros((0, 1), dtype=np.uint64)).shape == (0, 1, 2)


def test_one_key_does_not_show_the_threshold():
    # What a party holds -- the correction words and its own shares -- must not depend on alpha: here the bits of
    # the correction words and of party 0's shares agree with alpha's top bit half the time, for keys whose
    # output at the point is beta (alpha above it) or 0 (alpha below).  A construction that let one share carry
    # the comparison (say, party 1's share always 0) or corrections that encode alpha's bits fails this.
    n = 4000
    x = np.full((n, 1), 2**63, dtype=np.uint64)
    alpha = RNG.integers(0, 2**64, n, dtype=np.uint64)
    beta = np.tile(np.array([[1, 1]], dtype=np.uint64), (n, 1))
    seeds = [RNG.integers(0, 2**64, (n, 2), dtype=np.uint64) for _ in range(2)]
    cw = dcf.dcf_gen_numpy(alpha, beta, *seeds)
    share = dcf.dcf_eval_numpy(0, seeds[0], cw, x)[:, 0, 0]
    secret = (alpha >> np.uint64(63)).astype(bool)
    other = dcf.dcf_eval_numpy(1, seeds[1], cw, x)[:, 0, 0]
    assert np.array_equal(share + other, (x[:, 0] < alpha).astype(np.uint64))
    columns = {"share bit 0": share & np.uint64(1), "share bit 63": share >> np.uint64(63)}
    for word, name in [(0, "seed cw"), (2, "payload cw"), (256, "left t cw"), (257, "right t cw"), (258, "final cw")]:
        columns[name] = cw[:, word] & np.uint64(1)
    bound = 5 * 0.5 / np.sqrt(n)
    for name, bit in columns.items():
        agreement = float(np.mean(bit.astype(bool) == secret))
        assert abs(agreement - 0.5) < bound, (name, agreement)


# The AES-NI and the portable AES give the same keys and shares (a process per TFPPML_ISA cap).
_PROBE = """
import hashlib, json
import numpy as np
from tfppml.ops import dcf
rng = np.random.default_rng(7)
n = 301
alpha = rng.integers(0, 2**64, n, dtype=np.uint64)
beta = rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
s0, s1 = (rng.integers(0, 2**64, (n, 2), dtype=np.uint64) for _ in range(2))
x = np.stack([alpha, rng.integers(0, 2**64, n, dtype=np.uint64)], 1)
cw = dcf.dcf_gen_numpy(alpha, beta, s0, s1)
parts = [cw, dcf.dcf_eval_numpy(0, s0, cw, x), dcf.dcf_eval(1, s1, cw, x).numpy()]
print(json.dumps([dcf.dcf_uses_aes_ni()] + [hashlib.sha256(p.tobytes()).hexdigest() for p in parts]))
"""


def test_aes_ni_and_portable_paths_agree():
    results = {}
    for cap in ("scalar", "avx2"):
        env = {**os.environ, "TFPPML_ISA": cap, "TF_CPP_MIN_LOG_LEVEL": "3"}
        run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
        results[cap] = json.loads(run.stdout.strip().splitlines()[-1])
    assert results["scalar"][0] is False
    assert results["scalar"][1:] == results["avx2"][1:]


def _zeros(*shape, dtype=np.uint64):
    return np.zeros(shape, dtype)


def _gen(alpha, beta=None, bits=64, fn=dcf.dcf_gen_numpy):
    n = len(alpha)
    return fn(alpha, _zeros(n, 2) if beta is None else beta, _zeros(n, 2), _zeros(n, 2), bits=bits)


def _eval(x, cw_words=260, party=0, bits=64, fn=dcf.dcf_eval_numpy):
    return fn(party, _zeros(1, 2), _zeros(1, cw_words), x, bits=bits)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: _gen(_zeros(2), bits=0), ValueError, "`bits`"),
        (lambda: _gen(np.array([16], np.uint64), bits=4), ValueError, "`alpha` holds 16"),
        (lambda: _gen(_zeros(2, dtype=np.int64)), TypeError, "`alpha`"),
        (lambda: _gen(_zeros(2), beta=_zeros(3, 2)), ValueError, "`beta` must have shape (2, 2)"),
        (lambda: _eval(_zeros(1, 1), party=2), ValueError, "`party`"),
        (lambda: _eval(_zeros(1, 1), cw_words=259), ValueError, "`cw` must have shape (1, 260)"),
        (lambda: _eval(np.full((1, 1), 17, np.uint64), cw_words=20, bits=4), ValueError, "`x` holds 17"),
        (lambda: _eval(_zeros(1)), ValueError, "`x` must have shape"),
        (lambda: _eval(_zeros(1, 1), cw_words=259, fn=dcf.dcf_eval), ValueError, "`cw` must have shape [1, 260]"),
        (lambda: _gen(np.array([16], np.uint64), bits=4, fn=dcf.dcf_gen), ValueError, "`alpha` has values of more than 4 bits"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)
