"""Parameters, security refusal, depth exhaustion, key separation, context mixes, serialization."""

import numpy as np
import pytest

from tfppml import he


def test_defaults_and_properties(ctx):
    assert ctx.poly_modulus_degree == 8192 and ctx.slot_count == 4096 and ctx.depth == 2
    assert ctx.coeff_mod_bit_sizes == [60, 40, 40, 60] and ctx.global_scale == 2.0**40
    assert ctx.has_secret_key


@pytest.mark.parametrize(
    "degree,bits",
    [(8192, [60, 60, 60, 60]), (4096, [60, 40, 40, 60]), (1024, [30, 30])],
)
def test_parameters_below_128_bit_security_are_refused(degree, bits):
    with pytest.raises(ValueError, match="below 128-bit security"):
        he.CKKSContext(degree, bits, 2.0 ** bits[1] if len(bits) > 2 else 2.0**20)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(poly_modulus_degree=3000), "power of two"),
        (dict(coeff_mod_bit_sizes=[60, 40, 40, 60], global_scale=2.0**30), "middle primes"),
        (dict(coeff_mod_bit_sizes=[61, 40, 60]), r"\[20, 60\]"),
        (dict(galois_steps=[5000]), "galois_steps"),
    ],
)
def test_bad_parameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        he.CKKSContext(**kwargs)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="poly_modulus_degree"):
        he.CKKSContext(poly_modulus_degree="8192")
    with pytest.raises(ValueError, match="layout"):
        he.CKKSContext(galois_steps=[]).encrypt([1.0], layout="diagonal")


def test_depth_exhaustion_is_a_clear_error(ctx):
    a = ctx.encrypt(np.ones(4))
    b = (a * a) * a  # depth 2 used
    assert b.level == 0
    with pytest.raises(he.DepthExhaustedError, match=r"needs 1 more level\(s\) but the ciphertext has 0 left"):
        b * b
    with pytest.raises(he.DepthExhaustedError, match="depth exhausted"):
        b @ np.ones((4, 2))
    with pytest.raises(he.DepthExhaustedError, match="polyval of degree 3 needs 3"):
        a.polyval([0, 1, 0, 0.5])


def test_public_context_cannot_decrypt_and_has_no_secret_key(ctx):
    public = ctx.public_context()
    assert not public.has_secret_key and public.key_id == ctx.key_id
    enc = public.encrypt(np.arange(3.0))  # encryption needs only the public key
    np.testing.assert_allclose(ctx.decrypt(enc * enc), np.arange(3.0) ** 2, atol=1e-6)
    with pytest.raises(he.MissingKeyError, match="no secret key"):
        public.decrypt(enc)
    with pytest.raises(he.MissingKeyError, match="public context"):
        public.serialize(include_secret_key=True)


def test_serialized_public_context_holds_no_secret_key(ctx):
    data = ctx.public_context().serialize()
    server = he.CKKSContext.deserialize(data)
    assert not server.has_secret_key
    with pytest.raises(he.MissingKeyError):
        server.decrypt(server.encrypt([1.0]))
    # The default serialization of even the full context leaves the secret key out.
    assert not he.CKKSContext.deserialize(ctx.serialize()).has_secret_key


def test_full_context_round_trip_decrypts(ctx):
    restored = he.CKKSContext.deserialize(ctx.serialize(include_secret_key=True))
    assert restored.has_secret_key and restored.key_id == ctx.key_id
    np.testing.assert_allclose(restored.decrypt(ctx.encrypt([1.5, 2.5])), [1.5, 2.5], atol=1e-6)


def test_ciphertexts_of_two_contexts_do_not_mix(ctx, other_ctx):
    a, b = ctx.encrypt(np.ones(4)), other_ctx.encrypt(np.ones(4))
    for combine in (lambda: a + b, lambda: a - b, lambda: a * b):
        with pytest.raises(he.ContextMismatchError, match="two different CKKS contexts"):
            combine()
    with pytest.raises(he.ContextMismatchError):
        other_ctx.decrypt(a)
    with pytest.raises(he.ContextMismatchError, match="another key set"):
        other_ctx.deserialize_cipher(a.serialize())


def test_missing_galois_keys_are_named(other_ctx):
    with pytest.raises(he.MissingKeyError, match="Galois"):
        other_ctx.encrypt(np.ones(8)).sum()


@pytest.mark.parametrize("layout", ["vector", "batch"])
def test_cipher_serialization_round_trip_across_contexts(ctx, layout):
    x = np.random.default_rng(0).normal(size=(3, 5))
    server = he.CKKSContext.deserialize(ctx.public_context().serialize())
    enc = server.deserialize_cipher(ctx.encrypt(x, layout).serialize())
    assert enc.shape == (3, 5) and enc.layout == layout
    result = server.deserialize_cipher(ctx.deserialize_cipher((enc * enc).serialize()).serialize())
    back = ctx.deserialize_cipher(result.serialize())
    np.testing.assert_allclose(ctx.decrypt(back), x * x, atol=1e-5)
    assert back.level == 1


def test_mismatched_shapes_are_refused(ctx):
    a = ctx.encrypt(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot be combined"):
        a + ctx.encrypt(np.ones((3, 2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        a + np.ones(4)
    with pytest.raises(ValueError, match="shape"):
        a @ np.ones((4, 2))
