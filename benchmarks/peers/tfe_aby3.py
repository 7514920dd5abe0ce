#!/usr/bin/env python3
"""TF Encrypted 0.9.1 ABY3 micro-benchmarks: the peer for ``benchmarks/mpc.py``.

Runs INSIDE the TFE venv (Python 3.10, tensorflow 2.9.1, tf-encrypted 0.9.1; see make_tfe_venv.sh),
never in tfppml's own environment. Prints progress on stderr and one JSON object on the last line of
stdout.

Set-up: three TFE players (server0..2), each its own OS process running TFE's player entry point
(a TF gRPC server), on free 127.0.0.1 ports; this process is the TF client that builds the graphs and
drives them (TFE's RemoteConfig). Protocol: ABY3, replicated 2-out-of-3 sharing over Z_2^64, fixed point
with 16 fractional and 11 integral bits, heuristic interactive truncation -- TFE's default
``fixed64_heuristic``, passed explicitly.

What is timed, per operation (all operands are private and already secret-shared: they live as TF
variables holding each party's two shares on the party's own device, made before any timing):
  * one call of a compiled ``tfe.function`` that computes the secure operation -- for matmul and conv2d:
    each party's local int64 products, the zero-sharing from the pairwise PRG, the re-sharing message and
    TFE's interactive truncation; for ReLU: TFE's secure comparison (bit decomposition and a
    Kogge-Stone adder over boolean shares) and the oblivious select -- and returns, from each party, the
    wrap-around int64 sum of each of its two result shares (6 scalars; local work linear in the result
    size; no reveal of the result). ``.numpy()`` on those scalars blocks until every party has finished.
  * ``first_call_s``: the first call of that function, i.e. from defining the computation to the first
    result: Python tracing of TFE's protocol code into a TF graph (``trace_s``, timed on its own by
    tracing ahead of the call), graph partitioning and registration on the three workers, and one
    execution. ``setup_s`` = first_call_s - median.
  * ``median_s`` (and min/max/all): the following ``--repeats`` calls (the first call is the warm-up).
The returned sums double as a correctness check: first shares of the three parties add up to the sum of
all result elements, compared with float64 NumPy (``checksum_abs_err``), and each party's second share
must equal the next party's first share (``replication_ok``).

Example:
    $(benchmarks/peers/make_tfe_venv.sh) benchmarks/peers/tfe_aby3.py --sizes 256 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tfe_cluster import TfeCluster, aby3_protocol, clear_memo, log, trace_seconds, versions  # noqa: E402

FRAC_BITS = 16


def _share_sums(z):
    """Per party, the wrap-around int64 sum of each of its two shares of ``z`` (computed on that party)."""
    import tensorflow as tf

    shares = z.unwrapped
    out = []
    for i in range(3):
        with tf.device(z.prot.servers[i].device_name):
            out.append(tf.reduce_sum(shares[i][0].value))
            out.append(tf.reduce_sum(shares[i][1].value))
    return out


def _decode_sum(sums) -> tuple[float, bool]:
    import numpy as np

    s = [int(v) for v in sums]
    first = [s[0], s[2], s[4]]
    second = [s[1], s[3], s[5]]
    replication_ok = second == [first[1], first[2], first[0]]
    total = sum(first) % (1 << 64)
    if total >= 1 << 63:
        total -= 1 << 64
    return float(np.float64(total) / (1 << FRAC_BITS)), replication_ok


def _time_op(name: str, build_fn, expected_sum: float, repeats: int, cluster: TfeCluster) -> dict:
    """build_fn() -> a zero-argument tfe.function returning the 6 share sums."""
    clear_memo()
    t0 = time.perf_counter()
    fn = build_fn()
    trace = trace_seconds(fn)
    sums = [v.numpy() for v in fn()]
    first = time.perf_counter() - t0
    cluster.check_alive()
    got, repl_ok = _decode_sum(sums)
    log(f"{name}: first call {first:.2f} s, of which tracing {trace or float('nan'):.2f} s "
        f"(checksum {got:.4f} vs {expected_sum:.4f})")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _ = [v.numpy() for v in fn()]
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    log(f"{name}: median {med * 1e3:.1f} ms over {repeats} ({', '.join(f'{x*1e3:.0f}' for x in times)})")
    return {
        "median_s": med, "min_s": min(times), "max_s": max(times), "times_s": times,
        "repeats": repeats, "first_call_s": first, "setup_s": first - med, "trace_s": trace,
        "checksum": got, "checksum_expected": expected_sum,
        "checksum_abs_err": abs(got - expected_sum), "replication_ok": repl_ok,
    }


def run(args) -> dict:
    import numpy as np

    result: dict = {"peer": "tf-encrypted", "protocol": "ABY3", "ring_bits": 64,
                    "frac_bits": FRAC_BITS, "int_bits": 11, "transport": "TF gRPC on 127.0.0.1",
                    "players": 3, "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    rng = np.random.default_rng(args.seed)
    t_script = time.perf_counter()
    result["load_avg_start"] = os.getloadavg()  # the CPU may be shared: read the timings with this
    with TfeCluster() as cluster:
        import tensorflow as tf
        import tf_encrypted as tfe

        result["versions"] = versions()
        result["cluster_start_s"] = cluster.start_seconds
        t = time.perf_counter()
        prot = aby3_protocol(frac_bits=FRAC_BITS)
        result["protocol_init_s"] = time.perf_counter() - t
        result["cpu_count"] = os.cpu_count()

        def share(a):
            t = time.perf_counter()
            v = tfe.define_private_variable(a)
            # Wait until the shares exist on the workers before timing anything.
            _ = [s.numpy() for s in _share_sums(v)]
            return v, time.perf_counter() - t

        ops: dict = {}
        # --- matmul n x n @ n x n -------------------------------------------------------------
        for n in args.sizes:
            a = rng.uniform(-1, 1, (n, n))
            b = rng.uniform(-1, 1, (n, n))
            x, sx = share(a)
            y, sy = share(b)
            log(f"matmul {n}: inputs shared in {sx + sy:.2f} s")

            def build(x=x, y=y):
                @tfe.function
                def f():
                    return _share_sums(tfe.matmul(x, y))
                return f

            r = _time_op(f"matmul {n}", build, float((a @ b).sum()), args.repeats, cluster)
            r["shape"] = [[n, n], [n, n]]
            r["share_inputs_s"] = sx + sy
            ops[f"matmul_{n}"] = r
            del x, y

        # --- conv2d ------------------------------------------------------------------------------
        nb, hw, cin, k, cout = args.conv_batch, 28, 1, 5, 16
        img = rng.uniform(0, 1, (nb, cin, hw, hw))  # TFE's protocol-level conv2d takes NCHW
        ker = rng.uniform(-0.5, 0.5, (k, k, cin, cout))
        xi, s1 = share(img)
        wk, s2 = share(ker)

        def build_conv():
            @tfe.function
            def f():
                return _share_sums(tfe.conv2d(xi, wk, [1, 1], "VALID"))
            return f

        expect = float(tf.nn.conv2d(np.transpose(img, (0, 2, 3, 1)), ker, 1, "VALID").numpy().sum())
        r = _time_op("conv2d", build_conv, expect, args.repeats, cluster)
        r.update(input_nchw=[nb, cin, hw, hw], filter_hwio=[k, k, cin, cout], stride=1,
                 padding="VALID", output_nchw=[nb, cout, hw - k + 1, hw - k + 1],
                 share_inputs_s=s1 + s2)
        ops["conv2d"] = r

        # --- ReLU ----------------------------------------------------------------------------
        m = args.relu_size
        v = rng.uniform(-10, 10, (m,))
        xr, s3 = share(v)

        def build_relu():
            @tfe.function
            def f():
                return _share_sums(tfe.relu(xr))
            return f

        r = _time_op(f"relu {m}", build_relu, float(np.maximum(v, 0).sum()), args.repeats, cluster)
        r.update(elements=m, share_inputs_s=s3, method="TFE relu: x > 0 (a2b + Kogge-Stone) + select")
        ops["relu_1e5" if m == 100_000 else f"relu_{m}"] = r
        del prot

    result["ops"] = ops
    # Flat view for callers: <op> -> median seconds; details stay under ops.<op>.
    result.update({name: r["median_s"] for name, r in ops.items()})
    first_key = f"matmul_{args.sizes[0]}"
    result["first_call_s"] = ops[first_key]["first_call_s"]
    result["first_call_note"] = (
        f"first call of the first computation ({first_key}): from defining the tfe.function to its "
        "first result (tracing + graph registration on 3 workers + one run); per-op values in ops.*")
    result["load_avg_end"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - t_script
    result["ok"] = True
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="matmul sizes n (n x n)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up call")
    p.add_argument("--conv-batch", type=int, default=128, help="conv2d batch (28x28x1, 5x5x16)")
    p.add_argument("--relu-size", type=int, default=100_000, help="ReLU elements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --sizes 64 --repeats 2 --conv-batch 8 --relu-size 1000")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.conv_batch, args.relu_size = [64], 2, 8, 1000
    if args.repeats < 1 or any(n < 1 for n in args.sizes):
        p.error("--repeats and --sizes must be positive")
    try:
        out = run(args)
        code = 0
    except Exception as e:  # the caller wants a JSON line, not a traceback, as the last line
        traceback.print_exc(file=sys.stderr)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        out = {"ok": False, "peer": "tf-encrypted",
               "error": f"{type(e).__name__}: {lines[-1] if lines else ''}"[:500]}
        code = 1
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
