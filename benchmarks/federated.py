"""Round time of FedAvg on TFF's native runtime: plain vs secure aggregation vs DP, for 10/100/1000 clients.

Every client of the population takes part in every round (clients per round = clients).  Data: sklearn
digits split IID; model: softmax regression (650 parameters).  For each client count, one trainer per mode
is built and run for one untimed warm-up round (TFF compiles and starts its worker); then the modes take
turns, one timed round each per cycle, for `--rounds` cycles, so that load from other jobs on the machine falls
on all modes alike.  Reported: the median round time and its ratio to plain FedAvg measured in the same cycles,
and for the secure modes the median split into "prepare" (key exchange, or waiting for the helper, and building
the client data; Python) and "tff" (the TFF call: client training, masking, aggregation, unmasking), and the
median CPU seconds per round of this process and its children (worker_binary, the key-exchange helper), which
other jobs on a shared machine disturb less than wall time. Modes:

  plain                 tff.learning.algorithms.build_weighted_fed_avg
  secure                secure aggregation, complete graph (Bonawitz: every pair of clients masks), key
                        exchange (X25519, Shamir, AES-GCM routing, mask expansion; Python, O(n^2)) run inline
                        before each round: its time is included
  secure-sparse         the same with the SecAgg+ graph, neighbours="auto" (34 neighbours at 100 clients,
                        38 at 1000; at 10 clients "auto" is the complete graph): O(n log n)
  secure-sparse-overlap secure-sparse with the round's key exchange run in a helper process during the
                        previous round (FederatedTrainer(overlap_key_exchange=True)).  Per cycle it runs two
                        rounds back to back and times the second (the first, untimed, found its exchange done
                        during the other modes' rounds), so the timed round's exchange overlaps only its own
                        trainer's previous round; the saving needs a core the TFF worker leaves free
  secure-tfmask         secure (complete graph) with the masks expanded by ChaCha20 in TF ops inside TFF's
                        worker instead of with the key exchange (precomputed_masks=False; not run by default)
  secure-sparse-tfmask  likewise for secure-sparse (not run by default)
  dp                    DP-FedAvg (TFF's Gaussian fixed-clip factory, no secure aggregation)

The complete-graph modes are skipped above --secure-max clients (default 100): at 1000 clients their exchange
is ~2 million X25519 agreements per round (quadratic; not run).

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
    "secure-sparse": {"secure": True, "neighbours": "auto"},
    "secure-sparse-overlap": {"secure": True, "neighbours": "auto", "overlap_key_exchange": True},
    "secure-tfmask": {"secure": True, "precomputed_masks": False},
    "secure-sparse-tfmask": {"secure": True, "neighbours": "auto", "precomputed_masks": False},
    "dp": {"dp_noise": 1.0},
}
DEFAULT_MODES = ("plain", "secure", "secure-sparse", "secure-sparse-overlap", "dp")
COMPLETE_GRAPH = ("secure", "secure-tfmask")


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (TFF's worker_binary, helpers), from
    /proc (Linux)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")" closing the command name: state, ppid, ..., utime and stime are fields 14 and 15 of stat.
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--clients", "--sizes", dest="clients", default="10,100,1000", help="comma-separated client counts")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (cycles over the modes) after one warm-up")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--secure-max", type=int, default=100, help="largest client count to run the complete-graph modes at")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"--modes must be a subset of {','.join(MODES)}, got {bad}")
    if args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    install_worker_reaper()

    import tensorflow as tf
    import tensorflow_federated as tff

    from tfppml.federated import data as fdata
    from tfppml.federated.learning import FederatedTrainer

    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"versions: python {platform.python_version()}, tensorflow {tf.__version__}, tff {tff.__version__}, "
          f"cpus {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")
    print(f"timing: median of {args.rounds} rounds per mode, modes interleaved round by round, after 1 warm-up "
          f"round each; wall time of FederatedTrainer.run_round")
    (x, y), _ = fdata.load("digits")
    model_fn = fdata.make_model_fn(64, 10)
    print(f"{'clients':>8} {'mode':>22} {'k':>4} {'median s/round':>15} {'x plain':>8} {'prepare':>8} {'tff':>7} "
          f"{'cpu s':>7} {'x plain':>8}  rounds (s)")
    for n in (int(s) for s in args.clients.split(",")):
        cds = fdata.client_datasets(x, y, fdata.partition(y, n, "iid", seed=0))
        trainers = {}
        try:
            for mode in modes:
                if mode in COMPLETE_GRAPH and n > args.secure_max:
                    continue
                trainers[mode] = FederatedTrainer(cds, model_fn, clients_per_round=n, **MODES[mode])
                trainers[mode].run_round()  # warm-up: compilation and worker start
            times = {m: [] for m in trainers}
            parts = {m: [] for m in trainers}
            for _ in range(args.rounds):
                for mode, trainer in trainers.items():
                    if trainer.overlap_key_exchange:
                        # Untimed: its exchange ran in the helper during the other modes' rounds.  It starts the
                        # next round's exchange, which then overlaps only this round.
                        trainer.run_round()
                    cpu = _tree_cpu_seconds()
                    start = time.perf_counter()
                    trainer.run_round()
                    times[mode].append(time.perf_counter() - start)
                    parts[mode].append({**trainer.last_round_seconds, "cpu": _tree_cpu_seconds() - cpu})
        finally:
            for trainer in trainers.values():
                trainer.close()
        base = statistics.median(times["plain"]) if "plain" in times else None
        base_cpu = statistics.median(p["cpu"] for p in parts["plain"]) if "plain" in times else None
        for mode in modes:
            if mode not in trainers:
                print(f"{n:>8} {mode:>22} {'':>4} {'not run':>15} {'-':>8}  (complete graph, n > --secure-max "
                      f"{args.secure_max}; see --help)")
                continue
            med = statistics.median(times[mode])
            ratio = f"{med / base:8.2f}" if base else f"{'-':>8}"
            prep = statistics.median(p["prepare"] for p in parts[mode])
            tffs = statistics.median(p["tff"] for p in parts[mode])
            cpu = statistics.median(p["cpu"] for p in parts[mode])
            cpu_ratio = f"{cpu / base_cpu:8.2f}" if base_cpu else f"{'-':>8}"
            k = trainers[mode].neighbours if trainers[mode].secure else None
            k = "-" if not trainers[mode].secure else (str(k) if k else "all")
            print(f"{n:>8} {mode:>22} {k:>4} {med:>15.3f} {ratio} {prep:>8.3f} {tffs:>7.3f} {cpu:>7.2f} {cpu_ratio}  "
                  f"{' '.join(f'{t:.2f}' for t in times[mode])}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
