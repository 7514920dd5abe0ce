"""Tests of the plain-Python Bonawitz-style secure aggregation protocol."""

import numpy as np
import pytest
from scipy import stats

from tfppml.errors import ProtocolError
from tfppml.federated import secure_agg as sa


def _grid_updates(rng, n, size, frac_bits, clip=1.0):
    """Updates already on the fixed-point grid, so the quantised sum is exactly the float sum."""
    ints = rng.integers(-int(clip * 2**frac_bits), int(clip * 2**frac_bits) + 1, size=(n, size))
    return [row / 2.0**frac_bits for row in ints], ints


@pytest.mark.parametrize("n,threshold", [(2, 2), (5, 3), (8, 8)])
def test_secure_sum_equals_plain_ring_sum_exactly(n, threshold):
    rng = np.random.default_rng(n)
    updates, ints = _grid_updates(rng, n, 257, frac_bits=20)
    ring = sa.secure_sum(updates, threshold, frac_bits=20, return_ring=True)
    expected = np.zeros(257, np.uint64)
    for u in updates:
        expected = expected + sa.quantize(u, 1.0, 20)
    assert ring.dtype == np.uint64
    np.testing.assert_array_equal(ring, expected)
    np.testing.assert_array_equal(ring.view(np.int64), ints.sum(axis=0))


def test_decoded_sum_matches_float_sum_within_quantisation_and_clips():
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.3, 64) for _ in range(4)]
    updates[0][:3] = [5.0, -5.0, 0.5]  # first two are clipped to +-1
    total = sa.secure_sum(updates, 3, frac_bits=16)
    clipped = sum(np.clip(u, -1, 1) for u in updates)
    assert np.max(np.abs(total - clipped)) <= 4 * 2.0**-17 + 1e-12


def _masked_vector_of_client0(update, size, n=3):
    cfg = sa.SecAggConfig(n, 2, size)
    clients = [sa.SecAggClient(i, cfg) for i in range(n)]
    server = sa.SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.id])
    return clients[0].masked_input(update, server.senders)


def _as_unit(u64):
    return (u64 >> np.uint64(11)).astype(np.float64) / 2.0**53


def test_masked_vector_is_independent_of_the_update():
    size = 4000
    a = np.zeros(size)
    b = np.full(size, 0.9)
    ya, yb = _masked_vector_of_client0(a, size), _masked_vector_of_client0(b, size)
    # Two-sample test: the masked vectors of two very different updates come from the same distribution...
    assert stats.ks_2samp(_as_unit(ya), _as_unit(yb)).pvalue > 1e-3
    # ... which is uniform over Z_2^64, the mask's distribution.
    assert stats.kstest(_as_unit(ya), "uniform").pvalue > 1e-3
    assert stats.kstest(_as_unit(yb), "uniform").pvalue > 1e-3
    # Control: the same test does tell the two updates apart when they are not masked.
    qa, qb = sa.quantize(a, 1.0, 24), sa.quantize(b, 1.0, 24)
    assert stats.ks_2samp(_as_unit(qa), _as_unit(qb)).pvalue < 1e-10


def test_dropouts_up_to_threshold_decode():
    rng = np.random.default_rng(7)
    updates, ints = _grid_updates(rng, 7, 33, frac_bits=24)
    # 2 drop after sending their input (their self seeds are rebuilt), 1 before (its pairwise masks removed).
    ring = sa.secure_sum(updates, 4, dropouts=[0, 3], early_dropouts=[6], return_ring=True)
    np.testing.assert_array_equal(ring.view(np.int64), ints[:6].sum(axis=0))


def test_dropouts_beyond_threshold_fail_clearly():
    updates = [np.zeros(8)] * 7
    msg = r"only 3 clients answered the unmasking round, fewer than the threshold 4"
    with pytest.raises(ProtocolError, match=msg):
        sa.secure_sum(updates, 4, dropouts=[0, 1, 2, 3])
    with pytest.raises(ProtocolError, match=r"only 3 clients sent a masked input"):
        sa.secure_sum(updates, 4, early_dropouts=[0, 1, 2, 3])


def test_client_refuses_to_reveal_both_secrets_of_a_client():
    cfg = sa.SecAggConfig(3, 2, 4)
    clients = [sa.SecAggClient(i, cfg) for i in range(3)]
    server = sa.SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.id])
        c.masked_input(np.zeros(4))
    with pytest.raises(ProtocolError, match="both as survivors and as dropped"):
        clients[0].unmasking_shares([0, 1, 2], [2])


def test_tampered_share_ciphertext_is_rejected():
    cfg = sa.SecAggConfig(3, 2, 4)
    clients = [sa.SecAggClient(i, cfg) for i in range(3)]
    server = sa.SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({c.id: c.share_keys(roster) for c in clients})
    blob = bytearray(inbox[1][0])
    blob[-1] ^= 1
    with pytest.raises(ProtocolError, match="failed authentication"):
        clients[1].receive_shares({0: bytes(blob)})


def test_shamir_threshold():
    secret = 2**255 + 12345
    shares = sa.shamir_share(secret, 6, 4)
    assert sa.shamir_reconstruct(shares[1:5]) == secret
    assert sa.shamir_reconstruct(shares[:3]) != secret  # t - 1 shares give an unrelated value


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_clients=5, threshold=2, vector_size=3), r"threshold must satisfy .* got threshold=2"),
        (dict(num_clients=5, threshold=6, vector_size=3), r"threshold=6"),
        (dict(num_clients=1, threshold=1, vector_size=3), r"num_clients must be an int >= 2, got 1"),
        (dict(num_clients=4, threshold=3, vector_size=3, clip=1e6, frac_bits=44), r"must be < 2\*\*63"),
        (dict(num_clients=4, threshold=3, vector_size=3, clip=-1.0), r"clip must be a positive"),
    ],
)
def test_config_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sa.SecAggConfig(**kwargs)


def test_update_shape_and_values_are_checked():
    with pytest.raises(ValueError, match=r"update must have shape \(4,\), got \(3,\)"):
        sa.secure_sum([np.zeros(4), np.zeros(4), np.zeros(3)], 2)
    with pytest.raises(ValueError, match="finite"):
        sa.quantize(np.array([np.nan]), 1.0, 8)
