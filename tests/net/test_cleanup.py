"""No worker outlives its driver: garbage collection, interpreter exit without stop(), and a SIGKILLed driver.

These run a separate driver process (which imports tfppml, hence TensorFlow) that starts clusters: slow.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from .conftest import process_alive

DRIVER = textwrap.dedent("""
    import gc, json, sys, time
    from tfppml.net import Cluster, Worker

    def start():
        cluster = Cluster(Worker("127.0.0.1:0"), service="echo", timeout=2)
        cluster.start()
        return cluster, [p.pid for p in cluster.processes.values()], str(cluster.config_path.parent)

    cluster, collected, collected_dir = start()
    del cluster
    gc.collect()  # the finalizer stops the workers of a Cluster nobody references
    cluster, kept, kept_dir = start()
    print(json.dumps({"collected": collected, "collected_dir": collected_dir, "kept": kept, "kept_dir": kept_dir}),
          flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    # "exit": leave without stop(); the atexit finalizer must clean up.
    """)


def _run_driver(mode):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )


def _wait_dead(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(process_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_gc_and_interpreter_exit_stop_workers():
    driver = _run_driver("exit")
    out, _ = driver.communicate(timeout=300)
    facts = json.loads(out.strip().splitlines()[-1])
    assert driver.returncode == 0
    assert _wait_dead(facts["collected"], 1) and not os.path.exists(facts["collected_dir"])
    assert _wait_dead(facts["kept"], 1) and not os.path.exists(facts["kept_dir"])


@pytest.mark.slow
def test_sigkilled_driver_takes_its_workers_along():
    driver = _run_driver("hang")
    try:
        facts = json.loads(driver.stdout.readline())
        assert all(process_alive(pid) for pid in facts["kept"])
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # No atexit runs after SIGKILL: the workers notice their parent is gone, exit by themselves and remove the
    # temporary directory (with its keys).
    assert _wait_dead(facts["kept"], 5)
    assert not os.path.exists(facts["kept_dir"])
