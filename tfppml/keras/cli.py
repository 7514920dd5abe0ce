"""`tfppml serve` and `tfppml query`: private inference from the command line.

    tfppml cluster keys --parties 3 --names model_owner,client --out certs/
    tfppml cluster config --out cluster.json --cert-dir certs/ ...      (see `tfppml cluster config --help`)
    tfppml worker --name server0 --config cluster.json                  (once per server, on its host)
    tfppml serve model.h5 --cluster cluster.json --num-requests 10      (the model owner)
    tfppml query --cluster cluster.json image.npy                       (a client)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="secret-share a Keras model among a running cluster and serve private predictions",
        description="Loads a Keras model file, secret-shares its weights among the cluster's three servers "
        "(they never leave this process in the clear) and serves NUM_REQUESTS private predictions.",
    )
    serve.add_argument("model", metavar="MODEL", help="Keras model file (.h5 or .keras)")
    serve.add_argument("--cluster", required=True, metavar="CLUSTER_JSON", help="the cluster's configuration")
    serve.add_argument("--num-requests", type=int, required=True, metavar="N", help="input rows to answer (a query of k rows spends k)")
    serve.add_argument("--name", default="model", help="name clients query (default: model)")
    serve.add_argument("--identity", default="model_owner", help="certificate identity (default: model_owner)")
    serve.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    serve.set_defaults(func=_serve)

    query = subparsers.add_parser(
        "query",
        help="get a private prediction: the input is secret-shared, only this process sees the logits",
        description="Secret-shares the input array (batch first, or a single example) and prints the logits "
        "and predicted class of each example.  The servers never see the input, the model owner never sees "
        "either.",
    )
    query.add_argument("input", metavar="INPUT_NPY", help="NumPy .npy file with the input")
    query.add_argument("--cluster", required=True, metavar="CLUSTER_JSON", help="the cluster's configuration")
    query.add_argument("--name", default="model", help="model name (default: model)")
    query.add_argument("--identity", default="client", help="certificate identity (default: client)")
    query.add_argument("--input-shape", default=None, metavar="D1,D2,...",
                       help="the model's input shape without the batch axis (default: the file's shape)")
    query.add_argument("--output", default=None, metavar="OUT_NPY", help="also save the logits here")
    query.set_defaults(func=_query)


def _cluster(path: str, identity: str):
    from tfppml.net.cluster import Cluster

    return Cluster.from_config(path, identity=identity).start()


def _serve(args: argparse.Namespace) -> int:
    import tensorflow as tf

    from tfppml.keras import KerasHook

    if args.num_requests < 1:
        print("tfppml serve: --num-requests must be at least 1", file=sys.stderr)
        return 2
    KerasHook(tf.keras)
    model = tf.keras.models.load_model(args.model, compile=False)
    cluster = _cluster(args.cluster, args.identity)
    start = time.perf_counter()
    model.share(cluster, name=args.name, identity=args.identity)
    print(f"shared {args.model} as {args.name!r} in {time.perf_counter() - start:.2f} s; serving "
          f"{args.num_requests} input row(s)", flush=True)
    served = model.serve(args.num_requests, timeout=args.timeout)
    print(f"served {served} request(s)", flush=True)
    return 0


def _query(args: argparse.Namespace) -> int:
    from tfppml.keras import Client

    x = np.load(args.input)
    if args.input_shape:
        feature_shape = tuple(int(d) for d in args.input_shape.split(","))
        if x.shape == feature_shape:
            x = x[None]
    else:
        feature_shape = x.shape[1:] if x.ndim > 1 else x.shape
        if x.ndim == 1:
            x = x[None]
    cluster = _cluster(args.cluster, args.identity)
    client = Client(args.identity).connect_to_model((None, *feature_shape), (None, None), cluster, model_name=args.name)
    start = time.perf_counter()
    logits = client.query_model(x)
    elapsed = time.perf_counter() - start
    for i, row in enumerate(logits):
        print(f"example {i}: predicted {int(np.argmax(row))}  logits {np.array2string(row, precision=3)}")
    print(f"{len(logits)} prediction(s) in {elapsed:.3f} s")
    if args.output:
        np.save(args.output, logits)
    return 0
