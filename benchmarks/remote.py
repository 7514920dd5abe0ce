"""Benchmark of remote execution: a small remote op's round trip and a 100 MiB send, against a raw gRPC echo.

Starts two single-worker clusters on loopback in the same run (mutual TLS, separate processes): one runs the
"remote" service (`tfppml worker --service remote`), the other tfppml.net's "echo" service, the baseline that
does no work beyond decoding and re-encoding the message. Measured, medians over the repeats:

- small op: `x_ptr + y_ptr` on 4-element pointers (one request, the result stays remote; includes the audit
  entry's fsync), `z_ptr.get()` (policy check + 32 bytes back), against an echo call carrying the same 4 floats;
- a DP release: `col.dp_sum(0, 100, epsilon)` on a 1,000-row column of a data set (one request: clamping, Gaussian
  noise, the epsilon computed and charged to the fsync'd, authenticated privacy ledger before the result is
  stored, plus the audit entry), against the same echo;
- 100 MiB: `tfppml.remote.send` of a 100 MiB float64 tensor (100 MiB up, a pointer back), `.get()` of it
  (100 MiB down), against an echo call of the same tensor (100 MiB up and 100 MiB back).

    .venv/bin/python benchmarks/remote.py [--small-repeats 200] [--big-repeats 5] [--megabytes 100]  # MiB

Prints the command, the versions, the load and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

import tfppml  # noqa: E402
import tfppml.remote  # noqa: E402
from tfppml.net.cluster import Cluster, Worker  # noqa: E402
from tfppml.remote.audit import generate_key  # noqa: E402


def timed(function: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small-repeats", type=int, default=200)
    parser.add_argument("--big-repeats", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    import grpc
    import tensorflow as tf

    print("command:", shlex.join([".venv/bin/python", "benchmarks/remote.py", *sys.argv[1:]]))
    print(
        f"versions: tfppml {tfppml.__version__}, tensorflow {tf.__version__}, grpcio {grpc.__version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    print(f"cpus: {os.cpu_count()}, load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    workdir = Path(tempfile.mkdtemp(prefix="tfppml-bench-remote-"))
    budget = {"dp": {"epsilon_budget": 1.0e6, "delta": 1.0e-5}}
    policy = {"datasets": {"patients": budget}, "identities": {"analyst": {"datasets": ["patients"], **budget}}}
    (workdir / "policy.yaml").write_text(yaml.safe_dump(policy))
    np.savez(workdir / "data.npz", patients=np.random.default_rng(1).uniform(0, 100, (1000, 4)))
    limit = (args.megabytes + 16) * 1024 * 1024
    remote_cluster = Cluster(
        Worker("127.0.0.1:0", name="hospital"), service="remote", identities=("analyst",), timeout=120.0,
        max_message_bytes=max(limit, 256 * 1024 * 1024),
        service_options={"policy": str(workdir / "policy.yaml"), "data": str(workdir / "data.npz"), "audit": str(workdir / "logs" / "audit.log"),
                         "audit_key": str(generate_key(workdir / "keys" / "audit.key").path),
                         "max_object_bytes": str(limit)},
    )  # fmt: skip
    echo_cluster = Cluster(
        Worker("127.0.0.1:0", name="echo"), service="echo", identities=("analyst",), timeout=120.0,
        max_message_bytes=max(limit, 256 * 1024 * 1024),
    )  # fmt: skip
    rows: list[tuple[str, str, str, str]] = []
    with remote_cluster, echo_cluster:
        remote = tfppml.remote.connect(remote_cluster, worker="hospital", identity="analyst")
        echo = echo_cluster.remote("echo", "analyst")
        small = np.arange(4, dtype=np.float64)
        x, y = tfppml.remote.send(small, remote), tfppml.remote.send(small, remote)
        z = x + y

        def add() -> None:
            (x + y)  # the temporary's pointer is freed with a later request

        op_times = timed(add, args.small_repeats)
        get_times = timed(z.get, args.small_repeats)
        column = remote.dataset("patients") @ tfppml.remote.send(np.array([[1.0], [0.0], [0.0], [0.0]]), remote)
        dp_times = timed(lambda: column.dp_sum(0.0, 100.0, epsilon=0.01), args.small_repeats)
        echo_small = timed(lambda: echo.call({"op": "echo"}, {"x": small}), args.small_repeats)
        base = statistics.median(echo_small)
        for name, times in (
            ("remote x_ptr + y_ptr (4 floats)", op_times),
            ("remote z_ptr.get() (4 floats)", get_times),
            ("remote dp_sum of 1,000 rows (ledger charge)", dp_times),
        ):
            median = statistics.median(times)
            rows.append((name, f"{median * 1e3:.2f} ms", f"{base * 1e3:.2f} ms", f"{median / base:.2f}"))

        big = np.random.default_rng(0).random(args.megabytes * 1024 * 1024 // 8)
        megabytes = big.nbytes / 2**20
        pointers: list[tfppml.remote.Pointer] = []

        def send_big() -> None:
            pointers.append(tfppml.remote.send(big, remote))
            if len(pointers) > 1:
                pointers.pop(0).delete()

        send_times = timed(send_big, args.big_repeats, warmup=1)
        got = pointers[-1].get()
        assert np.array_equal(got, big)
        get_big = timed(pointers[-1].get, args.big_repeats, warmup=1)
        echo_big = timed(
            lambda: echo.call({"op": "echo"}, {"x": big}, timeout=120), args.big_repeats, warmup=1
        )
        echo_median = statistics.median(echo_big)
        send_median, get_median = statistics.median(send_times), statistics.median(get_big)
        total = send_median + get_median
        up_down = f"{echo_median:.3f} s (up + down)"
        rows += [
            (
                f"send {megabytes:.0f} MiB (up only)",
                f"{send_median:.3f} s = {megabytes / send_median:.0f} MiB/s",
                up_down,
                f"{send_median / echo_median:.2f}",
            ),
            (
                f"get {megabytes:.0f} MiB (down only)",
                f"{get_median:.3f} s = {megabytes / get_median:.0f} MiB/s",
                up_down,
                f"{get_median / echo_median:.2f}",
            ),
            (
                f"send + get {megabytes:.0f} MiB",
                f"{total:.3f} s = {2 * megabytes / total:.0f} MiB/s",
                f"{echo_median:.3f} s = {2 * megabytes / echo_median:.0f} MiB/s",
                f"{total / echo_median:.2f}",
            ),
        ]
        remote.close()
        echo.close()
        entries = sum(1 for _ in open(workdir / "logs" / "audit.log"))
    print(
        f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; audit entries written: {entries}"
    )
    print()
    print("| case | remote | raw gRPC echo (same run) | remote / echo |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
