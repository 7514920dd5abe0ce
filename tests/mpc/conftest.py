"""Protocol fixtures: the same tests run on the in-process back end and on three real server processes."""

import numpy as np
import pytest

import tfppml.mpc as mpc

RES = 2.0**-16  # one unit in the last place at the default 16 fractional bits


@pytest.fixture(scope="session")
def inprocess():
    prot = mpc.ABY3()
    yield prot
    prot.close()


@pytest.fixture(scope="session")
def cluster():
    """Three real server processes on loopback, talking gRPC with mutual TLS."""
    from tfppml.net.cluster import Cluster, Worker

    with Cluster(*(Worker("127.0.0.1:0") for _ in range(3)), service="mpc", timeout=60) as running:
        yield running


@pytest.fixture(scope="session")
def networked(cluster):
    prot = mpc.ABY3(cluster)
    yield prot
    prot.close()


@pytest.fixture(scope="session", params=["inprocess", "networked"])
def prot(request):
    """Each test using this fixture runs on both back ends."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def rng(request):
    # A fixed seed per test keeps failures reproducible.
    return np.random.default_rng(abs(hash(request.node.nodeid)) % 2**32)


def product_tolerance(x, y, k=1):
    """Bound on |secure - exact| for a sum of k products of fixed-point inputs (16 fractional bits):
    each input is rounded by at most 2**-17, the truncation adds at most 2**-16 (see tfppml.mpc.protocol)."""
    return k * (np.max(np.abs(x)) + np.max(np.abs(y)) + 1) * RES / 2 + 2 * RES
