"""scripts/federated_train.py writes its CSV and plot and leaves no TFF worker_binary behind."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tfppml.federated.runtime import process_running, tff_worker_children

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(tmp_path, args, terminate_after_workers=False):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "federated_train.py"), "--out", str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    seen = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(tff_worker_children(proc.pid))  # the workers are only visible as children while it runs
        if terminate_after_workers and seen:
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    output = proc.communicate(timeout=120)[0].decode(errors="replace")
    time.sleep(0.5)
    leftover = [pid for pid in seen if process_running(pid)]
    for pid in leftover:  # do not leak them into the rest of the session even when the test fails
        os.kill(pid, signal.SIGKILL)
    return proc.returncode, output, seen, leftover


def test_script_trains_writes_csv_and_png_and_leaves_no_worker(tmp_path):
    code, output, seen, leftover = _run(
        tmp_path,
        ["--rounds", "2", "--clients", "6", "--clients-per-round", "4", "--secure", "--neighbours", "2",
         "--partition", "dirichlet:0.5"],
    )  # fmt: skip
    assert code == 0, output
    assert seen, "no worker_binary was observed: the test would prove nothing"
    assert leftover == []
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["test_accuracy"]) > 0.1
    assert (tmp_path / "metrics.png").stat().st_size > 1000


@pytest.mark.slow
def test_script_on_a_spawned_loopback_worker_leaves_no_worker(tmp_path):
    code, output, seen, leftover = _run(
        tmp_path, ["--rounds", "1", "--clients", "6", "--clients-per-round", "3", "--secure", "--remote-worker", "spawn"]
    )
    assert code == 0, output
    assert "TFF computations run on the worker at localhost:" in output and "insecure gRPC" in output
    assert seen and leftover == []


@pytest.mark.slow
def test_script_killed_by_sigterm_leaves_no_worker(tmp_path):
    code, output, seen, leftover = _run(tmp_path, ["--rounds", "50"], terminate_after_workers=True)
    assert seen and leftover == [], output
    assert code == -signal.SIGTERM


def _script(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "federated_train.py"), *args], capture_output=True, text=True, cwd=ROOT
    )


def test_script_rejects_bad_arguments(tmp_path):
    proc = _script("--clients", "3", "--clients-per-round", "5")
    assert proc.returncode == 2
    assert "--clients-per-round must be <= --clients (3), got 5" in proc.stderr
    proc = _script("--remote-worker", "localhost")
    assert proc.returncode == 2
    assert "--remote-worker must be HOST:PORT (port 1..65535) or 'spawn', got 'localhost'" in proc.stderr
    proc = _script("--secure", "--neighbours", "3")
    assert proc.returncode == 2 and "--neighbours: expected 'auto' or an even int >= 2, got 3" in proc.stderr
    help_text = _script("--help").stdout
    assert "TFF's executor service uses insecure channels" in help_text
