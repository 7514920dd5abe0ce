"""A cluster of worker processes, described from Python and (for local clusters) started and stopped from it.

Auto-managed (the default): `start()` writes certificates (into a temporary directory unless `cert_dir` is given)
and a cluster.json, launches one `python -m tfppml.cli worker ...` process per worker, and waits until each has
written its ready file. `stop()`, leaving the `with` block, garbage collection of the Cluster and interpreter exit
all terminate the processes; the workers also exit on their own when the launching process dies (even by
SIGKILL), and then delete the cluster's temporary directory, so neither a worker nor a temporary key outlives
its driver.

Not auto-managed: the workers already run elsewhere (e.g. started with `tfppml worker` on three hosts); `start()`
only checks that each one answers, using a driver identity from `cert_dir`.

Example:
    >>> cluster = Cluster(Worker("localhost:0"), Worker("localhost:0"), Worker("localhost:0"), service="echo")
    >>> with cluster:                                                        # doctest: +SKIP
    ...     party = RemoteParty("server0", cluster.config, cluster.identity("driver"))
    ...     party.call({"op": "echo"})[0]["party"]
    'server0'
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import tfppml
from tfppml.errors import PartyUnavailableError
from tfppml.net.certs import Identity, check_identity_name, generate_certificates
from tfppml.net.client import RemoteParty
from tfppml.net.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OWNERS,
    DEFAULT_TIMEOUT,
    ClusterConfig,
    load_config,
    parse_address,
)
from tfppml.net.services import SERVICES

__all__ = ["DEFAULT_IDENTITIES", "Cluster", "Worker"]

#: Driver identities that an auto-managed cluster makes certificates for, besides its workers.
DEFAULT_IDENTITIES: tuple[str, ...] = ("driver", "model_owner", "client")
_STOP_GRACE = 5.0  # seconds a worker gets to exit after SIGTERM before SIGKILL
_LOG_TAIL = 4000


@dataclass(frozen=True)
class Worker:
    """Where one worker listens, and optionally its party name.

    Args:
      address: "host:port"; port 0 lets an auto-managed cluster pick a free port.
      name: Party name; default "server<i>" by position in the cluster.

    Raises:
      ValueError, TypeError: A malformed address or name.
    """

    address: str
    name: str | None = None

    def __post_init__(self) -> None:
        parse_address(self.address, arg="Worker address", allow_port_zero=True)
        if self.name is not None:
            check_identity_name(self.name, arg="Worker name")


class Cluster:
    """Workers of one cluster: their configuration, certificates and (if auto-managed) processes.

    Args:
      *workers: At least one `Worker`.
      auto_managed: Start and stop local worker processes (True), or connect to running ones (False).
      service: Service the workers run (registered name or "module:factory"; see `tfppml.net.services`).
      cert_dir: Certificates to use. Auto-managed default: fresh ones in a temporary directory, made for the
        workers and `identities`. Required when not auto-managed.
      timeout: Cluster timeout in seconds (calls, peer messages; a dead party is reported after this long).
      max_message_bytes: Largest message.
      identities: Driver identities to create certificates for (auto-managed, without `cert_dir`).
      owners: Identities the services treat as owners (default driver and model_owner): the MPC servers let
        only them set up and serve; every other identity may only query (see docs/mpc.md).
      start_timeout: Seconds `start()` waits for all workers.
      service_options: `--option KEY=VALUE` pairs passed to the service factory.

    Raises:
      ValueError: No workers, duplicate names or addresses, or bad values (named).
    """

    def __init__(
        self,
        *workers: Worker,
        auto_managed: bool = True,
        service: str = "mpc",
        cert_dir: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        identities: Sequence[str] = DEFAULT_IDENTITIES,
        owners: Sequence[str] = DEFAULT_OWNERS,
        start_timeout: float = 120.0,
        service_options: Mapping[str, str] | None = None,
    ) -> None:
        if not workers:
            raise ValueError("Cluster needs at least one Worker")
        for index, worker in enumerate(workers):
            if not isinstance(worker, Worker):
                raise TypeError(f"Cluster argument #{index} must be a Worker, got {type(worker).__name__}")
        names = [worker.name or f"server{index}" for index, worker in enumerate(workers)]
        if len(set(names)) != len(names):
            raise ValueError(f"Cluster workers have duplicate names: {names}")
        if not isinstance(service, str) or not service:
            raise ValueError(f"`service` must be a service name or 'module:factory', got {service!r}")
        if not auto_managed and cert_dir is None:
            raise ValueError(
                "`cert_dir` is required when auto_managed=False (the running workers' certificates)"
            )
        if not (isinstance(start_timeout, (int, float)) and start_timeout > 0):
            raise ValueError(f"`start_timeout` must be a positive number of seconds, got {start_timeout!r}")
        for index, identity in enumerate(identities):
            check_identity_name(identity, arg=f"identities[{index}]")
        self._workers = dict(zip(names, workers))
        self._auto_managed = bool(auto_managed)
        self._service = service
        self._cert_dir = Path(cert_dir) if cert_dir is not None else None
        self._identities = tuple(identities)
        self._start_timeout = float(start_timeout)
        self._service_options = dict(service_options or {})
        # Validated now (ports 0 are placeholders until start() picks real ones).
        self._settings = {"timeout": timeout, "max_message_bytes": max_message_bytes, "owners": tuple(owners)}
        self._config: ClusterConfig | None = None
        if not auto_managed:
            self._config = self._make_config(
                {name: w.address for name, w in self._workers.items()}, self._cert_dir
            )
        else:
            self._make_config({name: f"localhost:{i + 1}" for i, name in enumerate(names)}, Path("."))
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._workdir: Path | None = None
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str], *, identity: str = "driver", **kwargs: object
    ) -> Cluster:
        """A not-auto-managed cluster described by a cluster.json (workers started elsewhere).

        Args:
          path: The cluster.json.
          identity: The driver identity `start()` pings the workers with.
          **kwargs: Further `Cluster` arguments.
        """
        config = load_config(path)
        workers = [Worker(address, name) for name, address in config.parties.items()]
        return cls(
            *workers,
            auto_managed=False,
            cert_dir=config.cert_dir,
            timeout=config.timeout,
            max_message_bytes=config.max_message_bytes,
            identities=(identity,),
            **kwargs,  # type: ignore[arg-type]
        )

    # -- accessors

    @property
    def names(self) -> tuple[str, ...]:
        """Party names, in order."""
        return tuple(self._workers)

    @property
    def config(self) -> ClusterConfig:
        """The cluster configuration (for auto-managed clusters: after `start()`, when ports are known).

        Raises:
          RuntimeError: An auto-managed cluster that is not started.
        """
        if self._config is None:
            raise RuntimeError("Cluster.config: start() the auto-managed cluster first")
        return self._config

    @property
    def config_path(self) -> Path | None:
        """The cluster.json written for the workers (auto-managed and started), else None."""
        return None if self._workdir is None else self._workdir / "cluster.json"

    @property
    def running(self) -> bool:
        """True while started (auto-managed: processes launched and not stopped)."""
        return self._finalizer is not None and self._finalizer.alive

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """Worker name -> process (auto-managed clusters; a copy)."""
        return dict(self._processes)

    def identity(self, name: str) -> Identity:
        """TLS material of an identity of this cluster (a worker or a driver), loaded from its cert_dir.

        Raises:
          ValueError: No such identity's files in the cert_dir.
        """
        return Identity.load(self.config.cert_dir, name)

    def remote(self, name: str, identity: str | Identity = "driver") -> RemoteParty:
        """A `RemoteParty` connection to worker `name` as `identity`."""
        return RemoteParty(
            name, self.config, identity if isinstance(identity, Identity) else self.identity(identity)
        )

    def worker_log(self, name: str) -> str:
        """The stderr a (auto-managed) worker has written so far ("" if none)."""
        if self._workdir is None:
            return ""
        path = self._workdir / f"{name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- lifecycle

    def start(self) -> Cluster:
        """Starts the workers (auto-managed) or checks that they answer; returns self.

        Raises:
          RuntimeError: Already started.
          ValueError: The service's module does not exist (checked before anything is launched).
          PartyUnavailableError: A worker exited or was not ready within `start_timeout` (every worker is then
            stopped; the message carries the failing worker's stderr), or (not auto-managed) does not answer.
        """
        if self.running:
            raise RuntimeError("Cluster.start: already started")
        if not self._auto_managed:
            self._check_reachable()
            self._finalizer = weakref.finalize(self, lambda: None)
            return self
        _check_service_exists(self._service)
        workdir = Path(tempfile.mkdtemp(prefix="tfppml-cluster-"))
        processes: list[subprocess.Popen[bytes]] = []
        self._workdir = workdir
        self._finalizer = weakref.finalize(self, _shutdown, processes, workdir)
        try:
            self._launch(workdir, processes)
            self._wait_ready(workdir)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops the worker processes (SIGTERM, then SIGKILL after a grace period) and removes temporary files.
        Safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
        self._processes = {}
        if self._auto_managed:
            self._config = None
        self._workdir = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _make_config(self, parties: Mapping[str, str], cert_dir: Path | None) -> ClusterConfig:
        return ClusterConfig(
            parties=parties,
            cert_dir=cert_dir if cert_dir is not None else Path("."),
            timeout=self._settings["timeout"],
            max_message_bytes=self._settings["max_message_bytes"],
            owners=self._settings["owners"],
            source="Cluster",
        )

    def _launch(self, workdir: Path, processes: list[subprocess.Popen[bytes]]) -> None:
        import portpicker

        parties = {}
        for name, worker in self._workers.items():
            host, port = parse_address(worker.address, allow_port_zero=True)
            parties[name] = f"{host}:{port or portpicker.pick_unused_port()}"
        if self._cert_dir is None:
            cert_dir = workdir / "certs"
            generate_certificates(cert_dir, [*self._workers, *self._identities])
        else:
            cert_dir = self._cert_dir.resolve()
            for name in self._workers:
                Identity.load(cert_dir, name)  # a missing key fails here, not inside a worker
        self._config = self._make_config(parties, cert_dir)
        config_path = self._config.save(workdir / "cluster.json")

        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The workers must import this very tfppml, even when it is not installed in the interpreter.
        package_root = str(Path(tfppml.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        for name in self._workers:
            command = [
                sys.executable, "-m", "tfppml.cli", "worker",
                "--name", name,
                "--config", str(config_path),
                "--service", self._service,
                "--ready-file", str(workdir / f"{name}.ready"),
                "--exit-with-parent", str(os.getpid()),
                "--orphan-cleanup", str(workdir),
            ]  # fmt: skip
            for key, value in self._service_options.items():
                command += ["--option", f"{key}={value}"]
            with open(workdir / f"{name}.stdout", "wb") as out, open(workdir / f"{name}.stderr", "wb") as err:
                # A new session: a Ctrl-C meant for the driver does not hit the workers mid-protocol; the driver
                # stops them itself (and they exit by themselves if the driver dies).
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir, env=env,
                    start_new_session=True,
                )  # fmt: skip
            processes.append(process)
            self._processes[name] = process

    def _wait_ready(self, workdir: Path) -> None:
        deadline = time.monotonic() + self._start_timeout
        waiting = dict(self._processes)
        while waiting:
            for name, process in list(waiting.items()):
                if (workdir / f"{name}.ready").exists():
                    del waiting[name]
                elif process.poll() is not None:
                    raise PartyUnavailableError(
                        f"worker {name!r} exited with code {process.returncode} during start-up; its stderr:\n"
                        f"{self._tail(name)}"
                    )
            if not waiting:
                return
            if time.monotonic() > deadline:
                name = next(iter(waiting))
                raise PartyUnavailableError(
                    f"workers {sorted(waiting)} were not ready within {self._start_timeout:g} s; stderr of "
                    f"{name!r}:\n{self._tail(name)}"
                )
            time.sleep(0.05)

    def _tail(self, name: str) -> str:
        text = self.worker_log(name).strip()
        return text[-_LOG_TAIL:] if text else "(empty)"

    def _check_reachable(self) -> None:
        config = self.config
        identity = Identity.load(config.cert_dir, self._identities[0]) if self._identities else None
        if identity is None:
            raise ValueError("`identities` must name a driver identity to check the workers with")
        deadline = time.monotonic() + self._start_timeout
        for name in config.parties:
            with RemoteParty(name, config, identity) as party:
                party.ping(timeout=max(0.1, deadline - time.monotonic()), wait_for_ready=True)


def _check_service_exists(service: str) -> None:
    """Fails early, in the driver, when the service's module does not exist (without importing the module)."""
    target = SERVICES.get(service, service)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown service {service!r}: registered services are {sorted(SERVICES)}, or give 'module:factory'"
        )
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ValueError(f"service {service!r} -> {target!r}: no module named {module_name!r}")


def _shutdown(processes: list[subprocess.Popen[bytes]], workdir: Path | None) -> None:
    """Terminates worker processes and removes the work directory (a finalizer: must not reference the Cluster)."""
    for process in processes:
        _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()
    processes.clear()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is not None:
        return
    try:
        # The worker leads its own process group: signal the group, so anything it started goes too.
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
