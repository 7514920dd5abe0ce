"""A hostile secure-aggregation server that asks the survivors to unmask twice (issue #17, point 6).

The attack: after every client sent its masked input, the server asks once with "client 0 survived" (and gets
the shares of client 0's self-mask seed b_0) and once with "client 0 dropped" (and gets the shares of its mask
key s_0).  With both it strips every mask from y_0 and reads client 0's update.  The control runs it against a
client weakened to forget the request it answered, and recovers the update exactly; the real client answers
the unmasking round once per aggregation and refuses the second, different request.  The remaining tests
check the other refusals of a malformed request and that honest rounds (and retries) still work.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tfppml.errors import ProtocolError
from tfppml.federated import secure_agg as sa

N, T, SIZE, FRAC = 5, 3, 64, 16


class ForgetfulClient(sa.SecAggClient):
    """Deliberately weakened: keeps no record of the unmasking request it answered (#17 point 6's bug)."""

    def _claim_unmask_request(self, request, answer) -> None:
        pass


def _updates(seed: int = 0) -> list[np.ndarray]:
    """Updates on the fixed-point grid, so a recovered update equals the original exactly."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-(2**FRAC), 2**FRAC + 1, SIZE) / 2.0**FRAC for _ in range(N)]


def _round(client_cls=sa.SecAggClient, sharing=range(N)):
    """Rounds 0-2 with `client_cls`: every client advertises keys, those in `sharing` share keys and send
    a masked input.  Returns (clients, server, masked inputs, updates)."""
    cfg = sa.SecAggConfig(N, T, SIZE, frac_bits=FRAC, round_id=7)
    clients = [client_cls(i, cfg) for i in range(N)]
    server = sa.SecAggServer(cfg)
    roster = server.collect_keys([c.advertise_keys() for c in clients])
    inbox = server.route_shares({i: clients[i].share_keys(roster) for i in sharing})
    for i in sharing:
        clients[i].receive_shares(inbox[i])
    updates = _updates()
    masked = {i: clients[i].masked_input(updates[i], server.senders) for i in sharing}
    server.collect_masked(masked)
    return clients, server, masked, updates


def _rebuild(answers, field: str, client: int) -> bytes:
    points = [getattr(a, field)[client] for a in answers if client in getattr(a, field)][:T]
    assert len(points) == T, f"the hostile server got only {len(points)} shares of {field}[{client}]"
    return sa.chunks_to_bytes(sa.chunk_reconstruct([x for x, _ in points], np.stack([y for _, y in points])))


def _strip_masks(server: sa.SecAggServer, y0: np.ndarray, b0: bytes, s0: bytes) -> np.ndarray:
    """What the hostile server computes with both secrets of client 0: its update, decoded."""
    cfg = server.config
    s_key = sa.X25519PrivateKey.from_private_bytes(s0)
    q = y0 - sa._expand(b0, SIZE)
    for v in cfg.neighbours_of(0):
        key = sa._pair_mask_key(s_key, server._roster[v].mask_public, cfg.round_id, 0, v)
        q = q - sa._signed_pair_mask(0, v, sa._expand(key, SIZE))
    return sa.dequantize(q, FRAC)


def _double_unmask(clients):
    """The hostile server's two contradicting requests; returns (first answers, second answers)."""
    everyone = list(range(N))
    first = [c.unmasking_shares(everyone, []) for c in clients]  # "client 0 survived": shares of b_0
    second = [c.unmasking_shares(everyone[1:], [0]) for c in clients[1:]]  # "client 0 dropped": shares of s_0
    return first, second


def test_control_double_unmasking_recovers_client0_update_from_a_forgetful_client():
    clients, server, masked, updates = _round(ForgetfulClient)
    first, second = _double_unmask(clients)
    recovered = _strip_masks(
        server, masked[0], _rebuild(first, "self_seed_shares", 0), _rebuild(second, "mask_key_shares", 0)
    )
    np.testing.assert_array_equal(recovered, updates[0])  # the attack is real: every entry, exactly


def test_real_client_refuses_a_second_different_unmasking_request():
    clients, server, masked, updates = _round()
    everyone = list(range(N))
    first = [c.unmasking_shares(everyone, []) for c in clients]
    for c in clients[1:]:
        with pytest.raises(ProtocolError, match=rf"client {c.id}: refusing a second, different unmasking"):
            c.unmasking_shares(everyone[1:], [0])
    # The honest answer to the first request still unmasks the sum.
    expected = sum(sa.quantize(u, 1.0, FRAC).view(np.int64) for u in updates)
    np.testing.assert_array_equal(server.unmask(first).view(np.int64), expected)


def test_split_views_get_fewer_than_threshold_shares_of_the_second_secret():
    # Telling disjoint groups of real clients different stories: the majority threshold leaves one short.
    clients, _, _, _ = _round()
    told_survived = [c.unmasking_shares(range(N), []) for c in clients[:T]]
    told_dropped = [c.unmasking_shares(range(1, N), [0]) for c in clients[T:]]
    assert sum(0 in a.self_seed_shares for a in told_survived) == T
    assert sum(0 in a.mask_key_shares for a in told_dropped) == N - T < T
    for c in clients:  # and nobody answers the other story afterwards
        other = ([0, 1, 2, 3, 4], []) if c.id >= T else ([1, 2, 3, 4], [0])
        with pytest.raises(ProtocolError, match="second, different unmasking request"):
            c.unmasking_shares(*other)


def test_identical_retry_gets_the_same_answer():
    clients, _, _, _ = _round()
    answer = clients[1].unmasking_shares([0, 1, 2, 3, 4], [])
    assert clients[1].unmasking_shares([4, 3, 2, 1, 0, 0], ()) is answer  # order and duplicates ignored
    assert clients[1].unmasking_shares(np.arange(N), []) is answer
    for _, chunks in answer.self_seed_shares.values():
        assert not chunks.flags.writeable  # a caller cannot alter the recorded answer


def test_concurrent_contradicting_requests_get_one_answer():
    clients, _, _, _ = _round()
    target = clients[2]
    results = []
    barrier = threading.Barrier(2)

    def ask(surv, drop):
        barrier.wait()
        try:
            results.append(target.unmasking_shares(surv, drop))
        except ProtocolError as err:
            results.append(err)

    threads = [threading.Thread(target=ask, args=a) for a in ((range(N), []), ([1, 2, 3, 4], [0]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(r).__name__ for r in results) == ["ProtocolError", "UnmaskingShares"]


@pytest.mark.parametrize(
    "survivors,dropped,match",
    [
        ([0, 1, 2, 3, 4], [0], r"both as survivors and as dropped \(the survivors and dropped arguments"),
        ([0, 1, 2, 3, 7], [], r"survivors must hold client ids, ints in \[0, 5\), got \[7\]"),
        ([0, 1, 2, 3], [-1], r"dropped must hold client ids, ints in \[0, 5\), got \[-1\]"),
        ([0, 1, 2, 3, "4"], [], r"survivors must hold client ids"),
        ([0, 1, 2, True], [], r"survivors must hold client ids"),
        ([0, 1, 2, 3, 4.0], [], r"survivors must hold client ids"),
        (5, [], r"survivors must be a sequence of client ids, got int"),
        ([0, 1, 2, 3], [], r"dropped must be U2 minus survivors, but clients \[4\] of U2 are in neither"),
        ([0, 2, 3, 4], [1], r"client 1: .* this client sent its masked input but is listed in dropped"),
        ([0, 2, 3, 4], [], r"client 1: .* this client sent its masked input but is missing from survivors"),
        ([1, 2], [0, 3, 4], r"only 2 survivors among .* \(in the survivors argument\), below the threshold 3"),
    ],
)
def test_malformed_requests_are_refused_naming_the_argument(survivors, dropped, match):
    clients, _, _, _ = _round()
    with pytest.raises(ProtocolError, match=match):
        clients[1].unmasking_shares(survivors, dropped)
    # A refused request reveals nothing and uses up nothing: the honest request is still answered.
    answer = clients[1].unmasking_shares(range(N), [])
    assert sorted(answer.self_seed_shares) == list(range(N)) and not answer.mask_key_shares


@pytest.mark.parametrize("field", ["survivors", "dropped"])
def test_ids_outside_u2_are_refused(field):
    # Client 4 advertised keys but never shared them: it is not in U2, so no request may name it.
    clients, server, _, _ = _round(sharing=range(4))
    assert server.senders == [0, 1, 2, 3]
    survivors, dropped = ([0, 1, 2, 3, 4], []) if field == "survivors" else ([0, 1, 2, 3], [4])
    with pytest.raises(ProtocolError, match=rf"{field} lists clients \[4\] that are not in U2"):
        clients[1].unmasking_shares(survivors, dropped)


def test_unmasking_before_sending_an_input_is_refused():
    cfg = sa.SecAggConfig(3, 2, 4)
    client = sa.SecAggClient(0, cfg)
    with pytest.raises(ProtocolError, match="asked to unmask before sending its masked input"):
        client.unmasking_shares([0, 1, 2], [])


def test_honest_rounds_with_dropouts_still_decode():
    updates = _updates(1)
    ints = [np.rint(u * 2**FRAC).astype(np.int64) for u in updates]
    ring = sa.secure_sum(updates, T, dropouts=[4], early_dropouts=[3], frac_bits=FRAC, return_ring=True)
    np.testing.assert_array_equal(ring.view(np.int64), ints[0] + ints[1] + ints[2] + ints[4])
    ring = sa.secure_sum(updates * 2, 4, neighbours=4, early_dropouts=[9], frac_bits=FRAC, return_ring=True)
    np.testing.assert_array_equal(ring.view(np.int64), sum(ints * 2) - ints[4])
