"""The data-owner worker started from the command line as the issue shows it:
`tfppml worker --name hospital --data data.npz --policy policy.yaml --port N` (plus --config for TLS)."""

import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

import tfppml.remote
from tfppml.errors import PolicyDenied
from tfppml.net.certs import generate_certificates
from tfppml.net.config import ClusterConfig

from .conftest import make_data, write_setup


def test_cli_worker_with_data_policy_and_port(tmp_path):
    options = write_setup(tmp_path / "owner")
    certs = tmp_path / "certs"
    generate_certificates(certs, ["hospital", "analyst"])
    config_path = ClusterConfig(parties={"hospital": "127.0.0.1:1"}, cert_dir=certs).save(tmp_path / "cluster.json")
    port = portpicker.pick_unused_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tfppml.cli", "worker", "--name", "hospital", "--config", str(config_path),
         "--data", options["data"], "--policy", options["policy"], "--audit", options["audit"],
         "--audit-key", options["audit_key"], "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "TFPPML-READY" not in line:
            line = worker.stdout.readline()
            if not line and worker.poll() is not None:
                pytest.fail(f"worker exited: {worker.stderr.read()[-2000:]}")
        assert f"port={port}" in line
        ClusterConfig(parties={"hospital": f"127.0.0.1:{port}"}, cert_dir=certs).save(config_path)
        remote = tfppml.remote.connect(str(config_path), worker="hospital", identity="analyst")
        patients = remote.dataset("patients")
        np.testing.assert_allclose(patients.mean().get(), make_data()["patients"].mean(), rtol=1e-6)
        with pytest.raises(PolicyDenied, match="raw_read"):
            patients.get()
        remote.close()
    finally:
        worker.terminate()
        worker.wait(30)
    assert (tmp_path / "owner" / "logs" / "audit.log").read_text().count("\n") >= 3
