"""Fixtures of the network tests: certificates, loopback configs and in-process worker servers.

Only 127.0.0.1 is ever used. In-process servers (real gRPC with mutual TLS, in this process) cover the fine
semantics quickly; tests/net/test_cluster.py starts real worker processes.
"""

import os
from pathlib import Path

import portpicker
import pytest

from tfppml.net.certs import generate_certificates, party_names
from tfppml.net.config import ClusterConfig
from tfppml.net.server import WorkerServer

PARTIES = party_names(3)
DRIVERS = ["driver", "model_owner"]


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    generate_certificates(directory, PARTIES + DRIVERS)
    return directory


@pytest.fixture(scope="session")
def foreign_cert_dir(tmp_path_factory) -> Path:
    """Same identity names, signed by another CA."""
    directory = tmp_path_factory.mktemp("foreign-certs")
    generate_certificates(directory, PARTIES + DRIVERS)
    return directory


def loopback_config(cert_dir, *, timeout=2.0, max_message_bytes=4 * 1024 * 1024) -> ClusterConfig:
    parties = {name: f"127.0.0.1:{portpicker.pick_unused_port()}" for name in PARTIES}
    return ClusterConfig(
        parties=parties, cert_dir=cert_dir, timeout=timeout, max_message_bytes=max_message_bytes
    )


@pytest.fixture
def servers(cert_dir):
    """Three in-process echo workers on loopback (timeout 2 s, 4 MiB messages)."""
    config = loopback_config(cert_dir)
    started = [WorkerServer(name, config, "echo") for name in config.parties]
    for server in started:
        server.start()
    yield {server.name: server for server in started}
    for server in started:
        server.stop(grace=0)


def process_alive(pid: int) -> bool:
    """True if `pid` runs (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. a cluster's temporary directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read() and process_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found
