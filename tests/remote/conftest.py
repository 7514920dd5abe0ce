"""Fixtures of the remote-execution tests: a data file, a policy and one real "remote" worker on loopback.

The worker process (`tfppml worker --service remote`, started by `tfppml.net.cluster.Cluster`) is shared by the
whole tests/remote session: starting one costs several seconds.
"""

from pathlib import Path

import numpy as np
import pytest
import yaml

from tfppml.net.cluster import Cluster, Worker
from tfppml.remote.audit import generate_key

IDENTITIES = ("analyst", "driver", "stranger", "limited", "nobody", "careful")
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_OBJECT_BYTES = 4 * 1024 * 1024

POLICY = {
    "datasets": {name: {"dp": {"epsilon_budget": 4.0, "delta": 1.0e-5}} for name in ("patients", "labels", "tiny")},
    "identities": {
        "analyst": {
            "datasets": ["patients", "labels", "tiny"],
            "raw_read": [],
            "unsafe_aggregates": {"min_rows": 10},
            "dp": {"epsilon_budget": 2.0, "delta": 1.0e-5},
            "unsafe_weights": True,
        },
        "driver": {"datasets": ["patients"], "raw_read": ["patients"]},
        "limited": {"datasets": ["patients"], "rate_limit": {"requests": 4, "per_seconds": 600}},
        "stranger": {},
        # The rules an owner gets without the unsafe_ opt-ins: DP releases only.
        "careful": {"datasets": ["patients"], "dp": {"epsilon_budget": 1.0, "delta": 1.0e-5}},
    }
}


def make_data(seed: int = 7) -> dict[str, np.ndarray]:
    """Patients with distinctive values (ages 20-89 plus a fraction), so a leak would be recognisable."""
    rng = np.random.default_rng(seed)
    patients = np.round(rng.uniform(20, 90, size=(200, 4)), 3) + 0.123
    labels = (patients @ np.array([[0.5], [-0.25], [0.1], [0.05]]) + 3.0).astype(np.float32)
    tiny = rng.uniform(0, 1, size=(5, 2))
    return {"patients": patients, "labels": labels, "tiny": tiny}


def write_setup(directory: Path, policy: dict = POLICY) -> dict[str, str]:
    """Writes data.npz, policy.yaml and an audit key into `directory` (the log in logs/, the key in keys/);
    returns the worker's service options."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "data.npz", **make_data())
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy))
    key = directory / "keys" / "audit.key"
    if not key.exists():
        generate_key(key)
    return {
        "data": str(directory / "data.npz"),
        "policy": str(directory / "policy.yaml"),
        "audit": str(directory / "logs" / "audit.log"),
        "audit_key": str(key),
        "max_object_bytes": str(MAX_OBJECT_BYTES),
    }


def make_hospital(options: dict[str, str], cert_dir=None) -> Cluster:
    """One "remote" worker named hospital on 127.0.0.1 (a real process, started by `.start()` or `with`)."""
    return Cluster(
        Worker("127.0.0.1:0", name="hospital"),
        service="remote",
        service_options=options,
        identities=IDENTITIES,
        max_message_bytes=MAX_MESSAGE_BYTES,
        timeout=60.0,
        cert_dir=cert_dir,
    )


@pytest.fixture(scope="session")
def hospital(tmp_path_factory):
    """(cluster, options) of the shared hospital worker."""
    options = write_setup(tmp_path_factory.mktemp("hospital"))
    cluster = make_hospital(options).start()
    yield cluster, options
    cluster.stop()


@pytest.fixture(scope="session")
def data() -> dict[str, np.ndarray]:
    return make_data()
