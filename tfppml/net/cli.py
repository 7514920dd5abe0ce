"""`tfppml cluster ...` and `tfppml worker` sub-commands.

    tfppml cluster keys --parties 3 --out certs/                 # CA + server0..server2 keys and certificates
    tfppml cluster keys --parties 0 --names client --out certs/  # add an identity signed by the same CA
    tfppml cluster config --parties 3 --base-port 4000 --cert-dir certs --out cluster.json
    tfppml worker --name server0 --config cluster.json --service mpc

A worker prints one line `TFPPML-READY name=<name> port=<port> pid=<pid>` on stdout once it listens (and writes
the same facts as JSON to --ready-file if given), then serves until SIGTERM/SIGINT, or until the process given by
--exit-with-parent is no longer its parent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

__all__ = ["READY_PREFIX", "register"]

READY_PREFIX = "TFPPML-READY"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `cluster` and `worker` to the tfppml command line."""
    cluster = subparsers.add_parser(
        "cluster",
        help="create certificates and configuration for a cluster of workers",
        description="Create the TLS certificates and the cluster.json that workers and drivers share.",
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    keys = actions.add_parser(
        "keys",
        help="write a CA and a key + certificate per identity",
        description=(
            "Write ca.crt/ca.key and NAME.key/NAME.crt for each identity into --out. Parties are named "
            "server0..server{N-1}; --names adds identities such as a model owner or a client. An existing CA in "
            "--out is reused, so identities can be added later. Keys are written with mode 0600: give each "
            "identity its own key and ca.crt only."
        ),
    )
    keys.add_argument("--parties", type=int, default=3, metavar="N", help="number of parties (default 3)")
    keys.add_argument("--names", default="", metavar="A,B,...", help="extra identities, comma-separated")
    keys.add_argument("--out", required=True, metavar="DIR", help="output directory")
    keys.add_argument("--force", action="store_true", help="replace existing keys of the same identities")
    keys.set_defaults(func=_run_keys)

    config = actions.add_parser(
        "config",
        help="write a cluster.json",
        description="Write a cluster.json for N parties on one host with consecutive ports.",
    )
    config.add_argument("--parties", type=int, default=3, metavar="N", help="number of parties (default 3)")
    config.add_argument("--host", default="localhost", help="host of every party (default localhost)")
    config.add_argument(
        "--base-port", type=int, default=4000, help="port of server0; others follow (default 4000)"
    )
    config.add_argument(
        "--cert-dir", required=True, metavar="DIR", help="directory written by `cluster keys`"
    )
    config.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before a peer counts as unavailable"
    )
    config.add_argument(
        "--max-message-bytes", type=int, default=None, help="largest message (default 256 MiB)"
    )
    config.add_argument(
        "--owners", default="driver,model_owner", metavar="A,B",
        help="identities that may set up and serve (comma-separated; default driver,model_owner); every other "
        "identity may only query served models",
    )
    config.add_argument("--out", required=True, metavar="FILE", help="where to write cluster.json")
    config.set_defaults(func=_run_config)
    cluster.set_defaults(func=lambda args: (cluster.print_help(), 2)[1])

    worker = subparsers.add_parser(
        "worker",
        help="run one party of a cluster",
        description=(
            "Run one worker process: it serves its service to drivers and exchanges protocol messages with the "
            f"other parties over mutual TLS. Prints '{READY_PREFIX} name=... port=... pid=...' when listening."
        ),
    )
    worker.add_argument("--name", required=True, help="this worker's party name in the cluster config")
    worker.add_argument("--config", required=True, metavar="FILE", help="cluster.json")
    worker.add_argument(
        "--service",
        default=None,
        help="registered service name (echo, mpc, remote, ckks) or module:factory (default mpc, or remote "
        "when --data or --policy is given)",
    )
    worker.add_argument("--data", default=None, metavar="NPZ",
                        help="data-owner worker: the datasets it holds (same as --option data=NPZ)")
    worker.add_argument("--policy", default=None, metavar="YAML",
                        help="data-owner worker: its policy (same as --option policy=YAML)")
    worker.add_argument("--audit", default=None, metavar="LOG",
                        help="data-owner worker: its audit log (same as --option audit=LOG)")
    worker.add_argument("--audit-key", default=None, metavar="KEY", dest="audit_key",
                        help="data-owner worker: the key authenticating its audit log and privacy ledger, kept "
                             "outside the log's directory (same as --option audit_key=KEY; `tfppml audit keygen`)")
    worker.add_argument("--port", type=int, default=None, metavar="PORT",
                        help="listen on this port of the configured host (instead of the config's port)")
    worker.add_argument(
        "--listen", default=None, metavar="HOST:PORT", help="bind address (default: from config)"
    )
    worker.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for the service (repeatable)",
    )
    worker.add_argument(
        "--ready-file", default=None, metavar="FILE", help="write name/port/pid here when ready"
    )
    worker.add_argument(
        "--exit-with-parent",
        type=int,
        default=None,
        metavar="PID",
        help="exit once PID (the launching process) is no longer this process's parent",
    )
    worker.add_argument(
        "--orphan-cleanup",
        default=None,
        metavar="DIR",
        help="with --exit-with-parent: delete DIR (the launcher's temporary files and keys) if the launcher dies",
    )
    worker.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=16,
        metavar="N",
        help="driver calls served at once (default 16)",
    )
    worker.add_argument(
        "--max-calls-per-identity",
        type=int,
        default=None,
        metavar="N",
        help="of those, the most one identity may hold at once (default a quarter of --max-concurrent-calls)",
    )
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(func=_run_worker)


def _fail(message: str) -> int:
    print(f"tfppml: error: {message}", file=sys.stderr)
    return 2


def _run_keys(args: argparse.Namespace) -> int:
    from tfppml.net.certs import generate_certificates, party_names

    if args.parties < 0:
        return _fail(f"--parties must be >= 0, got {args.parties}")
    names = party_names(args.parties) + [name.strip() for name in args.names.split(",") if name.strip()]
    try:
        written = generate_certificates(args.out, names, overwrite=args.force)
    except ValueError as err:
        return _fail(str(err))
    for path in written:
        print(path)
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from tfppml.net.certs import party_names
    from tfppml.net.config import DEFAULT_MAX_MESSAGE_BYTES, ClusterConfig

    if args.parties < 1:
        return _fail(f"--parties must be >= 1, got {args.parties}")
    out = Path(args.out)
    try:
        config = ClusterConfig(
            parties={
                name: f"{args.host}:{args.base_port + i}" for i, name in enumerate(party_names(args.parties))
            },
            cert_dir=os.path.relpath(Path(args.cert_dir).resolve(), out.parent.resolve()),
            timeout=args.timeout,
            max_message_bytes=args.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES,
            owners=tuple(o.strip() for o in args.owners.split(",") if o.strip()),
            source="tfppml cluster config",
        )
    except (TypeError, ValueError) as err:
        return _fail(str(err))
    print(config.save(out))
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s",
    )
    from tfppml.net.config import load_config
    from tfppml.net.memory import tune_allocator
    from tfppml.net.server import WorkerServer

    tune_allocator()  # before the first large array: see tfppml.net.memory

    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return _fail(f"--option must be KEY=VALUE, got {item!r}")
        options[key] = value
    for key in ("data", "policy", "audit", "audit_key"):
        value = getattr(args, key)
        if value is not None:
            options[key] = os.path.abspath(value)  # the service may run in another working directory
    service = args.service or ("remote" if args.data or args.policy else "mpc")
    try:
        config = load_config(args.config)
        listen = args.listen
        if args.port is not None:
            if listen is not None:
                return _fail("give either --listen or --port, not both")
            if not 0 < args.port < 65536:
                return _fail(f"--port must be in 1..65535, got {args.port}")
            host = config.address(args.name).rsplit(":", 1)[0]
            listen = f"{host}:{args.port}"
        server = WorkerServer(
            args.name,
            config,
            service,
            listen=listen,
            max_concurrent_calls=args.max_concurrent_calls,
            max_calls_per_identity=args.max_calls_per_identity,
            service_options=options or None,
        )
        port = server.start()
    except (TypeError, ValueError, RuntimeError) as err:
        return _fail(str(err))

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    facts = {"name": args.name, "port": port, "pid": os.getpid()}
    if args.ready_file:
        # Write then rename, so that a launcher never reads a half-written file.
        tmp = Path(f"{args.ready_file}.tmp")
        tmp.write_text(json.dumps(facts))
        tmp.replace(args.ready_file)
    print(f"{READY_PREFIX} name={args.name} port={port} pid={os.getpid()}", flush=True)
    orphaned = False
    try:
        while not stop.wait(0.25):
            if args.exit_with_parent is not None and os.getppid() != args.exit_with_parent:
                logging.getLogger(__name__).warning(
                    "parent process %d is gone; exiting", args.exit_with_parent
                )
                orphaned = True
                break
    finally:
        server.stop(grace=1.0)
    if orphaned and args.orphan_cleanup:
        # The launcher died without cleaning up (e.g. SIGKILL): its temporary directory holds private keys.
        # Every worker of the cluster tries; rmtree with ignore_errors makes that race harmless.
        shutil.rmtree(args.orphan_cleanup, ignore_errors=True)
    return 0
