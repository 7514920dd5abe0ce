"""The networked back end's failure behaviour: a dead or silent server makes the driver fail fast."""

import time

import numpy as np
import pytest

import tfppml.mpc as mpc
from tfppml.errors import PartyUnavailableError, ProtocolError
from tfppml.net.cluster import Cluster, Worker

TIMEOUT = 3.0


def test_a_dead_server_fails_the_computation_within_the_timeout():
    with Cluster(*(Worker("127.0.0.1:0") for _ in range(3)), service="mpc", timeout=TIMEOUT) as cluster:
        prot = mpc.ABY3(cluster)
        x = prot.share(np.ones((4, 4)))
        np.testing.assert_allclose(prot.reveal(x * x), np.ones((4, 4)), atol=1e-4)
        cluster.processes["server2"].kill()
        cluster.processes["server2"].wait()
        start = time.monotonic()
        with pytest.raises((PartyUnavailableError, ProtocolError)) as info:
            prot.reveal(mpc.relu(x))
        elapsed = time.monotonic() - start
        assert elapsed < 3 * TIMEOUT + 5, f"took {elapsed:.1f} s to notice a dead server"
        assert "server2" in str(info.value)
        prot.close()


def test_a_driver_without_a_cluster_certificate_is_refused(tmp_path):
    from tfppml.net.certs import Identity, generate_certificates

    with Cluster(*(Worker("127.0.0.1:0") for _ in range(3)), service="mpc", timeout=TIMEOUT) as cluster:
        generate_certificates(tmp_path, ["driver"])  # the same name, signed by another CA
        genuine = cluster.identity("driver")
        forged = Identity.load(tmp_path, "driver")
        # Trusting the cluster's CA does not help a key and certificate the cluster's CA did not sign.
        stranger = cluster.remote("server0", Identity("driver", forged.key_pem, forged.cert_pem, genuine.ca_pem))
        with pytest.raises((PartyUnavailableError, ProtocolError)):
            stranger.call({"op": "setup", "op_id": "x.op0", "args": {}}, {})
        stranger.close()
        # The genuine driver still works.
        prot = mpc.ABY3(cluster)
        np.testing.assert_allclose(prot.reveal(prot.share(np.ones(2)) * 2.0), [2.0, 2.0], atol=1e-4)
        prot.close()
