"""DP-SGD under tf.distribute (issue #19, item 1): with MirroredStrategy on two devices the update's noise had
2.83x the stated standard deviation (each replica added the whole noise for its half batch) and examples were
clipped at twice the clip norm (Keras divides the compiled loss by the replica count).

Each setting runs in processes of its own (tests/dp/distributed_step.py): devices and clusters must be set
before TensorFlow starts. Noise 1, clip 1, global batch 64: the update's noise must have stddev 1/64 and the
clean update must equal the one-device update.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("distributed_step.py")
ROOT = SCRIPT.parents[2]
BATCH = 64


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(tmp_path, setting, *args):
    out = tmp_path / f"{setting}.json"
    subprocess.run([sys.executable, str(SCRIPT), setting, str(out), *args], env=_env(), check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    return json.loads(out.read_text())


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_multiworker(tmp_path, *args):
    out = tmp_path / "multiworker.json"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(
            [sys.executable, str(SCRIPT), "multiworker", str(out), *args], env=_env(TF_CONFIG=config),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))  # fmt: skip
    try:
        for process in processes:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err.decode()[-2000:]
    finally:
        for process in processes:  # a worker that dies must not leave the other waiting for it
            if process.poll() is None:
                process.kill()
    return json.loads(out.read_text())


def _check_std(residuals, sigma):
    """Sample std of n i.i.d. N(0, sigma^2) draws: (n-1) s^2 / sigma^2 is chi-square(n-1); a Laurent-Massart
    bound with failure probability 1e-6 on each side."""
    n = len(residuals)
    k, t = n - 1, np.log(1e6)
    ratio = float(np.var(residuals, ddof=1)) / sigma**2 * k
    assert k - 2 * np.sqrt(k * t) <= ratio <= k + 2 * np.sqrt(k * t) + 2 * t, (np.std(residuals), sigma)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("none"), "none")


def test_mirrored_strategy_adds_the_stated_noise_once_and_clips_per_example(tmp_path, reference):
    mirrored = _run(tmp_path, "mirrored")
    assert mirrored["replicas"] == 2
    np.testing.assert_allclose(mirrored["clean"], reference["clean"], atol=1e-6)
    assert np.abs(reference["clean"]).max() > 1e-3  # the clean update is not trivially zero
    _check_std(np.array(mirrored["noise"]), 1.0 / BATCH)
    _check_std(np.array(reference["noise"]), 1.0 / BATCH)


def test_mirrored_strategy_with_an_uneven_last_batch(tmp_path):
    # 65 rows: the last batch of 1 example leaves one replica empty; dividing by the local batch size would
    # count that example twice.
    single = _run(tmp_path, "none", "--rows", "65", "--draws", "1")
    mirrored = _run(tmp_path, "mirrored", "--rows", "65", "--draws", "1")
    np.testing.assert_allclose(mirrored["clean"], single["clean"], atol=1e-6)


def test_multi_worker_mirrored_strategy_across_two_processes(tmp_path, reference):
    result = _run_multiworker(tmp_path)
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["clean"], reference["clean"], atol=1e-6)
    _check_std(np.array(result["noise"]), 1.0 / BATCH)


def test_an_unsupported_strategy_is_refused_by_name(tmp_path):
    result = _run(tmp_path, "central")
    assert "does not support CentralStorageStrategy" in result["error"]
