"""Round time of FedAvg on TFF's native runtime: plain vs secure aggregation vs DP, for 10/100/1000 clients.

Every client of the population takes part in every round (clients per round = clients).  Data: sklearn
digits split IID; model: softmax regression (650 parameters).  The first round of each configuration (TFF
compiles and starts its worker) is a warm-up and is not timed; the median of the next `--rounds` is reported,
with the ratio to plain FedAvg at the same size.  Modes:

  plain          tff.learning.algorithms.build_weighted_fed_avg
  secure         secure aggregation (complete graph: every pair of clients masks), key exchange (X25519,
                 Shamir, AES-GCM routing; Python, O(n^2)) run inline before each round: its time is included
  secure-overlap the same, with the next round's key exchange run in a helper process while TFF runs this
                 round (FederatedTrainer(overlap_key_exchange=True)); steady-state rounds, the first pays the
                 exchange in full; the saving needs a core the TFF worker does not use
  dp             DP-FedAvg (TFF's Gaussian fixed-clip factory, no secure aggregation)

Secure aggregation at 1000 clients is skipped unless --secure-max allows it: the complete-graph key exchange
alone is ~2 million X25519 exchanges plus Shamir sharing among 1000 (quadratic: ~100x the 100-client
exchange; estimated from the 100-client profile, not run),
and each client expands 999 ChaCha20 masks of the model size inside TFF's worker.

    .venv/bin/python benchmarks/federated.py                      # 10, 100, 1000 clients
    .venv/bin/python benchmarks/federated.py --clients 10,100     # skip the 1000-client rounds
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

MODES = {
    "plain": {},
    "secure": {"secure": True},
    "secure-overlap": {"secure": True, "overlap_key_exchange": True},
    "dp": {"dp_noise": 1.0},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--clients", "--sizes", dest="clients", default="10,100,1000", help="comma-separated client counts")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (after one warm-up)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--secure-max", type=int, default=100, help="largest client count to run the secure modes at")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"--modes must be a subset of {','.join(MODES)}, got {bad}")
    install_worker_reaper()

    import tensorflow as tf
    import tensorflow_federated as tff

    from tfppml.federated import data as fdata
    from tfppml.federated.learning import FederatedTrainer

    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"versions: python {platform.python_version()}, tensorflow {tf.__version__}, tff {tff.__version__}, "
          f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")
    print(f"timing: median of {args.rounds} rounds after 1 warm-up round; wall time of FederatedTrainer.run_round")
    (x, y), _ = fdata.load("digits")
    model_fn = fdata.make_model_fn(64, 10)
    print(f"{'clients':>8} {'mode':>15} {'median s/round':>15} {'x plain':>8}  rounds (s)")
    for n in (int(s) for s in args.clients.split(",")):
        cds = fdata.client_datasets(x, y, fdata.partition(y, n, "iid", seed=0))
        base = None
        for mode in modes:
            if MODES[mode].get("secure") and n > args.secure_max:
                print(f"{n:>8} {mode:>15} {'not run':>15} {'-':>8}  (n > --secure-max {args.secure_max}; see --help)")
                continue
            with FederatedTrainer(cds, model_fn, clients_per_round=n, **MODES[mode]) as trainer:
                trainer.run_round()  # warm-up: compilation and worker start
                times = []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    trainer.run_round()
                    times.append(time.perf_counter() - start)
            med = statistics.median(times)
            base = med if mode == "plain" else base
            ratio = f"{med / base:8.2f}" if base else f"{'-':>8}"
            print(f"{n:>8} {mode:>15} {med:>15.3f} {ratio}  {' '.join(f'{t:.2f}' for t in times)}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
