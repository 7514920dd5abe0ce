"""The TFF secure-aggregation factories, run in TFF's default native runtime (worker_binary)."""

import collections

import numpy as np
import pytest
import tensorflow_federated as tff
from scipy import stats

from tfppml.errors import ProtocolError
from tfppml.federated import tff_secure_agg as tsa
from tfppml.federated.runtime import install_worker_reaper

install_worker_reaper()

N = 6  # slots; max_dropout_fraction 0.34 -> threshold 4
SIZE = 40
FRAC = 8


def _grid(rng, count, size=SIZE):
    """Updates on the fixed-point grid (k / 2**FRAC), so float32 sums of them are exact."""
    return rng.integers(-(2**FRAC), 2**FRAC + 1, size=(count, size)).astype(np.float32) / 2**FRAC


@pytest.fixture(scope="module")
def sum_process():
    factory = tsa.SecureSumFactory(N, max_dropout_fraction=0.34, frac_bits=FRAC)
    assert factory.threshold == 4
    value_type = tsa.secure_value_type(tff.TensorType(np.float32, [SIZE]), N)
    return factory, factory.create(value_type)


def _values(updates, materials):
    return [collections.OrderedDict(update=u, secagg=m) for u, m in zip(updates, materials)]


def test_federated_sum_of_uint64_wraps_exactly_in_the_ring():
    comp = tff.federated_computation(
        lambda x: tff.federated_sum(x), tff.FederatedType(tff.TensorType(np.uint64, [64]), tff.CLIENTS)
    )
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 2**64 - 1, size=64, dtype=np.uint64, endpoint=True) for _ in range(5)]
    expected = np.zeros(64, np.uint64)
    for x in xs:
        expected = expected + x
    np.testing.assert_array_equal(comp(xs), expected)


@pytest.mark.parametrize("seed", [1, 2])
def test_secure_sum_equals_plain_sum_exactly(sum_process, seed):
    factory, process = sum_process
    updates = _grid(np.random.default_rng(seed), N)
    materials = tsa.prepare_round(N, factory.threshold, range(N), round_id=seed)
    out = process.next(process.initialize(), _values(updates, materials))
    assert out.measurements["secure_ok"] and out.measurements["secure_clients"] == N
    np.testing.assert_array_equal(out.result, updates.sum(axis=0))


def test_dropouts_up_to_the_threshold_decode(sum_process):
    factory, process = sum_process
    updates = _grid(np.random.default_rng(3), N)
    materials = tsa.prepare_round(N, factory.threshold, range(N), round_id=3)
    keep = [0, 2, 3, 5]  # clients 1 and 4 shared keys, then dropped before sending their masked input
    out = process.next(process.initialize(), _values(updates[keep], [materials[i] for i in keep]))
    assert out.measurements["secure_ok"] and out.measurements["secure_clients"] == 4
    np.testing.assert_array_equal(out.result, updates[keep].sum(axis=0))
    tsa.check_measurements({"aggregator": out.measurements})  # does not raise


def test_dropouts_beyond_the_threshold_fail_clearly(sum_process):
    factory, process = sum_process
    updates = _grid(np.random.default_rng(4), N)
    materials = tsa.prepare_round(N, factory.threshold, range(N), round_id=4)
    out = process.next(process.initialize(), _values(updates[:3], materials[:3]))
    assert not out.measurements["secure_ok"]
    np.testing.assert_array_equal(out.result, np.zeros(SIZE, np.float32))  # nothing decoded, round discarded
    msg = r"only 3 clients sent a masked input, fewer than the threshold 4"
    with pytest.raises(ProtocolError, match=msg):
        tsa.check_measurements({"aggregator": out.measurements})
    with pytest.raises(ProtocolError, match=r"only 3 clients advertised keys, fewer than the threshold 4"):
        tsa.prepare_round(N, factory.threshold, range(3))


def _as_unit(u64):
    return (u64 >> np.uint64(11)).astype(np.float64) / 2.0**53


def test_what_the_server_receives_is_independent_of_the_update():
    size = 3000
    factory = tsa.SecureSumFactory(3, max_dropout_fraction=0.0)
    value_type = tsa.secure_value_type(tff.TensorType(np.float32, [size]), 3)
    client_masking = factory.client_masking(value_type)
    materials = tsa.prepare_round(3, factory.threshold, range(3))
    sent = {}
    for name, update in (("zeros", np.zeros(size, np.float32)), ("large", np.full(size, 0.9, np.float32))):
        out = client_masking(collections.OrderedDict(update=update, secagg=materials[0]))
        assert sorted(out) == ["masked", "present"]  # everything client 0 sends in round 2
        np.testing.assert_array_equal(out["present"], [1, 0, 0])
        sent[name] = out["masked"]
    assert stats.ks_2samp(_as_unit(sent["zeros"]), _as_unit(sent["large"])).pvalue > 1e-3
    for y in sent.values():
        assert stats.kstest(_as_unit(y), "uniform").pvalue > 1e-3
    # Control: the unmasked quantised updates are told apart at once by the same test.
    qa = np.zeros(size, np.uint64)
    qb = np.full(size, np.uint64(round(0.9 * 2**24)))
    assert stats.ks_2samp(_as_unit(qa), _as_unit(qb)).pvalue < 1e-10


def test_weighted_factory_gives_the_weighted_mean_with_a_dropout():
    factory = tsa.SecureAggregationFactory(5, max_dropout_fraction=0.4)
    value_type = tsa.secure_value_type(
        collections.OrderedDict(w=tff.TensorType(np.float32, [3, 2]), b=tff.TensorType(np.float32, [2])), 5
    )
    process = factory.create(value_type, tff.TensorType(np.float32))
    rng = np.random.default_rng(5)
    updates = [collections.OrderedDict(w=rng.normal(0, 0.2, (3, 2)).astype(np.float32), b=rng.normal(0, 0.2, 2).astype(np.float32)) for _ in range(5)]
    weights = [np.float32(w) for w in (10, 3, 7, 1, 20)]
    materials = tsa.prepare_round(5, factory.threshold, range(5))
    keep = [0, 1, 3, 4]
    out = process.next(
        process.initialize(), _values([updates[i] for i in keep], [materials[i] for i in keep]), [weights[i] for i in keep]
    )
    total = sum(weights[i] for i in keep)
    for key in ("w", "b"):
        expected = sum(weights[i] * updates[i][key] for i in keep) / total
        np.testing.assert_allclose(out.result[key], expected, atol=1e-6)


def test_dp_factory_composes_outside_secure_sum():
    clip = 0.5
    dp = tsa.secure_dp_aggregator(noise_multiplier=0.0, clients_per_round=4, clip=clip, max_dropout_fraction=0.25)
    assert isinstance(dp, tff.aggregators.DifferentiallyPrivateFactory)
    value_type = tsa.secure_value_type(tff.TensorType(np.float32, [8]), 4)
    process = dp.create(value_type)
    rng = np.random.default_rng(6)
    updates = rng.normal(0, 1.0, (4, 8)).astype(np.float32)
    materials = tsa.prepare_round(4, 3, range(4))
    out = process.next(process.initialize(), _values(updates, materials))
    clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in updates]
    np.testing.assert_allclose(out.result, np.sum(clipped, axis=0) / 4, atol=1e-5)


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"max_dropout_fraction must be in \[0, 0.5\).*got 0.5"):
        tsa.SecureSumFactory(4, max_dropout_fraction=0.5)
    with pytest.raises(ValueError, match=r"num_clients must be an int >= 2.*got 1"):
        tsa.SecureAggregationFactory(1)
    with pytest.raises(ValueError, match=r"must be < 2\*\*63"):
        tsa.SecureSumFactory(10, clip=1e9, frac_bits=40)
    with pytest.raises(TypeError, match=r"value_type must be secure_value_type"):
        tsa.SecureSumFactory(4).create(tff.TensorType(np.float32, [3]))
    with pytest.raises(TypeError, match=r"value_type.secagg must be material_type\(4\)"):
        tsa.SecureSumFactory(4).create(tsa.secure_value_type(tff.TensorType(np.float32, [3]), 5))
    with pytest.raises(ValueError, match=r"participants must be distinct ids in \[0, 4\)"):
        tsa.prepare_round(4, 3, [0, 1, 7])


# ------------------------------------------------------------------ sparse graph (SecAgg+), precomputed masks
SPARSE_N, SPARSE_K = 10, 4  # holders per client m = 5; max_dropout_fraction 0.34 -> threshold 4


@pytest.fixture(scope="module", params=[False, True], ids=["tf-masks", "precomputed-masks"])
def sparse_process(request):
    factory = tsa.SecureSumFactory(SPARSE_N, max_dropout_fraction=0.34, frac_bits=FRAC, neighbours=SPARSE_K)
    assert factory.threshold == 4 and factory.neighbours == SPARSE_K
    value_type = tsa.secure_value_type(
        tff.TensorType(np.float32, [SIZE]), SPARSE_N, SPARSE_K, precomputed_masks=request.param
    )
    mask_size = SIZE + 1 if request.param else None
    return factory, factory.create(value_type), mask_size


def _sparse_materials(factory, mask_size, round_id):
    return tsa.prepare_round(
        SPARSE_N, factory.threshold, range(SPARSE_N), round_id=round_id, neighbours=factory.neighbours,
        mask_size=mask_size,
    )


def test_sparse_secure_sum_equals_plain_sum_exactly(sparse_process):
    factory, process, mask_size = sparse_process
    updates = _grid(np.random.default_rng(21), SPARSE_N)
    materials = _sparse_materials(factory, mask_size, 21)
    assert all(m["peers"].shape == (SPARSE_K,) for m in materials)  # each client masks with 4 neighbours only
    out = process.next(process.initialize(), _values(updates, materials))
    assert out.measurements["secure_ok"] and out.measurements["secure_unrecoverable"] == 0
    np.testing.assert_array_equal(out.result, updates.sum(axis=0))


def test_sparse_dropouts_up_to_the_neighbourhood_threshold_decode(sparse_process):
    factory, process, mask_size = sparse_process
    updates = _grid(np.random.default_rng(22), SPARSE_N)
    materials = _sparse_materials(factory, mask_size, 22)
    # Two clients that share no holder set (on the cycle of 10 with 4 neighbours: opposite clients) drop before
    # sending their input: every holder set loses at most one of its 5 members, keeping the threshold 4.
    first = 0
    second = next(v for v in range(1, SPARSE_N) if not any({first, v} <= set(m["held"].tolist()) for m in materials))
    keep = [v for v in range(SPARSE_N) if v not in (first, second)]
    for v in keep:
        assert len(set(materials[v]["held"].tolist()) - {first, second}) >= factory.threshold
    out = process.next(process.initialize(), _values(updates[keep], [materials[i] for i in keep]))
    assert out.measurements["secure_ok"], out.measurements
    np.testing.assert_array_equal(out.result, updates[keep].sum(axis=0))


def test_sparse_dropouts_beyond_a_neighbourhood_threshold_fail_clearly(sparse_process):
    factory, process, mask_size = sparse_process
    updates = _grid(np.random.default_rng(23), SPARSE_N)
    materials = _sparse_materials(factory, mask_size, 23)
    gone = set(materials[0]["peers"][:2].tolist())  # client 0 keeps only 3 of its 5 holders, below 4
    keep = [v for v in range(SPARSE_N) if v not in gone]
    out = process.next(process.initialize(), _values(updates[keep], [materials[i] for i in keep]))
    assert out.measurements["secure_clients"] == 8  # globally far above the threshold ...
    assert not out.measurements["secure_ok"] and out.measurements["secure_unrecoverable"] >= 1  # ... but not locally
    np.testing.assert_array_equal(out.result, np.zeros(SIZE, np.float32))
    with pytest.raises(ProtocolError, match=r"self masks of \d+ senders cannot be rebuilt: fewer than the threshold 4"):
        tsa.check_measurements({"aggregator": out.measurements})


def test_precomputed_mask_what_the_server_receives_is_independent_of_the_update():
    size, n = 3000, 6
    factory = tsa.SecureSumFactory(n, max_dropout_fraction=0.0, neighbours=2)
    value_type = tsa.secure_value_type(tff.TensorType(np.float32, [size]), n, 2, precomputed_masks=True)
    client_masking = factory.client_masking(value_type)
    materials = tsa.prepare_round(n, factory.threshold, range(n), neighbours=2, mask_size=size + 1)
    sent = {}
    for name, update in (("zeros", np.zeros(size, np.float32)), ("large", np.full(size, 0.9, np.float32))):
        out = client_masking(collections.OrderedDict(update=update, secagg=materials[0]))
        assert sorted(out) == ["masked", "present"]
        sent[name] = out["masked"]
    assert stats.ks_2samp(_as_unit(sent["zeros"]), _as_unit(sent["large"])).pvalue > 1e-3
    for y in sent.values():
        assert stats.kstest(_as_unit(y), "uniform").pvalue > 1e-3
    # The precomputed mask is exactly what the TF expansion of the same keys gives.
    tf_masking = factory.client_masking(tsa.secure_value_type(tff.TensorType(np.float32, [size]), n, 2))
    plain = {k: v for k, v in materials[0].items() if k != "mask"}
    expected = tf_masking(collections.OrderedDict(update=np.zeros(size, np.float32), secagg=plain))["masked"]
    np.testing.assert_array_equal(sent["zeros"], expected)


def test_sparse_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"neighbours must be None, 'auto' or an even int in \[2, 9\], got 3"):
        tsa.SecureSumFactory(10, neighbours=3)
    with pytest.raises(TypeError, match=r"value_type.secagg must be material_type\(10, neighbours=4\)"):
        tsa.SecureSumFactory(10, neighbours=4).create(tsa.secure_value_type(tff.TensorType(np.float32, [3]), 10))
    with pytest.raises(ValueError, match=r"mask_size must be None or an int >= 1, got 0"):
        tsa.prepare_round(4, 3, range(4), mask_size=0)
    assert tsa.SecureAggregationFactory(100, neighbours="auto").neighbours == 34
    assert tsa.SecureAggregationFactory(10, neighbours="auto").neighbours is None  # auto is complete below ~36
