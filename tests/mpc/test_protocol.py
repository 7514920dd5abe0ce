"""Arithmetic protocols against float64 NumPy within the stated fixed-point error bounds."""

import gc

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tfppml.mpc as mpc
from tfppml.errors import PolicyDenied
from tfppml.mpc import ABY3, SharedTensor
from tfppml.mpc.shares import ShareKind

from .conftest import RES, product_tolerance


def reals(shape, bound=100.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(-bound, bound, allow_nan=False, width=64))


@pytest.mark.parametrize("owner", [None, "server0", "server1", "server2"])
def test_share_and_reveal_roundtrip(prot, rng, owner):
    x = rng.normal(size=(3, 5)) * 100
    shared = prot.share(x, owner=owner)
    assert isinstance(shared, SharedTensor) and shared.shape == (3, 5)
    np.testing.assert_allclose(prot.reveal(shared), x, atol=RES / 2)


def test_integers_are_exact(prot):
    x = np.array([[-7, 0, 2**20]])
    shared = prot.share(x, integer=True)
    result = prot.reveal(shared * 3 - 1)
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, x * 3 - 1)


@given(data=st.data())
@settings(max_examples=15)
def test_add_sub_neg_broadcasting(inprocess, data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4))
    x = data.draw(reals(shapes.input_shapes[0]))
    y = data.draw(reals(shapes.input_shapes[1]))
    sx, sy = inprocess.share(x), inprocess.share(y)
    np.testing.assert_allclose(inprocess.reveal(sx + sy), x + y, atol=RES)
    np.testing.assert_allclose(inprocess.reveal(sx - sy), x - y, atol=RES)
    np.testing.assert_allclose(inprocess.reveal(-sx), -x, atol=RES / 2)
    np.testing.assert_allclose(inprocess.reveal(sx + y), x + y, atol=RES)
    np.testing.assert_allclose(inprocess.reveal(y - sx), y - x, atol=RES)


@given(data=st.data())
@settings(max_examples=15)
def test_elementwise_mul(inprocess, data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4))
    x = data.draw(reals(shapes.input_shapes[0], 30.0))
    y = data.draw(reals(shapes.input_shapes[1], 30.0))
    sx, sy = inprocess.share(x), inprocess.share(y)
    np.testing.assert_allclose(inprocess.reveal(sx * sy), x * y, atol=product_tolerance(x, y))
    np.testing.assert_allclose(inprocess.reveal(sx * y), x * y, atol=product_tolerance(x, y))
    np.testing.assert_allclose(inprocess.reveal(sx * 3), x * 3, atol=3 * RES)


def test_chained_products_stay_accurate(prot, rng):
    x = rng.uniform(-1.5, 1.5, size=(50,))
    s = prot.share(x)
    out = s
    for _ in range(5):
        out = out * s * 0.5
    np.testing.assert_allclose(prot.reveal(out), x**6 / 32, atol=50 * RES)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 2), (17, 64, 9), (64, 256, 32)])
def test_matmul(prot, rng, m, k, n):
    x = rng.normal(size=(m, k))
    w = rng.normal(size=(k, n))
    result = prot.reveal(prot.share(x) @ prot.share(w, owner="server2"))
    np.testing.assert_allclose(result, x @ w, atol=product_tolerance(x, w, k))


def test_batched_matmul_and_public_weights(prot, rng):
    x = rng.normal(size=(4, 3, 6))
    w = rng.normal(size=(6, 2))
    np.testing.assert_allclose(prot.reveal(prot.share(x) @ w), x @ w, atol=product_tolerance(x, w, 6))
    np.testing.assert_allclose(prot.reveal(x @ prot.share(w)), x @ w, atol=product_tolerance(x, w, 6))


@pytest.mark.parametrize("strides,padding", [(1, "VALID"), (1, "SAME"), (2, "VALID"), (2, "SAME"), ((1, 2), "SAME")])
def test_conv2d_matches_tf(prot, rng, strides, padding):
    import tensorflow as tf

    x = rng.normal(size=(2, 7, 6, 3))
    w = rng.normal(size=(3, 3, 3, 4)) * 0.5
    expected = tf.nn.conv2d(x, w, strides=strides, padding=padding).numpy()
    result = prot.reveal(mpc.conv2d(prot.share(x), prot.share(w), strides, padding))
    np.testing.assert_allclose(result, expected, atol=product_tolerance(x, w, 27))


def test_sum_mean_and_shapes(prot, rng):
    x = rng.normal(size=(2, 3, 4)) * 10
    s = prot.share(x)
    np.testing.assert_allclose(prot.reveal(s.sum()), x.sum(), atol=24 * RES)
    np.testing.assert_allclose(prot.reveal(s.sum(axis=1)), x.sum(axis=1), atol=3 * RES)
    np.testing.assert_allclose(prot.reveal(s.sum(axis=(0, 2), keepdims=True)), x.sum(axis=(0, 2), keepdims=True), atol=8 * RES)
    np.testing.assert_allclose(prot.reveal(s.mean(axis=-1)), x.mean(axis=-1), atol=4 * RES)
    np.testing.assert_allclose(prot.reveal(s.reshape(6, 4)), x.reshape(6, 4), atol=RES)
    np.testing.assert_allclose(prot.reveal(s.transpose([2, 0, 1])), x.transpose(2, 0, 1), atol=RES)
    np.testing.assert_allclose(prot.reveal(s.T), x.T, atol=RES)
    np.testing.assert_allclose(prot.reveal(s[1, :, ::2]), x[1, :, ::2], atol=RES)
    np.testing.assert_allclose(prot.reveal(s[..., None, -1]), x[..., None, -1], atol=RES)
    np.testing.assert_allclose(prot.reveal(mpc.concat([s, s * 2], axis=1)), np.concatenate([x, x * 2], 1), atol=3 * RES)


def test_values_near_the_encoding_range(prot):
    bound = prot.encoding.bound
    edge = np.array([bound - 1, -(bound - 1)])
    np.testing.assert_allclose(prot.reveal(prot.share(edge)), edge, atol=RES)
    with pytest.raises(ValueError, match="outside the encoding range"):
        prot.share(np.array([0.0, bound]))
    with pytest.raises(ValueError, match="finite"):
        prot.share(np.array([np.nan]))


def test_reveal_to_a_named_party_returns_nothing_to_the_driver(inprocess, rng):
    x = rng.normal(size=(4,))
    s = inprocess.share(x)
    assert inprocess.reveal(s, to="server1") is None
    party = inprocess.backend.parties[1]
    plain = [v for k, v in party.store.items() if v.kind is ShareKind.PLAIN]
    assert plain, "server1 should hold the revealed plaintext"
    from tfppml import ops

    np.testing.assert_allclose(ops.fixed_point_decode(plain[-1].a).numpy(), x, atol=RES / 2)
    for other in (0, 2):
        assert not any(v.kind is ShareKind.PLAIN for v in inprocess.backend.parties[other].store.values())


def test_freed_shares_leave_the_servers(inprocess):
    s = inprocess.share(np.ones(3))
    share_id = s.id
    assert all(share_id in p.store for p in inprocess.backend.parties)
    s.free()
    assert not any(share_id in p.store for p in inprocess.backend.parties)
    t = inprocess.share(np.ones(3))
    tid = t.id
    del t  # garbage-collected handles are freed with the next command
    inprocess.share(np.ones(1))
    assert not any(tid in p.store for p in inprocess.backend.parties)


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda p: p.share("abc"), TypeError, ["share", "`value`"]),
        (lambda p: p.share(np.ones(2), owner="server9"), ValueError, ["`owner`", "server9"]),
        (lambda p: p.share(np.ones((2, 3))) @ p.share(np.ones((4, 2))), ValueError, ["matmul", "inner", "3 != 4"]),
        (lambda p: p.share(np.ones(3)) @ p.share(np.ones(3)), ValueError, ["matmul", "rank"]),
        (lambda p: p.share(np.ones((2, 3))) + p.share(np.ones((4,))), ValueError, ["broadcast"]),
        (lambda p: mpc.conv2d(p.share(np.ones((1, 4, 4, 2))), np.ones((3, 3, 3, 1))), ValueError, ["channels"]),
        (lambda p: mpc.conv2d(p.share(np.ones((1, 4, 4, 1))), np.ones((3, 3, 1, 1)), padding="FULL"), ValueError, ["`padding`"]),
        (lambda p: mpc.max_pool2d(p.share(np.ones((1, 4, 4, 1))), padding="SAME"), ValueError, ["`padding`"]),
        (lambda p: mpc.avg_pool2d(p.share(np.ones((4, 4)))), ValueError, ["NHWC"]),
        (lambda p: p.share(np.ones((2, 3))).sum(axis=2), ValueError, ["`axis`"]),
        (lambda p: p.share(np.ones((2, 3))).reshape(4, 2), ValueError, ["reshape"]),
        (lambda p: p.share(np.ones((2, 3)))[5], IndexError, ["index"]),
        (lambda p: p.reveal(np.ones(3)), TypeError, ["reveal", "`x`"]),
        (lambda p: p.reveal(p.share(np.ones(3)), to="nobody"), ValueError, ["`to`"]),
        (lambda p: bool(p.share(np.ones(1))), TypeError, ["secret"]),
        (lambda p: ABY3(frac_bits=40), ValueError, ["`frac_bits`"]),
        (lambda p: p.share(np.ones(2)) + ABY3().share(np.ones(2)), ValueError, ["another protocol"]),
    ],
)
def test_bad_arguments_raise_clear_errors(prot, call, error, words):
    with pytest.raises(error) as info:
        call(prot)
    for word in words:
        assert word in str(info.value)
    # The protocol is still usable after a refused call.
    np.testing.assert_allclose(prot.reveal(prot.share(np.ones(2)) * 2.0), [2.0, 2.0], atol=RES)


def test_query_takes_a_shared_input_or_an_array_and_leaves_nothing_behind(inprocess):
    w = inprocess.share(np.array([[1.0, -2.0], [0.5, 3.0]]))
    builder, x = inprocess.program([1, 2])
    inprocess.register_program("lin", mpc.relu(x @ w))
    inprocess.serve("lin", 3)
    stores = [set(p.store) for p in inprocess.backend.parties]
    value = np.array([[2.0, 1.0]])
    expected = np.maximum(value @ np.array([[1.0, -2.0], [0.5, 3.0]]), 0)
    # Inline: the array is shared here and travels with the query; the servers keep nothing of it.
    np.testing.assert_allclose(inprocess.query("lin", value), expected, atol=4 * RES)
    assert [set(p.store) for p in inprocess.backend.parties] == stores
    shared = inprocess.share(value)
    np.testing.assert_allclose(inprocess.query("lin", shared), expected, atol=4 * RES)
    shared.free()
    np.testing.assert_allclose(inprocess.query("lin", value), expected, atol=4 * RES)
    # The quota is spent: a refused inline query leaves nothing behind either.
    with pytest.raises(PolicyDenied, match="not serving"):
        inprocess.query("lin", value)
    assert [set(p.store) for p in inprocess.backend.parties] == stores
    with pytest.raises(TypeError, match="ABY3.query.*`x` must be numeric"):
        inprocess.query("lin", "abc")


def test_a_registered_program_pins_the_tensors_it_reads(inprocess):
    # Handles the caller drops (weights of a temporary, a public constant) must not be freed under the program.
    w = inprocess.share(np.array([[1.0, -2.0], [0.5, 3.0]]))
    builder, x = inprocess.program([1, 2])
    inprocess.register_program("pinned", mpc.relu(x @ w) * 2.0)
    with pytest.raises(ValueError, match=r"ABY3.free: argument `x` .* read by the registered program\(s\) \['pinned'\]"):
        w.free()
    del w, builder, x
    gc.collect()
    inprocess.share(np.ones(1))  # a command that carries the released handles to the servers
    inprocess.serve("pinned", 1)
    value = np.array([[2.0, 1.0]])
    expected = 2 * np.maximum(value @ np.array([[1.0, -2.0], [0.5, 3.0]]), 0)
    np.testing.assert_allclose(inprocess.query("pinned", value), expected, atol=8 * RES)


# --- a program's last layer left unshared (reshare=False) ------------------------------------------------------
W1 = np.array([[1.0, -2.0, 0.5], [0.5, 3.0, -1.0]])
W2 = np.array([[0.25, -1.5], [2.0, 0.5], [-0.75, 1.0]])
B2 = np.array([0.125, -3.0])


def _mlp_program(prot, name, reshare):
    w1, w2, b2 = prot.share(W1), prot.share(W2), prot.share(B2)
    builder, x = prot.program([1, 2])
    out = mpc.matmul(mpc.relu(x @ w1), w2, reshare=reshare) + b2
    assert out.terms is (not reshare)
    prot.register_program(name, out)
    return w1, w2, b2


def _messages_per_query(prot, name, value):
    prot.serve(name, 1)
    prot.communication_stats(reset=True)
    result = prot.query(name, value)
    return result, [s["messages_received"] for s in prot.communication_stats().values()]


def test_unshared_last_layer_sends_nothing_and_is_exact(inprocess):
    value = np.array([[1.5, -0.25]])
    expected = np.maximum(value @ W1, 0) @ W2 + B2
    w1 = inprocess.share(W1)
    builder, x = inprocess.program([1, 2])
    inprocess.register_program("hidden_only", mpc.relu(x @ w1))
    _, hidden = _messages_per_query(inprocess, "hidden_only", value)
    results, messages = {}, {}
    for reshare in (True, False):
        keep = _mlp_program(inprocess, f"mlp_{reshare}", reshare)
        results[reshare], messages[reshare] = _messages_per_query(inprocess, f"mlp_{reshare}", value)
        del keep
    # The unshared last layer adds no message to the hidden layer's; the reshared one adds its round.  (Totals:
    # which party receives how many of a ReLU's messages depends on roles that rotate from call to call.)
    assert sum(messages[False]) == sum(hidden)
    assert sum(messages[True]) > sum(hidden)
    np.testing.assert_allclose(results[False], expected, atol=8 * RES)
    np.testing.assert_allclose(results[True], expected, atol=8 * RES)


def test_unshared_terms_are_rerandomised_per_query(inprocess):
    # The same shared input twice: without the zero-sharing the servers' terms x_i (w_i + w_{i+1}) + x_{i+1} w_i
    # would repeat, and the client, which knows its input's shares, would learn about the weights from them.
    w = inprocess.share(W1)
    builder, x = inprocess.program([1, 2])
    inprocess.register_program("terms_only", mpc.matmul(x, w, reshare=False))
    inprocess.serve("terms_only", 2)
    shared = inprocess.share(np.array([[1.5, -0.25]]))
    first, second = (inprocess._run("query", {"name": "terms_only", "input": shared.id}) for _ in range(2))
    terms = [[np.asarray(t["term"]) for _, t in answers] for answers in (first, second)]
    assert all(a.dtype == np.uint64 for a in terms[0])
    assert all(not np.array_equal(a, b) for a, b in zip(*terms))
    sums = [np.sum(np.stack(t), axis=0, dtype=np.uint64) for t in terms]
    np.testing.assert_array_equal(sums[0], sums[1])
    assert {meta["frac_bits"] for meta, _ in first} == {2 * inprocess.frac_bits}


def test_unshared_terms_are_refused_where_they_cannot_go(inprocess):
    w = inprocess.share(W1)
    with pytest.raises(ValueError, match=r"ABY3.matmul: reshare=False is only for programs"):
        mpc.matmul(inprocess.share(np.ones((1, 2))), w, reshare=False)
    with pytest.raises(TypeError, match="`reshare` must be a bool"):
        mpc.matmul(inprocess.share(np.ones((1, 2))), w, reshare="no")
    builder, x = inprocess.program([1, 2])
    terms = mpc.matmul(x, w, reshare=False)
    for call in (lambda: builder.truncate(terms, 1), lambda: terms * 2.0, lambda: terms @ w.T, lambda: terms.sum()):
        with pytest.raises(ValueError, match="`x` holds a product's unshared terms"):
            call()
    # What they can do: be added to, reshaped, passed to relu (which truncates them) and returned.
    out = (terms + inprocess.share(np.ones(3))).reshape(3)
    assert out.terms and out.frac_bits == 2 * inprocess.frac_bits
    activated = mpc.relu(out)
    assert not activated.terms and activated.frac_bits == inprocess.frac_bits


def test_unshared_convolution_pooled_and_activated(inprocess):
    # conv2d(reshare=False) -> 2x2 average pooling of the terms (no truncation: 2 more fractional bits) -> ReLU,
    # which truncates 16 + 2 bits; a window of 3x3 cannot average terms.
    rng = np.random.default_rng(5)
    filters = rng.normal(size=(3, 3, 1, 2))
    image = rng.normal(size=(1, 6, 6, 1))
    shared_filters = inprocess.share(filters)  # kept: a dropped SharedTensor is freed at the servers
    builder, x = inprocess.program([1, 6, 6, 1])
    terms = mpc.conv2d(x, shared_filters, reshare=False)
    pooled = mpc.avg_pool2d(terms, 2)
    assert pooled.terms and pooled.frac_bits == 2 * inprocess.frac_bits + 2
    with pytest.raises(ValueError, match=r"only windows of a power-of-two size can average them \(by truncation\), got \[3, 3\]"):
        mpc.avg_pool2d(terms, 3)
    inprocess.register_program("conv_pool_relu", mpc.relu(pooled))
    inprocess.serve("conv_pool_relu", 1)
    conv = tf.nn.conv2d(image, filters, 1, "VALID")
    expected = np.maximum(tf.nn.avg_pool2d(conv, 2, 2, "VALID").numpy(), 0)
    got = inprocess.query("conv_pool_relu", image)
    np.testing.assert_allclose(got, expected, atol=4 * RES + 9 * product_tolerance(image, filters))
