"""What a single server sees is independent of the secrets.

A server's view of a computation is everything it holds (its pair of every shared tensor) and every message it
receives.  We run the same computation on two different secrets and compare the distribution of each view
component, and of the sum and difference of every two components of one shape (the simplest things a curious
server could compute), with a two-sample chi-square test on their top bits.  The same test run on deliberately
broken variants of the protocol (no randomness, unmasked truncation) must flag them; otherwise the test could
not catch a leak.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import tfppml.mpc as mpc
from tfppml import ops
from tfppml.mpc import runtime
from tfppml.mpc.primitives import fss, resharing

N = 4096
TOP_BITS = 4


class RecordingChannel:
    """Delegates to a party's channel and keeps every message the party receives."""

    def __init__(self, inner):
        self.inner, self.received = inner, []

    def send(self, to, tag, array):
        self.inner.send(to, tag, array)

    def recv(self, frm, tag, timeout=None):
        array = self.inner.recv(frm, tag, timeout)
        flat = np.asarray(array, dtype=np.uint64).reshape(-1)
        # A message may stack several tensors (the one-round truncation sends two): each is a view component.
        self.received += list(flat.reshape(-1, N)) if flat.size % N == 0 and flat.size else [flat]
        return array

    def close(self):
        self.inner.close()


def run_and_record(secret: float, owner=None):
    """The views of the three servers for one run of a small computation on a secret vector."""
    prot = mpc.ABY3()
    recorders = []
    for party in prot.backend.parties:
        party.channel = RecordingChannel(party.channel)
        recorders.append(party.channel)
    try:
        x = prot.share(np.full(N, secret), owner=owner)
        k = prot.share(np.full(N, 2.5))
        t = x * k  # truncated product
        u = mpc.relu(t - 1.0)  # secure comparison + bit injection
        m = x.reshape(64, 64) @ prot.share(np.eye(64) * 0.5)  # matmul
        views = []
        for index, party in enumerate(prot.backend.parties):
            held = []
            for tensor in (x, t, u, m):
                share = party.store[tensor.id]
                held += [np.asarray(share.a).reshape(-1), np.asarray(share.b).reshape(-1)]
            views.append(held + [r for r in recorders[index].received if r.size == N])
        return views
    finally:
        prot.close()


def features(view):
    out = list(view)
    for i in range(len(view)):
        for j in range(i + 1, len(view)):
            with np.errstate(over="ignore"):
                out += [view[i] + view[j], view[i] - view[j]]
    return out


def min_p_value(view_a, view_b):
    assert len(view_a) == len(view_b)
    p_values = []
    for fa, fb in zip(features(view_a), features(view_b)):
        bins = 2**TOP_BITS
        ha = np.bincount((fa >> np.uint64(64 - TOP_BITS)).astype(np.int64), minlength=bins)
        hb = np.bincount((fb >> np.uint64(64 - TOP_BITS)).astype(np.int64), minlength=bins)
        table = np.array([ha, hb])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:  # both constant in the same bin: same distribution
            p_values.append(1.0 if np.array_equal(ha, hb) else 0.0)
            continue
        p_values.append(stats.chi2_contingency(table)[1])
    return min(p_values), len(p_values)


def assert_views_independent(views_a, views_b, parties=(0, 1, 2)):
    for index in parties:
        p, count = min_p_value(views_a[index], views_b[index])
        assert p > 1e-4 / count, f"server{index}'s view depends on the secret (p={p:.3g} over {count} features)"


def assert_views_leak(views_a, views_b):
    leaks = [min_p_value(views_a[i], views_b[i])[0] < 1e-9 for i in range(3)]
    assert any(leaks), "the broken variant was not detected"


def test_views_are_independent_of_the_secret():
    assert_views_independent(run_and_record(3.7), run_and_record(-3.7))


def test_owner_sharing_hides_the_secret_from_the_other_two_servers():
    assert_views_independent(run_and_record(3.7, owner="server0"), run_and_record(-3.7, owner="server0"), parties=(1, 2))


def test_no_message_carries_the_secret_or_a_product():
    prot = mpc.ABY3()
    recorders = []
    for party in prot.backend.parties:
        party.channel = RecordingChannel(party.channel)
        recorders.append(party.channel)
    secret = np.linspace(-5, 5, N)
    x = prot.share(secret)
    t = x * 2.5
    mpc.relu(t)
    encoded = {int(v) for v in ops.fixed_point_encode(secret).numpy()}
    encoded |= {int(v) for v in ops.fixed_point_encode(secret * 2.5).numpy()}
    encoded |= {int(v) for v in ops.fixed_point_encode(secret * 2.5, frac_bits=32).numpy()}
    encoded.discard(0)
    for recorder in recorders:
        assert recorder.received
        for message in recorder.received:
            assert not encoded.intersection(int(v) for v in message)
    prot.close()


def test_broken_variant_without_randomness_is_detected(monkeypatch):
    # TF Encrypted's failure mode: a missing PRG silently replaced by something predictable.
    monkeypatch.setattr(ops, "prg_uniform", lambda seed, shape, offset=0: tf.zeros(shape, tf.uint64))
    monkeypatch.setattr(ops, "prg_uniform_numpy", lambda seed, shape, offset=0: np.zeros(shape, np.uint64))
    assert_views_leak(run_and_record(3.7), run_and_record(-3.7))


def test_broken_variant_with_unmasked_truncation_is_detected(monkeypatch):
    """The two-round truncation (used for large tensors), with P0's message to P2 left unmasked."""
    monkeypatch.setattr(resharing, "ONE_ROUND_TRUNC_MAX_SIZE", 0)
    original = runtime.OpContext.reshare

    def leaky_reshare(self, z, label, trunc_bits=0):
        if trunc_bits == 0 or self.i != 0:
            return original(self, z, label, trunc_bits)
        # P0 forgets to mask y0 with y1 (drawn from a key P2 does not hold) before sending it to P2.
        high = runtime.shift_right_logical(runtime.radd(z, self.recv(1, f"{label}/t1")), trunc_bits)
        self.send(2, f"{label}/t2", high)
        return high, np.zeros_like(high)

    def leaky_party_side(self, z, label, trunc_bits=0):
        if trunc_bits and self.i == 1:
            z2 = self.recv(2, f"{label}/t1")
            y2 = runtime.rneg(runtime.shift_right_logical(runtime.rneg(z2), trunc_bits))
            self.send(0, f"{label}/t1", z)
            return np.zeros_like(y2), y2
        return leaky_reshare(self, z, label, trunc_bits)

    monkeypatch.setattr(runtime.OpContext, "reshare", leaky_party_side)
    assert_views_leak(run_and_record(3.7), run_and_record(-3.7))


def test_both_truncation_protocols_are_checked():
    """N is small enough for the one-round truncation; the two-round one is checked on the same computation."""
    assert N <= resharing.ONE_ROUND_TRUNC_MAX_SIZE


def test_views_are_independent_with_the_two_round_truncation(monkeypatch):
    monkeypatch.setattr(resharing, "ONE_ROUND_TRUNC_MAX_SIZE", 0)
    assert_views_independent(run_and_record(3.7), run_and_record(-3.7))


def test_broken_one_round_truncation_is_detected(monkeypatch):
    """P0's correction left unmasked by y1 (from key k1, which P2 lacks): P2's pair then sums to x >> d."""
    original = runtime.OpContext._reshare_truncate_one_round

    def leaky(self, z, label, d, shape):
        if self.i != 0:
            return original(self, z, label, d, shape)
        r = runtime.radd(self.prg(0, f"{label}/r0", shape), self.prg(1, f"{label}/r1", shape))
        y0, y1 = self.prg(0, f"{label}/y0", shape), self.prg(1, f"{label}/y1", shape)
        corr = runtime.rsub(runtime.shift_right_logical(r, d), y0)  # forgot "- y1"
        both = np.stack([z, corr])
        self.send(1, f"{label}/c0", both)
        self.send(2, f"{label}/c0", both)
        return y0, np.zeros_like(y1)

    monkeypatch.setattr(runtime.OpContext, "_reshare_truncate_one_round", leaky)
    assert_views_leak(run_and_record(3.7), run_and_record(-3.7))


def _ot_view(monkeypatch=None):
    """What the receiver of bit_times' first oblivious transfer (role R1) gets, and the value it must not learn.

    Returns (d, u): d = the difference of the two messages R0 sent it; u = v'_0 + v'_1, R0's sum of shares of
    the ReLU's input.  With R0's masks d is uniform; without them d = +-u, and R1 (which holds v'_2) would learn
    the input."""
    prot = mpc.ABY3()
    received = {}
    for party in prot.backend.parties:
        inner_recv = party.channel.recv

        def recv(frm, tag, timeout=None, _inner=inner_recv, _index=party.index):
            array = _inner(frm, tag, timeout)
            received[(_index, tag.rsplit("/", 2)[-2:][0], tag.rsplit("/", 1)[-1])] = np.asarray(array)
            return array

        party.channel.recv = recv
    try:
        values = np.linspace(-5, 5, N)
        x = prot.share(values)
        mpc.relu(x)
        rot = N % 3
        r1 = (rot + 1) % 3
        pair = received[(r1, "sel", "a")]
        d = runtime.rsub(pair[1], pair[0])
        encoded = ops.fixed_point_encode(values).numpy()
        u = runtime.rsub(encoded, prot.backend.parties[r1].store[x.id].b)  # x - v'_2
        return d, u
    finally:
        prot.close()


def test_bit_injection_hides_the_unchosen_message():
    d, u = _ot_view()
    assert not np.any(d == u) and not np.any(d == runtime.rneg(u))


def test_broken_bit_injection_without_masks_is_detected(monkeypatch):
    original = runtime.OpContext.prg

    def no_masks(self, key, label, shape):
        if "/a/w" in label:  # R0's masks of the first transfer (sender and helper draw them alike)
            return np.zeros(shape, np.uint64)
        return original(self, key, label, shape)

    monkeypatch.setattr(runtime.OpContext, "prg", no_masks)
    d, u = _ot_view()
    assert np.all((d == u) | (d == runtime.rneg(u)))


# --- The function-secret-sharing ReLU (tensors of up to fss.FSS_RELU_MAX_SIZE elements) -----------------
# P0 deals DCF keys and receives nothing; P1 and P2 see the opened c = x + r, one key, the other evaluator's
# masked term and masked output share.  The dealer's message is [c-part, (P2: its share of r >> d), keys]: its
# keys enter the view as a few columns of correction words (a level's seed and payload corrections, the
# control-bit masks, the final correction).
_KEY_COLUMNS = [0, 1, 2, 3, 252, 255, 256, 257, 258, 259]


def _fss_views(secret: float, monkeypatch):
    monkeypatch.setattr(fss, "FSS_RELU_MAX_SIZE", N)
    prot = mpc.ABY3()
    received = {i: [] for i in range(3)}
    try:
        for party in prot.backend.parties:
            inner_recv = party.channel.recv

            def recv(frm, tag, timeout=None, _inner=inner_recv, _index=party.index):
                array = np.asarray(_inner(frm, tag, timeout), dtype=np.uint64).reshape(-1)
                if tag.endswith("/fss/d"):
                    head = array.size - ops.dcf_key_words() * N
                    keys = array[head:].reshape(N, ops.dcf_key_words())
                    received[_index] += list(array[:head].reshape(-1, N)) + [keys[:, k] for k in _KEY_COLUMNS]
                else:
                    received[_index] += list(array.reshape(-1, N))
                return array

            party.channel.recv = recv
        opened = {}
        inner_eval = ops.dcf_eval_numpy

        def evaluate(party, seed, cw, x, bits=64):
            opened[party + 1] = np.array(x[:, 1])  # the evaluator's c
            return inner_eval(party, seed, cw, x, bits)

        monkeypatch.setattr(ops, "dcf_eval_numpy", evaluate)
        x = prot.share(np.full(N, secret))
        u = mpc.relu(x)
        views = []
        for index, party in enumerate(prot.backend.parties):
            held = []
            for tensor in (x, u):
                share = party.store[tensor.id]
                held += [np.asarray(share.a).reshape(-1), np.asarray(share.b).reshape(-1)]
            views.append(held + received[index] + ([opened[index]] if index in opened else []))
        assert not received[0] and len(opened) == 2, "P0 must receive nothing; P1 and P2 evaluate"
        return views
    finally:
        prot.close()


def test_fss_relu_views_are_independent_of_the_secret(monkeypatch):
    assert_views_independent(_fss_views(3.7, monkeypatch), _fss_views(-3.7, monkeypatch))


@pytest.mark.parametrize("label", ["fss/r", "fss/y"])
def test_broken_fss_relu_is_detected(monkeypatch, label):
    """Without P0's mask r the opened c is x itself; without the round-2 masks y0, y1 the evaluators' output
    shares travel in the clear, and either evaluator adds them up to ReLU(x)."""
    original = runtime.OpContext.prg

    def unmasked(self, key, name, shape):
        if name.rstrip("01").endswith(label):  # "fss/r"; "fss/y0" and "fss/y1"
            return np.zeros(shape, np.uint64)
        return original(self, key, name, shape)

    monkeypatch.setattr(runtime.OpContext, "prg", unmasked)
    assert_views_leak(_fss_views(3.7, monkeypatch), _fss_views(-3.7, monkeypatch))
