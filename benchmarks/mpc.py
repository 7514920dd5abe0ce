"""Secret-shared computation on three real server processes (loopback, mutual TLS) vs plain TensorFlow and
TF Encrypted 0.9.1's ABY3, in one run.

    .venv/bin/python benchmarks/mpc.py            # full run (creates TF Encrypted's venv on first use)
    .venv/bin/python benchmarks/mpc.py --no-peer  # tfppml and plain TensorFlow only

For every operation it prints the median time, the bytes each server sent and the most messages a server
received (the rounds, except where one round brings a server two messages: the one-round truncation, the ReLU's
bit injection), and the ratios.  Shares are in place before timing; each timing covers the whole secure operation at the three
servers (products include truncation) as seen by the driver, nothing revealed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines from gRPC's C core (e.g. "Got goaway")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tfppml  # noqa: E402
import tfppml.mpc as mpc  # noqa: E402
from tfppml.net.cluster import Cluster, Worker  # noqa: E402

CONV_SHAPE = {"input": (128, 28, 28, 1), "filters": (5, 5, 1, 16)}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure_ours(sizes: list[int], repeats: int) -> dict:
    rng = np.random.default_rng(0)
    results: dict = {}
    start = time.perf_counter()
    with Cluster(*(Worker("127.0.0.1:0") for _ in range(3)), service="mpc", timeout=120) as cluster:
        results["cluster_start_s"] = time.perf_counter() - start
        # First call: from a new protocol object to the first secure product's answer.
        t0 = time.perf_counter()
        prot = mpc.ABY3(cluster)
        a = prot.share(rng.normal(size=(256, 256)))
        b = prot.share(rng.normal(size=(256, 256)))
        a @ b
        results["first_call_s"] = time.perf_counter() - t0

        def timed(name: str, fn, reps: int) -> None:
            prot.communication_stats(reset=True)
            fn()
            stats = prot.communication_stats(reset=True)
            results[name] = {
                "median_s": median_time(fn, reps),
                "bytes_sent_per_party": max(s["bytes_sent"] for s in stats.values()),
                "messages": max(s["messages_received"] for s in stats.values()),
            }

        for n in sizes:
            x = prot.share(rng.normal(size=(n, n)))
            w = prot.share(rng.normal(size=(n, n)))
            timed(f"matmul_{n}", lambda: x @ w, repeats if n < 1024 else max(3, repeats // 2))
        images = prot.share(rng.normal(size=CONV_SHAPE["input"]))
        filters = prot.share(rng.normal(size=CONV_SHAPE["filters"]) * 0.2)
        timed("conv2d", lambda: mpc.conv2d(images, filters), 3)
        values = prot.share(rng.normal(size=(100_000,)))
        timed("relu_1e5", lambda: mpc.relu(values), 3)
        prot.close()
    return results


def measure_plain(sizes: list[int], repeats: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        a = tf.constant(rng.normal(size=(n, n)), tf.float32)
        b = tf.constant(rng.normal(size=(n, n)), tf.float32)
        out[f"matmul_{n}"] = median_time(lambda: tf.matmul(a, b).numpy(), repeats)
    x = tf.constant(rng.normal(size=CONV_SHAPE["input"]), tf.float32)
    f = tf.constant(rng.normal(size=CONV_SHAPE["filters"]), tf.float32)
    out["conv2d"] = median_time(lambda: tf.nn.conv2d(x, f, 1, "VALID").numpy(), repeats)
    v = tf.constant(rng.normal(size=(100_000,)), tf.float32)
    out["relu_1e5"] = median_time(lambda: tf.nn.relu(v).numpy(), repeats)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip TF Encrypted")
    args = parser.parse_args()

    print("command:", " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"tfppml {tfppml.__version__}, TensorFlow {tf.__version__}, CPU {cpu_model()}, {os.cpu_count()} cores")
    ours = measure_ours(args.sizes, args.repeats)
    plain = measure_plain(args.sizes, args.repeats)
    peer = None
    if not args.no_peer:
        from peers.tfe import run_peer

        peer = run_peer(
            "tfe_aby3.py", ["--sizes", *map(str, args.sizes), "--repeats", str(args.repeats)], timeout=1800
        )
        if peer is None:
            print("TF Encrypted: not measured (see the reason above)")

    print(f"\ncluster start {ours['cluster_start_s']:.1f} s; first call (protocol set-up + 256 matmul) "
          f"{ours['first_call_s']:.2f} s" + (f"; TF Encrypted first call {peer['first_call_s']:.1f} s" if peer and "first_call_s" in peer else ""))
    header = f"{'operation':<12} {'tfppml':>10} {'bytes/party':>12} {'msgs':>6} {'TF fp32':>10} {'x fp32':>8}"
    if peer:
        header += f" {'TF Encrypted':>13} {'speed-up':>9}"
    print(header)
    for name in [f"matmul_{n}" for n in args.sizes] + ["conv2d", "relu_1e5"]:
        ours_s = ours[name]["median_s"]
        line = (
            f"{name:<12} {ours_s * 1e3:>8.1f}ms {ours[name]['bytes_sent_per_party']:>12,d} "
            f"{ours[name]['messages']:>6d} {plain[name] * 1e3:>8.2f}ms {ours_s / plain[name]:>7.1f}x"
        )
        if peer and name in peer:
            line += f" {peer[name] * 1e3:>11.1f}ms {peer[name] / ours_s:>8.1f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
