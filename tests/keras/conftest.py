"""Fixtures: an in-process protocol and a three-process cluster for the Keras serving tests."""

import pytest

import tfppml.mpc as mpc


@pytest.fixture(scope="module")
def inprocess():
    prot = mpc.ABY3()
    yield prot
    prot.close()


@pytest.fixture(scope="module")
def cluster():
    from tfppml.net.cluster import Cluster, Worker

    with Cluster(*(Worker("127.0.0.1:0") for _ in range(3)), service="mpc", timeout=60,
                 identities=("driver", "model_owner", "client", "other_client")) as running:
        yield running
