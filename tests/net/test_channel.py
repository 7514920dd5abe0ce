"""Channel semantics, the same for LocalChannel (in-process queues) and PeerChannel (gRPC + mutual TLS).

Each test runs on both: `channels` gives name -> channel for three parties with a 2 s default timeout, plus a
`kill(name)` that makes a party dead (closing a local channel, stopping an in-process worker server).
"""

import threading
import time

import numpy as np
import pytest

from tfppml.errors import PartyUnavailableError, ProtocolError
from tfppml.net.channel import Channel, PeerChannel
from tfppml.net.local import LocalChannel, make_local_channels


class Parties:
    def __init__(self, channels, kill):
        self.channels = channels
        self.kill = kill

    def __getitem__(self, name):
        return self.channels[name]


@pytest.fixture(params=["local", "grpc"])
def parties(request):
    if request.param == "local":
        channels = make_local_channels(["server0", "server1", "server2"], timeout=2.0)
        return Parties(channels, lambda name: channels[name].close())
    servers = request.getfixturevalue("servers")
    return Parties({name: s.channel for name, s in servers.items()}, lambda name: servers[name].stop(grace=0))


def test_both_implement_the_protocol(parties):
    channel = parties["server0"]
    assert isinstance(channel, Channel)
    assert isinstance(channel, (LocalChannel, PeerChannel))
    assert channel.name == "server0"
    assert channel.parties == ("server0", "server1", "server2")


@pytest.mark.parametrize("dtype", ["uint64", "int64", "int32", "float32", "float64", "uint8", "bool"])
def test_send_recv_round_trip(parties, dtype):
    array = (np.arange(12) % 2 if dtype == "bool" else np.arange(12)).astype(dtype).reshape(3, 4)
    parties["server0"].send("server1", "t", array)
    got = parties["server1"].recv("server0", "t")
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
    with pytest.raises(ValueError, match="read-only"):  # received arrays are read-only in both back ends
        got[0, 0] = 1
    assert array.flags.writeable


def test_sender_cannot_change_a_sent_array(parties):
    array = np.arange(4, dtype=np.uint64)
    parties["server0"].send("server1", "t", array)
    array[:] = 99
    np.testing.assert_array_equal(parties["server1"].recv("server0", "t"), np.arange(4))


def test_tags_and_senders_are_exact(parties):
    s0, s1, s2 = parties["server0"], parties["server1"], parties["server2"]
    s0.send("server2", "a", np.array([0], np.int64))
    s1.send("server2", "a", np.array([1], np.int64))
    s0.send("server2", "b", np.array([2], np.int64))
    # Out of order, by (sender, tag) only.
    assert s2.recv("server0", "b")[0] == 2
    assert s2.recv("server1", "a")[0] == 1
    assert s2.recv("server0", "a")[0] == 0
    with pytest.raises(PartyUnavailableError):
        s2.recv("server0", "A", timeout=0.2)  # tags are case-sensitive, never "close enough"


def test_duplicate_tag_is_a_protocol_error(parties):
    s0, s1 = parties["server0"], parties["server1"]
    s0.send("server1", "dup", np.zeros(2))
    # The local channel's mailbox says "still waiting" / "already received"; a network sender, which does not
    # wait for the peer, refuses the tag it already sent before it travels.
    with pytest.raises(ProtocolError, match="duplicate message.*'dup'.*(still waiting|already sent)"):
        s0.send("server1", "dup", np.zeros(2))
    s1.recv("server0", "dup")
    with pytest.raises(ProtocolError, match="duplicate message.*'dup'.*(already received|already sent)"):
        s0.send("server1", "dup", np.zeros(2))
    with pytest.raises(ProtocolError, match="already received"):
        s1.recv("server0", "dup", timeout=0.2)
    # The same tag from another sender is a different message.
    parties["server2"].send("server1", "dup", np.ones(2))
    np.testing.assert_array_equal(s1.recv("server2", "dup"), np.ones(2))


def test_recv_timeout_names_peer_and_tag(parties):
    start = time.monotonic()
    with pytest.raises(
        PartyUnavailableError, match=r"'server1' waited 0.3 s for message 'never' from 'server2'"
    ):
        parties["server1"].recv("server2", "never", timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2.0


def test_recv_default_timeout_comes_from_config(parties):
    start = time.monotonic()
    with pytest.raises(PartyUnavailableError, match="waited 2 s"):
        parties["server1"].recv("server0", "never")
    assert 1.9 < time.monotonic() - start < 4.0


def test_recv_waits_for_a_late_message(parties):
    def later():
        time.sleep(0.3)
        parties["server0"].send("server1", "late", np.array([7], np.uint64))

    thread = threading.Thread(target=later)
    thread.start()
    assert parties["server1"].recv("server0", "late")[0] == 7
    thread.join()


def test_two_receivers_for_one_message_are_refused(parties):
    thread = threading.Thread(target=lambda: parties["server1"].recv("server0", "x", timeout=1.0))
    thread.start()
    time.sleep(0.2)
    with pytest.raises(ProtocolError, match="two receivers"):
        parties["server1"].recv("server0", "x", timeout=0.5)
    parties["server0"].send("server1", "x", np.zeros(1))
    thread.join()


def test_exchange_in_a_ring_does_not_deadlock(parties):
    names = ["server0", "server1", "server2"]
    results = {}

    def step(index):
        me, nxt, prev = names[index], names[(index + 1) % 3], names[index - 1]
        parties[me].send(nxt, "ring", np.full(1000, index, np.uint64))
        results[me] = parties[me].recv(prev, "ring")[0]

    threads = [threading.Thread(target=step, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert results == {"server0": 2, "server1": 0, "server2": 1}


def test_send_to_dead_peer_fails_fast(parties):
    parties.kill("server2")
    start = time.monotonic()
    with pytest.raises(PartyUnavailableError, match=r"'server2'.*unavailable for message 'x'"):
        parties["server0"].send("server2", "x", np.zeros(3))
    assert time.monotonic() - start < 1.0


def test_recv_from_dead_peer_times_out(parties):
    parties.kill("server2")
    with pytest.raises(PartyUnavailableError, match="'server2'"):
        parties["server0"].recv("server2", "x", timeout=0.3)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda c: c.send("server0", "t", np.zeros(1)), ValueError, "this party itself"),
        (
            lambda c: c.send("nobody", "t", np.zeros(1)),
            ValueError,
            r"`to` must be one of the peers \['server1', 'server2'\]",
        ),
        (lambda c: c.send("server1", "", np.zeros(1)), ValueError, "`tag`"),
        (lambda c: c.send("server1", "t" * 600, np.zeros(1)), ValueError, "`tag`"),
        (lambda c: c.send("server1", 3, np.zeros(1)), TypeError, "`tag` must be a str"),
        (lambda c: c.send("server1", "t", [1, 2]), TypeError, "`array` must be a numpy.ndarray"),
        (lambda c: c.send("server1", "t", np.zeros(1, np.complex64)), TypeError, "dtype complex64"),
        (lambda c: c.recv("server9", "t"), ValueError, "`frm` must be one of the peers"),
        (lambda c: c.recv("server1", "t", timeout=0), ValueError, "`timeout`"),
        (lambda c: c.recv("server1", "t", timeout=float("inf")), ValueError, "`timeout`"),
    ],
)
def test_argument_errors(parties, call, error, match):
    with pytest.raises(error, match=match):
        call(parties["server0"])


def test_numpy_scalars_travel_as_0d_arrays(parties):
    parties["server0"].send("server1", "s", np.uint64(5))
    got = parties["server1"].recv("server0", "s")
    assert got.shape == () and got.dtype == np.uint64 and got == 5


def test_make_local_channels_arguments():
    with pytest.raises(ValueError, match="at least two"):
        make_local_channels(["a"])
    with pytest.raises(ValueError, match="repeats"):
        make_local_channels(["a", "a"])
    with pytest.raises(ValueError, match="names\\[1\\]"):
        make_local_channels(["a", "b c"])


def test_peer_channel_refuses_oversize_before_sending(servers):
    big = np.zeros(5 * 1024 * 1024 // 8, np.uint64)  # the fixture's limit is 4 MiB
    with pytest.raises(ValueError, match="max_message_bytes"):
        servers["server0"].channel.send("server1", "big", big)


def test_discard_pending_drops_leftovers_of_a_failed_run(parties):
    s0, s1 = parties["server0"], parties["server1"]
    for tag in ["run1/a", "run1/b", "run2/a"]:
        s0.send("server1", tag, np.zeros(2))
    # Messages from one peer arrive in order: once run2/a is here, so are the two of run1.
    np.testing.assert_array_equal(s1.recv("server0", "run2/a"), np.zeros(2))
    assert s1.discard_pending("run1/") == 2
    with pytest.raises(ProtocolError, match="already received"):
        s1.recv("server0", "run1/a", timeout=0.2)
    assert s1.discard_pending() == 0


def test_cancelling_a_scope_wakes_its_receivers_here_and_at_the_peers(parties):
    from tfppml.errors import QueryCancelled

    a, b, c = parties["server0"], parties["server1"], parties["server2"]
    errors = {}

    def wait(channel, frm, name):
        start = time.monotonic()
        try:
            channel.recv(frm, "run7|round1", timeout=10)
        except Exception as err:  # noqa: BLE001 - inspected below
            errors[name] = (err, time.monotonic() - start)

    waiters = [threading.Thread(target=wait, args=(b, "server2", "b")), threading.Thread(target=wait, args=(c, "server1", "c"))]
    for t in waiters:
        t.start()
    time.sleep(0.2)
    a.cancel("run7", "server0 failed it")
    for t in waiters:
        t.join(5)
    assert set(errors) == {"b", "c"}
    for err, seconds in errors.values():
        assert isinstance(err, QueryCancelled) and "server0" in str(err) and seconds < 3
    # Late messages of the scope are dropped where they arrive; later receives fail at once; other scopes work.
    b.send("server2", "run7|round2", np.ones(2))
    with pytest.raises(QueryCancelled):
        c.recv("server1", "run7|round2", timeout=1)
    b.send("server2", "run8|round1", np.ones(2))
    np.testing.assert_array_equal(c.recv("server1", "run8|round1", timeout=2), np.ones(2))
    a.cancel("run7", "again")  # once per scope: nothing more is sent


def test_a_cancelled_scope_drops_what_was_waiting():
    from tfppml.net.mailbox import Mailbox

    box = Mailbox("server1")
    box.put("server0", "s|x", np.ones(1))
    box.put("server0", "t|x", np.ones(1))
    assert box.cancel("s", "test") and not box.cancel("s", "again")
    assert box.pending == 1
    box.put("server0", "s|y", np.ones(1))  # dropped
    assert box.pending == 1
    box.put("server2", "t|!cancel", np.zeros(0, np.uint64))  # a peer cancels t
    assert box.pending == 0
