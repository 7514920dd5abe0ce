#!/usr/bin/env python
"""Federated training on TensorFlow Federated: FedAvg or Reptile, optionally with secure aggregation and DP.

Writes a metrics CSV (one row per round) and a PNG plot of accuracy and loss per round, and leaves no TFF
``worker_binary`` process behind (it is reaped at exit and on SIGTERM/SIGINT).

Examples:
    python scripts/federated_train.py                                   # digits, 20 clients, plain FedAvg
    python scripts/federated_train.py --secure --partition dirichlet:0.5
    python scripts/federated_train.py --dp-noise 1.0 --secure
    python scripts/federated_train.py --algorithm reptile --secure --server-lr 0.5
    python scripts/federated_train.py --secure --remote-worker spawn            # TFF in a 2nd process
    python scripts/federated_train.py --secure --remote-worker 10.0.0.5:8000    # worker started there with
                                                  # python -m tfppml.federated.remote --port 8000

Remote execution (--remote-worker): every TFF computation of a round runs in a separate worker_binary
process reached over gRPC; the driver (this script) keeps sampling, the secure-aggregation key exchange and
evaluation.  TFF's executor service uses insecure channels: plaintext, unauthenticated gRPC, and the worker
listens on every interface; anyone who can reach its port can run computations and read the clients' updates
and mask material.  Use it only inside a trusted network (loopback, a private network, an SSH tunnel).
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tfppml.federated.runtime import install_worker_reaper  # noqa: E402


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text}")
    return value


def _neighbours(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an even int >= 2, got {text!r}") from None
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an even int >= 2, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Remote execution") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clients", type=_positive_int, default=20, help="simulated clients (default 20)")
    p.add_argument("--rounds", type=_positive_int, default=15, help="training rounds (default 15)")
    p.add_argument("--clients-per-round", type=_positive_int, default=10, help="clients sampled per round")
    p.add_argument("--partition", default="iid", help="iid or dirichlet:ALPHA (default iid)")
    p.add_argument("--secure", action="store_true", help="secure aggregation of the model updates")
    p.add_argument(
        "--neighbours",
        type=_neighbours,
        default=None,
        help="with --secure: 'auto' or an even k masks each client with k random neighbours (SecAgg+, "
        "O(k) work per client; see tfppml.federated.secure_agg for what the server can learn); "
        "default: every pair of clients (Bonawitz et al.)",
    )
    p.add_argument("--dp-noise", type=float, default=None, help="DP-FedAvg noise multiplier (default: no DP)")
    p.add_argument("--dp-clip", type=float, default=0.5, help="DP L2 clip norm of a client update")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="DP delta for the reported epsilon")
    p.add_argument("--algorithm", choices=("fedavg", "reptile"), default="fedavg")
    p.add_argument("--dataset", choices=("digits", "fashion_mnist", "mnist5k"), default="digits")
    p.add_argument("--client-lr", type=float, default=0.1)
    p.add_argument("--server-lr", type=float, default=1.0, help="server learning rate (Reptile: meta step size)")
    p.add_argument("--local-steps", type=_positive_int, default=5, help="Reptile's local SGD steps")
    p.add_argument("--batch-size", type=_positive_int, default=20)
    p.add_argument("--dropout", type=float, default=0.0, help="fraction of each round's clients that drop out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--remote-worker",
        default=None,
        metavar="HOST:PORT|spawn",
        help="run TFF's computations on the worker_binary at HOST:PORT (start one there with `python -m "
        "tfppml.federated.remote --port PORT`), or `spawn` one on loopback for this run. INSECURE: plaintext, "
        "unauthenticated gRPC; trusted networks only. TFF 0.87 runs a whole round on one worker.",
    )
    p.add_argument("--out", default="federated_out", help="directory for metrics.csv and metrics.png")
    args = p.parse_args(argv)
    if args.clients_per_round > args.clients:
        p.error(f"--clients-per-round must be <= --clients ({args.clients}), got {args.clients_per_round}")
    if args.dp_noise is not None and args.algorithm != "fedavg":
        p.error("--dp-noise is supported with --algorithm fedavg only")
    if args.remote_worker not in (None, "spawn"):
        host, sep, port = args.remote_worker.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            p.error(f"--remote-worker must be HOST:PORT (port 1..65535) or 'spawn', got {args.remote_worker!r}")
    return args


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(rounds, [r["test_accuracy"] for r in rows], label="test")
    ax1.plot(rounds, [r["train_accuracy"] for r in rows], label="train (clients)")
    ax1.set_xlabel("round"), ax1.set_ylabel("accuracy"), ax1.legend()
    ax2.plot(rounds, [r["test_loss"] for r in rows], label="test")
    ax2.plot(rounds, [r["train_loss"] for r in rows], label="train (clients)")
    ax2.set_xlabel("round"), ax2.set_ylabel("loss"), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    install_worker_reaper()  # before TFF starts its worker_binary

    from tfppml.federated import data as fdata

    fdata.parse_partition(args.partition)  # fail early on a malformed --partition
    worker = None
    if args.remote_worker is not None:
        from tfppml.federated import remote

        if args.remote_worker == "spawn":
            worker = remote.start_remote_worker()  # stopped below; reaped at exit if this script is killed
            address = worker.address
        else:
            address = args.remote_worker
        remote.set_remote_worker(address)
        print(f"TFF computations run on the worker at {address} (insecure gRPC)", flush=True)
    try:
        return _train(args)
    finally:
        if worker is not None:
            worker.stop()


def _train(args) -> int:
    from tqdm import tqdm

    from tfppml.federated import data as fdata
    from tfppml.federated.learning import FederatedTrainer

    (x, y), (xt, yt) = fdata.load(args.dataset, seed=args.seed)
    parts = fdata.partition(y, args.clients, args.partition, seed=args.seed)
    cds = fdata.client_datasets(x, y, parts, batch_size=args.batch_size)
    model_fn = fdata.make_model_fn(x.shape[1], int(y.max()) + 1)
    trainer = FederatedTrainer(
        cds,
        model_fn,
        algorithm=args.algorithm,
        secure=args.secure,
        neighbours=args.neighbours,
        dp_noise=args.dp_noise,
        clients_per_round=args.clients_per_round,
        client_lr=args.client_lr,
        server_lr=args.server_lr,
        local_steps=args.local_steps,
        dp_clip=args.dp_clip,
        dp_delta=args.dp_delta,
        dropout=args.dropout,
        seed=args.seed,
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(range(1, args.rounds + 1), desc=f"{args.algorithm}{' secure' if args.secure else ''}", unit="round")
    for r in bar:
        start = time.perf_counter()
        m = trainer.run_round()
        seconds = time.perf_counter() - start
        loss, acc = fdata.evaluate(model_fn, trainer.model_weights(), xt, yt)
        row = {
            "round": r,
            "train_loss": m["loss"],
            "train_accuracy": m["accuracy"],
            "test_loss": loss,
            "test_accuracy": acc,
            "clients": m["clients"],
            "dropped": m.get("dropped", 0),
            "epsilon": m.get("epsilon", ""),
            "seconds": round(seconds, 3),
        }
        rows.append(row)
        post = {"acc": f"{acc:.3f}", "loss": f"{loss:.3f}"}
        if "epsilon" in m:
            post["eps"] = f"{m['epsilon']:.2f}"
        bar.set_postfix(post)
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "metrics.png")
    last = rows[-1]
    print(f"final test accuracy {last['test_accuracy']:.4f}, loss {last['test_loss']:.4f}; wrote {out}/metrics.csv, {out}/metrics.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
