"""No TFF worker_binary outlives the Python process that started it (issue 6, item 5)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tfppml.federated.runtime import tff_worker_children

_CHILD = r"""
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow_federated as tff
if sys.argv[1] == "reaper":
    from tfppml.federated.runtime import install_worker_reaper
    install_worker_reaper()
comp = tff.federated_computation(lambda x: tff.federated_sum(x), tff.FederatedType(np.int32, tff.CLIENTS))
assert comp([1, 2, 3]) == 6
print("READY", flush=True)
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def _workers_of(pid):
    return tff_worker_children(pid)


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _run(mode, ending):
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, ending],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=pathlib.Path(__file__).resolve().parents[2],
    )
    line = proc.stdout.readline()
    assert b"READY" in line, line
    workers = _workers_of(proc.pid)
    assert workers, "TFF started no worker_binary: the test would prove nothing"
    if ending == "wait":
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    proc.stdout.close()
    time.sleep(0.5)
    alive = [w for w in workers if _running(w)]
    return workers, alive


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["exit", "wait"])
def test_reaper_leaves_no_worker_binary(ending):
    workers, alive = _run("reaper", ending)
    assert alive == [], f"worker_binary {alive} outlived its parent"


@pytest.mark.slow
def test_control_tff_alone_leaks_a_worker_binary():
    """Without the reaper TFF 0.87 leaves its worker running: shows the test above can fail."""
    workers, alive = _run("plain", "wait")
    for pid in alive:  # clean up what the control left behind, by pid
        os.kill(pid, signal.SIGKILL)
    assert alive == workers
