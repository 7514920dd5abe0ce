"""Benchmark of the ring matmul and conv2d kernels against TensorFlow's own matmul and conv2d.

Times `tfppml.ops.ring_matmul` (uint64, mod 2**64) on n x n matrices for n = 256, 512, 1024 beside
`tf.matmul` in float32, float64 and int64, and `tfppml.ops.ring_conv2d` on the two convolutions of a small
MNIST CNN beside `tf.nn.conv2d` in float32, all in the same run.  The variants of one case are timed
round-robin (one call of each per round), so that load from other processes on the machine falls on all of
them alike; each figure is the median over the rounds, after warm-up calls.  The portable scalar micro-kernel
is timed too, for machines without AVX2.

    .venv/bin/python benchmarks/ring_ops.py [--repeats 9] [--warmup 2] [--sizes 256 512 1024]

Prints the command, the versions, the CPU and its load, a Markdown table of medians and the ratios
ours / int64 and ours / float32 (below 1 means ours is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfppml  # noqa: E402
from tfppml.ops.ring_matmul import _ring_conv2d, _ring_matmul  # noqa: E402

# (name, batch, height, width, in_channels, filter size, out_channels): the two 3x3 SAME convolutions of a
# small MNIST CNN (28x28x1 -> 16 channels, 2x2 pooling, 14x14x16 -> 32 channels).
CONV_CASES = [
    ("conv 128x28x28x1 * 3x3x1x16", 128, 28, 28, 1, 3, 16),
    ("conv 128x14x14x16 * 3x3x16x32", 128, 14, 14, 16, 3, 32),
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = info.read().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    model = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown"
    )
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    cores = sum(1 for line in lines if line.startswith("processor"))
    simd = [flag for flag in ("avx2", "avx512f") if flag in flags]
    return f"{model}, {cores} logical CPUs, {'/'.join(simd) if simd else 'no AVX2'}"


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def time_round_robin(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median wall-clock seconds per call of each variant, timed one call of each per round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()  # eager CPU ops have finished when they return
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def matmul_variants(n: int, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    a = rng.integers(0, 2**64, size=(n, n), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=(n, n), dtype=np.uint64, endpoint=False)
    a_u64, b_u64 = tf.constant(a), tf.constant(b)
    small_a, small_b = rng.integers(-100, 100, size=(n, n)), rng.integers(-100, 100, size=(n, n))
    tensors = {
        dtype: (tf.constant(small_a, dtype=dtype), tf.constant(small_b, dtype=dtype))
        for dtype in (tf.float32, tf.float64, tf.int64)
    }
    return {
        "ours": lambda: tfppml.ops.ring_matmul(a_u64, b_u64),
        "ours (scalar)": lambda: _ring_matmul(a_u64, b_u64, force_scalar=True),
        "tf float32": lambda: tf.matmul(*tensors[tf.float32]),
        "tf float64": lambda: tf.matmul(*tensors[tf.float64]),
        "tf int64": lambda: tf.matmul(*tensors[tf.int64]),
    }


def conv_variants(case: tuple, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    _, batch, height, width, in_c, size, out_c = case
    x = tf.constant(
        rng.integers(0, 2**64, size=(batch, height, width, in_c), dtype=np.uint64, endpoint=False)
    )
    w = tf.constant(rng.integers(0, 2**64, size=(size, size, in_c, out_c), dtype=np.uint64, endpoint=False))
    x32 = tf.constant(rng.standard_normal((batch, height, width, in_c)), dtype=tf.float32)
    w32 = tf.constant(rng.standard_normal((size, size, in_c, out_c)), dtype=tf.float32)
    return {
        "ours": lambda: tfppml.ops.ring_conv2d(x, w, 1, "SAME"),
        "ours (scalar)": lambda: _ring_conv2d(x, w, 1, "SAME", force_scalar=True),
        "tf float32": lambda: tf.nn.conv2d(x32, w32, 1, "SAME"),
    }


def milliseconds(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.2f}"


def ratio(ours: float, other: float | None) -> str:
    return "" if other is None else f"{ours / other:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="matmul sizes n")
    args = parser.parse_args(argv)

    print("command:", shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(
        f"versions: tfppml {tfppml.__version__}, tensorflow {tf.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}"
    )
    print(f"cpu: {cpu_model()}")
    print(
        f"threads: intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
        f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}"
    )
    print(f"load average at start: {load_average()}")
    print(f"medians over {args.repeats} round-robin rounds after {args.warmup} warm-up rounds; times in ms\n")

    rng = np.random.default_rng(0)
    rows = []
    cases = [(f"matmul n={n}", lambda n=n: matmul_variants(n, rng)) for n in args.sizes]
    cases += [(case[0], lambda case=case: conv_variants(case, rng)) for case in CONV_CASES]
    for name, make in cases:
        medians = time_round_robin(make(), args.repeats, args.warmup)
        rows.append((name, medians))

    header = (
        "| case | ours | ours (scalar) | tf float32 | tf float64 | tf int64 | ours / int64 | ours / float32 |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, medians in rows:
        ours = medians["ours"]
        print(
            f"| {name} | {milliseconds(ours)} | {milliseconds(medians['ours (scalar)'])} "
            f"| {milliseconds(medians.get('tf float32'))} | {milliseconds(medians.get('tf float64'))} "
            f"| {milliseconds(medians.get('tf int64'))} | {ratio(ours, medians.get('tf int64'))} "
            f"| {ratio(ours, medians.get('tf float32'))} |"
        )
    print(f"\nload average at end: {load_average()}")


if __name__ == "__main__":
    main()
