"""Tampered and truncated serialized data gives a clear error, never a crash (bounded-time fuzzing)."""

import os
import time

import numpy as np
import pytest

from tfppml import he

FUZZ_SECONDS = float(os.environ.get("TFPPML_HE_FUZZ_SECONDS", "8"))


def mutations(data: bytes, rng: np.random.Generator):
    """Truncations, bit flips, byte overwrites and splices, biased towards the headers."""
    n = len(data)
    while True:
        kind = rng.integers(5)
        if kind == 0:
            yield data[: rng.integers(n)]
        elif kind == 1:
            b = bytearray(data)
            pos = int(rng.integers(min(n, 400))) if rng.random() < 0.7 else int(rng.integers(n))
            b[pos] ^= 1 << int(rng.integers(8))
            yield bytes(b)
        elif kind == 2:
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(n))] = int(rng.integers(256))
            yield bytes(b)
        elif kind == 3:
            cut = int(rng.integers(n))
            yield data[:cut] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8))
        else:
            yield bytes(rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8))


def fuzz(parse, data: bytes, seconds: float, seed: int) -> tuple[int, int]:
    rng = np.random.default_rng(seed)
    tried = accepted = 0
    deadline = time.monotonic() + seconds
    for mutated in mutations(data, rng):
        if time.monotonic() > deadline:
            break
        tried += 1
        try:
            parse(mutated)
            accepted += 1  # a flip in a coefficient can still be a valid (different) ciphertext
        except (ValueError, he.HEError) as err:
            assert str(err)
    return tried, accepted


def test_truncated_cipher_data_is_a_clear_error(ctx):
    data = ctx.encrypt(np.ones((2, 3))).serialize()
    for cut in (0, 7, 12, 30, 60, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError, match="tfppml.he: (serialized|the data)"):
            ctx.deserialize_cipher(data[:cut])
    with pytest.raises(ValueError, match="trailing"):
        ctx.deserialize_cipher(data + b"x")


def test_a_context_is_not_a_ciphertext(ctx):
    with pytest.raises(ValueError, match="expected a serialized ciphertext tensor but the data holds a context"):
        ctx.deserialize_cipher(ctx.public_context().serialize())


def test_fuzz_cipher_deserializer(ctx):
    data = ctx.encrypt(np.arange(6.0).reshape(2, 3)).serialize()
    tried, _ = fuzz(ctx.deserialize_cipher, data, FUZZ_SECONDS, seed=1)
    assert tried > 20


def test_fuzz_context_deserializer():
    small = he.CKKSContext(4096, [40, 20, 40], 2.0**20, galois_steps=[1])
    data = small.public_context().serialize()
    tried, _ = fuzz(he.CKKSContext.deserialize, data, FUZZ_SECONDS, seed=2)
    assert tried > 5


@pytest.mark.slow
def test_fuzz_long(ctx):
    data = ctx.encrypt(np.arange(6.0)).serialize()
    fuzz(ctx.deserialize_cipher, data, 120, seed=3)
