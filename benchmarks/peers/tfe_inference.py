#!/usr/bin/env python3
"""TF Encrypted 0.9.1 ABY3 private inference on 28x28 inputs: the peer for
``benchmarks/private_inference.py``.

Runs INSIDE the TFE venv (Python 3.10, tensorflow 2.9.1, tf-encrypted 0.9.1; see make_tfe_venv.sh).
Progress goes to stderr; the last line of stdout is one JSON object.

Players, each its own OS process (TFE's player entry point, a TF gRPC server) on a free 127.0.0.1 port:
server0, server1, server2 (the three ABY3 servers) and prediction-client (the data owner that secret-shares
each query, as in TFE's own inference benchmark). This process is the TF client that builds and drives
the graphs. ABY3 over Z_2^64, 16 fractional / 11 integral bits (TFE's default ``fixed64_heuristic``, set
explicitly).

Models (tf.keras 2.9 models converted with TFE's ``tfe.keras.models.clone_model``, whose
``set_weights`` secret-shares every weight into private variables on the servers):
  dense: Dense(128, relu) on the flattened 784 pixels -> Dense(10)
  cnn:   Conv2D(16, 3x3, valid) -> AveragePooling2D(2) -> ReLU -> Conv2D(32, 3x3, valid)
         -> AveragePooling2D(2) -> ReLU -> Flatten (5*5*32 = 800) -> Dense(10)
  ReLU is TFE's exact one (secure comparison + select); everything else is linear.
TFE's converted models have a fixed batch size, so each model is converted once per batch size.

What is timed (``query``): one call of a compiled ``tfe.function`` that takes the plaintext query batch,
lets prediction-client secret-share it to the servers (TFE ``define_private_input``), runs the model on
the shares, reveals the logits (TFE ``reveal().to_native()``, as TFE's ``model.predict``) and returns
them to this process (``.numpy()``). Medians over ``--repeats-b1`` queries at batch 1 and ``--repeats-b128``
at batch 128, after a first (warm-up) call whose time is reported as ``first_call_s``: tracing TFE's
Python into a TF graph (also reported alone as ``trace_s``) + registering the graph on the workers + one
run. ``share_model_s`` is the conversion time (weights secret-shared). Agreement: argmax of the private
logits vs the plaintext Keras model on the same weights and inputs, over every query made (warm-up
included; distinct random inputs unless ``--weights`` supplies fewer).

Weights and inputs: ``--weights FILE.npz`` with ``dense_0..dense_3`` (W1 784x128, b1, W2 128x10, b2) and/or
``cnn_0..cnn_5`` (Keras layouts: conv kernels HWIO, dense kernels in x out) and optionally ``x`` (N x 28 x
28 [x 1] floats in [0, 1], N >= 128); anything missing is drawn with a fixed seed (Keras' default
initializers; inputs uniform in [0, 1)). ``--save-weights FILE.npz`` writes what was used.

Example:
    $(benchmarks/peers/make_tfe_venv.sh) benchmarks/peers/tfe_inference.py --models dense cnn
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

CLIENT = "prediction-client"
N_WEIGHTS = {"dense": 4, "cnn": 6}


def keras_model(kind: str, batch: int):
    import tensorflow as tf

    L = tf.keras.layers
    if kind == "dense":
        layers = [L.Dense(128, activation="relu", batch_input_shape=(batch, 784)), L.Dense(10)]
    elif kind == "cnn":
        layers = [
            L.Conv2D(16, 3, padding="valid", batch_input_shape=(batch, 28, 28, 1)),
            L.AveragePooling2D(2),
            L.Activation("relu"),
            L.Conv2D(32, 3, padding="valid"),
            L.AveragePooling2D(2),
            L.Activation("relu"),
            L.Flatten(),
            L.Dense(10),
        ]
    else:
        raise ValueError(f"model must be 'dense' or 'cnn', got {kind!r}")
    return tf.keras.Sequential(layers)


def model_input(kind: str, x):
    return x.reshape(len(x), 784) if kind == "dense" else x.reshape(len(x), 28, 28, 1)


def load_or_make(args):
    """Returns ({kind: [weights]}, x of shape (N, 28, 28) float32)."""
    import numpy as np
    import tensorflow as tf

    data = dict(np.load(args.weights)) if args.weights else {}
    tf.keras.utils.set_random_seed(args.seed)
    weights = {}
    for kind in args.models:
        keys = [f"{kind}_{i}" for i in range(N_WEIGHTS[kind])]
        if all(k in data for k in keys):
            weights[kind] = [np.asarray(data[k], np.float32) for k in keys]
            src = args.weights
        else:
            weights[kind] = [w.astype(np.float32) for w in keras_model(kind, 1).get_weights()]
            src = f"Keras default initializers, seed {args.seed}"
        log(f"{kind}: weights from {src}")
    need = max(args.batch_sizes)
    if "x" in data:
        x = np.asarray(data["x"], np.float32).reshape(-1, 28, 28)
        if len(x) < need:
            raise ValueError(f"--weights: 'x' holds {len(x)} inputs, at least {need} are needed")
    else:  # enough distinct inputs that no query repeats another
        n = max(b * ((args.repeats_b1 if b == 1 else args.repeats_b128) + 1) for b in args.batch_sizes)
        x = np.random.default_rng(args.seed).uniform(0, 1, (n, 28, 28)).astype(np.float32)
    if args.save_weights:
        out = {f"{k}_{i}": w for k, ws in weights.items() for i, w in enumerate(ws)}
        out["x"] = x
        np.savez(args.save_weights, **out)
        log(f"weights and inputs written to {args.save_weights}")
    return weights, x


def bench_model(kind, weights, x, batch, repeats, cluster) -> dict:
    import numpy as np
    import tensorflow as tf
    import tf_encrypted as tfe

    km = keras_model(kind, batch)
    km.set_weights(weights)
    clear_memo()
    t = time.perf_counter()
    tm = tfe.keras.models.clone_model(km)  # secret-shares the weights (private variables)
    share_model_s = time.perf_counter() - t

    @tfe.function
    def query(xq):
        xs = tfe.define_private_input(CLIENT, lambda: xq)
        return tm(xs).reveal().to_native()

    # Queries: consecutive batch-sized slices of x (cycled if x is short).
    n_q = repeats + 1
    batches, seen = [], set()
    for q in range(n_q):
        idx = np.arange(q * batch, (q + 1) * batch) % len(x)
        seen.update(idx.tolist())
        batches.append(model_input(kind, x[idx]))
    x0 = tf.constant(batches[0])
    t = time.perf_counter()
    trace = trace_seconds(query, x0)
    logits = [query(x0).numpy()]
    first = time.perf_counter() - t
    cluster.check_alive()
    times = []
    for q in range(1, n_q):
        xq = tf.constant(batches[q])
        t = time.perf_counter()
        out = query(xq).numpy()
        times.append(time.perf_counter() - t)
        logits.append(out)
    med = statistics.median(times)
    priv = np.concatenate(logits)
    plain = km.predict(np.concatenate(batches), batch_size=batch, verbose=0)
    agree = priv.argmax(1) == plain.argmax(1)
    top2 = np.sort(plain, axis=1)[:, -2:]
    log(f"{kind} batch {batch}: share model {share_model_s:.2f} s, first call {first:.2f} s "
        f"(tracing {trace or float('nan'):.2f} s), "
        f"median {med * 1e3:.1f} ms over {repeats}, argmax agreement {agree.mean() * 100:.1f}% "
        f"of {len(agree)} ({len(seen)} distinct inputs)")
    return {
        "batch": batch, "median_s": med, "min_s": min(times), "max_s": max(times), "times_s": times,
        "repeats": repeats, "per_example_s": med / batch, "first_call_s": first,
        "setup_s": first - med, "trace_s": trace, "share_model_s": share_model_s,
        "predictions_compared": int(len(agree)), "distinct_inputs": len(seen),
        "argmax_agree": int(agree.sum()),
        "argmax_agreement": float(agree.mean()),
        "max_abs_logit_err": float(np.abs(priv - plain).max()),
        "min_top2_margin_plain": float((top2[:, 1] - top2[:, 0]).min()),
        "_argmax": (priv.argmax(1), plain.argmax(1)),
    }


def run(args) -> dict:
    import numpy as np

    result: dict = {"peer": "tf-encrypted", "protocol": "ABY3", "ring_bits": 64, "frac_bits": 16,
                    "int_bits": 11, "transport": "TF gRPC on 127.0.0.1",
                    "players": ["server0", "server1", "server2", CLIENT],
                    "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                    "timed": "client shares the query + private model + reveal of logits to the driver",
                    "models": {
                        "dense": "Dense(128, relu) on 784 -> Dense(10)",
                        "cnn": "Conv2D(16,3x3,valid) -> AvgPool(2) -> ReLU -> Conv2D(32,3x3,valid) -> "
                               "AvgPool(2) -> ReLU -> Flatten(800) -> Dense(10)"}}
    t_script = time.perf_counter()
    result["load_avg_start"] = os.getloadavg()  # the CPU may be shared: read the timings with this
    weights, x = load_or_make(args)
    result["weights"] = args.weights or f"random, seed {args.seed}"
    with TfeCluster(names=("server0", "server1", "server2", CLIENT)) as cluster:
        result["versions"] = versions()
        result["cluster_start_s"] = cluster.start_seconds
        result["cpu_count"] = os.cpu_count()
        aby3_protocol(frac_bits=16)
        out: dict = {}
        for kind in args.models:
            per = {}
            preds = []
            for b in args.batch_sizes:
                reps = args.repeats_b1 if b == 1 else args.repeats_b128
                r = bench_model(kind, weights[kind], x, b, reps, cluster)
                preds.append(r.pop("_argmax"))
                per[f"batch_{b}"] = r
            p = np.concatenate([a for a, _ in preds])
            q = np.concatenate([b for _, b in preds])
            per["argmax_agreement"] = float((p == q).mean())
            per["predictions_compared"] = int(len(p))
            out[kind] = per
        result["results"] = out
    result["load_avg_end"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - t_script
    result["ok"] = True
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=["dense", "cnn"], default=["dense", "cnn"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128])
    p.add_argument("--repeats-b1", type=int, default=10, help="timed batch-1 queries after warm-up")
    p.add_argument("--repeats-b128", type=int, default=3, help="timed batch-128 queries after warm-up")
    p.add_argument("--weights", help="npz with dense_0..3 / cnn_0..5 (Keras layouts) and optional x")
    p.add_argument("--save-weights", help="write the weights and inputs used to this npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --batch-sizes 1 8 --repeats-b1 2 --repeats-b128 1")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats_b1, args.repeats_b128 = [1, 8], 2, 1
    if any(b < 1 for b in args.batch_sizes) or args.repeats_b1 < 1 or args.repeats_b128 < 1:
        p.error("--batch-sizes and --repeats-* must be positive")
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
