"""Private inference: plaintext Keras vs tfppml (three server processes, mutual TLS, loopback) vs TF Encrypted
0.9.1's ABY3, on the same weights and inputs, in one run.

    .venv/bin/python benchmarks/private_inference.py            # creates TF Encrypted's venv on first use
    .venv/bin/python benchmarks/private_inference.py --no-peer  # plaintext and tfppml only

Models on 28x28 inputs: "dense" = Flatten -> Dense 128 (relu) -> Dense 10; "cnn" = the demo's network,
conv16 3x3 -> avgpool 2 -> relu -> conv32 3x3 -> avgpool 2 -> relu -> flatten -> dense 10.  A query is timed
from the client's plaintext input to its decoded logits (secret-sharing the input, the secure forward pass,
the output terms returned to the client only).  Batch 1: median of --repeats-b1 queries; batch 128: median of
--repeats-b128; each after a warm-up query (on both sides).  Also: time from `model.share` to the first answer, and argmax agreement with plaintext Keras.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines from gRPC's C core (e.g. "Got goaway")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import tfppml  # noqa: E402

L = tf.keras.layers


def build(kind: str) -> tf.keras.Model:
    if kind == "dense":
        return tf.keras.Sequential([L.Flatten(input_shape=(28, 28, 1)), L.Dense(128, activation="relu"), L.Dense(10)])
    return tf.keras.Sequential([
        L.Conv2D(16, 3, input_shape=(28, 28, 1)), L.AveragePooling2D(2), L.Activation("relu"),
        L.Conv2D(32, 3), L.AveragePooling2D(2), L.Activation("relu"), L.Flatten(), L.Dense(10)])


def median_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ours(models: dict, x: np.ndarray, args: argparse.Namespace) -> dict:
    results = {}
    with tfppml.Cluster(*(tfppml.Worker("127.0.0.1:0") for _ in range(3)), timeout=300) as cluster:
        tfppml.KerasHook(tf.keras)
        for kind, model in models.items():
            start = time.perf_counter()
            model.share(cluster, name=kind)
            # The quota counts input rows: the batch-1 queries, then the batch-128 warm-up and repeats.
            model.serve(1 + args.repeats_b1 + 128 * (1 + args.repeats_b128), block=False)
            client = tfppml.Client().connect_to_model(model.input_shape, model.output_shape, cluster, model_name=kind)
            first = client.query_model(x[:1])
            share_to_first = time.perf_counter() - start
            preds = [first]
            b1 = median_of(lambda: preds.append(client.query_model(x[len(preds) % len(x)][None])), args.repeats_b1)
            # The first batch-128 query is a warm-up, as on TF Encrypted's side: it grows each server's heap to the
            # batch's working set (page faults), which later queries reuse.
            big = [client.query_model(x[:128])]
            b128 = median_of(lambda: big.append(client.query_model(x[:128])), args.repeats_b128)
            plain = model(x[:128]).numpy()
            agreement = float(np.mean(big[-1].argmax(1) == plain.argmax(1)))
            results[kind] = {"batch1_s": b1, "batch128_s": b128, "share_to_first_answer_s": share_to_first,
                             "agreement": agreement, "max_abs_logit_err": float(np.max(np.abs(big[-1] - plain)))}
            model.stop()
    return results


def measure_plain(models: dict, x: np.ndarray) -> dict:
    out = {}
    for kind, model in models.items():
        fn = tf.function(model)
        fn(x[:1]), fn(x[:128])
        out[kind] = {"batch1_s": median_of(lambda: fn(x[:1]).numpy(), 20),
                     "batch128_s": median_of(lambda: fn(x[:128]).numpy(), 10)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=["dense", "cnn"], default=["dense", "cnn"])
    parser.add_argument("--repeats-b1", type=int, default=10)
    parser.add_argument("--repeats-b128", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="skip TF Encrypted")
    args = parser.parse_args()
    print("command:", " ".join([os.path.relpath(sys.executable), *sys.argv]), flush=True)
    print(f"tfppml {tfppml.__version__}, TensorFlow {tf.__version__}, {os.cpu_count()} cores", flush=True)

    tf.keras.utils.set_random_seed(0)
    models = {kind: build(kind) for kind in args.models}
    x = np.random.default_rng(0).uniform(0, 1, size=(256, 28, 28, 1))
    weights_file = os.path.join(tempfile.mkdtemp(prefix="tfppml-bench-"), "weights.npz")
    arrays = {"x": x}
    for kind, model in models.items():
        for i, w in enumerate(model.get_weights()):
            arrays[f"{kind}_{i}"] = w
    np.savez(weights_file, **arrays)

    ours = measure_ours(models, x, args)
    plain = measure_plain(models, x)
    peer = None
    if not args.no_peer:
        from peers.tfe import run_peer

        peer = run_peer("tfe_inference.py", ["--models", *args.models, "--weights", weights_file,
                                             "--repeats-b1", str(args.repeats_b1),
                                             "--repeats-b128", str(args.repeats_b128)], timeout=1800)
        if peer is None:
            print("TF Encrypted: not measured (see the reason above)")

    print(f"\n{'model':<6} {'batch':>5} {'plaintext':>10} {'tfppml':>10} {'TF Encrypted':>13} {'speed-up':>9}")
    for kind in args.models:
        for batch, key in ((1, "batch1_s"), (128, "batch128_s")):
            theirs = None
            if peer:
                theirs = peer.get("results", {}).get(kind, {}).get(f"batch_{batch}", {}).get("median_s")
            line = f"{kind:<6} {batch:>5} {plain[kind][key] * 1e3:>8.2f}ms {ours[kind][key] * 1e3:>8.1f}ms"
            line += f" {theirs * 1e3:>11.1f}ms {theirs / ours[kind][key]:>8.1f}x" if theirs else f" {'-':>13} {'-':>9}"
            print(line)
        print(f"       tfppml: model.share -> first answer {ours[kind]['share_to_first_answer_s']:.2f} s; argmax "
              f"agreement {ours[kind]['agreement'] * 100:.1f}% (max |logit error| {ours[kind]['max_abs_logit_err']:.4f})")
        if peer and kind in peer.get("results", {}):
            info = peer["results"][kind]
            print(f"       TF Encrypted: argmax agreement {info['argmax_agreement'] * 100:.1f}%; first call at batch 1 "
                  f"{info['batch_1']['first_call_s']:.1f} s after sharing the model ({info['batch_1']['share_model_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
