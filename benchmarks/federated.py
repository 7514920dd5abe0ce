"""Round time of FedAvg on TFF's native runtime: plain vs secure aggregation vs DP, for 10/100/1000 clients.

Every client of the population takes part in every round (clients per round = clients).  Data: sklearn
digits split IID; model: softmax regression (650 parameters).  The first round of each configuration (TFF
compiles and starts its worker) is a warm-up and is not timed; the median of the next `--rounds` is reported,
with the ratio to plain FedAvg at the same size.  Secure rounds include the Python key exchange (X25519,
Shamir, AES-GCM routing), which is O(n^2) in the number of clients.

    .venv/bin/python benchmarks/federated.py                   # 10, 100, 1000 clients
    .venv/bin/python benchmarks/federated.py --sizes 10,100    # skip the slow 1000-client secure rounds
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
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tfppml.federated.runtime import install_worker_reaper  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000", help="comma-separated client counts")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (after one warm-up)")
    p.add_argument("--modes", default="plain,secure,dp", help="comma-separated subset of plain,secure,dp")
    args = p.parse_args(argv)
    install_worker_reaper()

    import tensorflow as tf
    import tensorflow_federated as tff

    from tfppml.federated import data as fdata
    from tfppml.federated.learning import FederatedTrainer

    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"versions: python {platform.python_version()}, tensorflow {tf.__version__}, tff {tff.__version__}, "
          f"cpus {os.cpu_count()}")
    (x, y), _ = fdata.load("digits")
    model_fn = fdata.make_model_fn(64, 10)
    modes = args.modes.split(",")
    print(f"{'clients':>8} {'mode':>7} {'median s/round':>15} {'x plain':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        cds = fdata.client_datasets(x, y, fdata.partition(y, n, "iid", seed=0))
        base = None
        for mode in modes:
            kwargs = {"plain": {}, "secure": {"secure": True}, "dp": {"dp_noise": 1.0}}[mode]
            trainer = FederatedTrainer(cds, model_fn, clients_per_round=n, **kwargs)
            trainer.run_round()  # warm-up: compilation and worker start
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                trainer.run_round()
                times.append(time.perf_counter() - start)
            med = statistics.median(times)
            base = med if mode == "plain" else base
            ratio = f"{med / base:8.2f}" if base else f"{'-':>8}"
            print(f"{n:>8} {mode:>7} {med:>15.3f} {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
