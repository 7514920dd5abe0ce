"""Running TFF computations in a separate ``worker_binary`` process, possibly on another host, over gRPC.

TFF 0.87's C++ runtime is its ``worker_binary``: an executor service (federating executor over TensorFlow
executors, the whole stack) that serves ``--port``.  TFF's default context starts one as a hidden child of
the Python process; here the worker is a process of its own and the Python driver talks to it through
``tff.framework.RemoteExecutor`` over a gRPC channel:

* :func:`start_remote_worker` starts ``worker_binary --port=PORT`` and returns a :class:`RemoteWorker` handle
  whose :meth:`~RemoteWorker.stop` (or ``with`` block) stops it and waits for it, leaving no process behind.
  On another machine the same is ``python -m tfppml.federated.remote --port PORT`` (or the binary itself,
  found by :func:`worker_binary_path`).
* :func:`remote_execution_context` / :func:`use_remote_worker` make TFF run computations on a worker at
  ``host:port``; ``scripts/federated_train.py --remote-worker host:port`` uses them.

Everything the driver computes (secure aggregation's Python key exchange, sampling, evaluation) stays in the
driver; every TFF computation of a round (client training, masking, the federated sums, unmasking) runs in
the worker.  In TFF 0.87 one worker runs a whole computation: the Python side has no composing executor that
would split one round's clients over several workers (TFF removed its Python executor stacks), so "several
workers" means several independent drivers, not one round spread across hosts.

Security: **TFF's executor service uses insecure gRPC channels.**  ``worker_binary`` listens on every
interface (``*:PORT`` in ``ss -ltn``) with plaintext gRPC and no authentication, and the driver connects with
``grpc.insecure_channel``: anyone who can reach the port can run computations in the worker and read every
value sent to it, including each simulated client's update and its secure-aggregation mask material (which
the driver sends with the client's value).  Run it only inside a trusted network (loopback, a private
cluster network or an SSH tunnel); tfppml's mutual-TLS channels (:mod:`tfppml.net`) do not cover it.

Example:
    >>> with start_remote_worker() as worker, use_remote_worker(worker.address):
    ...     trainer = FederatedTrainer(client_datasets, model_fn, secure=True, clients_per_round=4)
    ...     trainer.run_round()
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

__all__ = [
    "RemoteWorker",
    "remote_execution_context",
    "set_remote_worker",
    "start_remote_worker",
    "use_remote_worker",
    "worker_binary_path",
]

# As TFF's own local context sets them: values of a round can exceed gRPC's 4 MB default.
_MAX_MESSAGE = 2_000_000_000
_CHANNEL_OPTIONS = [
    ("grpc.max_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]


def worker_binary_path() -> pathlib.Path:
    """Path of the ``worker_binary`` shipped in the installed tensorflow-federated wheel.

    Raises:
        FileNotFoundError: the wheel has no worker binary.
    """
    import importlib.util

    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tensorflow_federated is not installed, so there is no worker_binary to start")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "worker_binary"
    if not path.is_file():
        raise FileNotFoundError(f"expected TFF's worker_binary at {path}, found nothing")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_address(address: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be 'host:port' with a port in 1..65535, got {address!r}")
    return host, int(port)


def _wait_ready(address: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import grpc

    channel = grpc.insecure_channel(address, _CHANNEL_OPTIONS)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"worker_binary for {address} exited with code {proc.returncode} before serving")
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no TFF executor service answered at {address} within {timeout:.0f} s")
    finally:
        channel.close()


class RemoteWorker:
    """A running ``worker_binary`` serving TFF's executor service on :attr:`port` (see the module docstring).

    Use :func:`start_remote_worker` to make one.  Stopping is idempotent; a ``with`` block stops it on exit.
    """

    def __init__(self, proc: subprocess.Popen, port: int):
        self._proc = proc
        self.port = port

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self._proc.pid

    @property
    def address(self) -> str:
        """``localhost:PORT``: where a driver on this machine reaches the worker."""
        return f"localhost:{self.port}"

    def running(self) -> bool:
        """Whether the worker process is still alive."""
        return self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """Stops the worker (SIGTERM, then SIGKILL after `timeout` seconds), waits for it; returns its exit code."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def __enter__(self) -> "RemoteWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self._proc.returncode}"
        return f"RemoteWorker(pid={self.pid}, port={self.port}, {state})"


def start_remote_worker(port: int | None = None, *, timeout: float = 60.0, quiet: bool = True) -> RemoteWorker:
    """Starts TFF's ``worker_binary`` serving its executor service on `port` and waits until it answers.

    The worker listens on every interface with plaintext gRPC and no authentication: see the module
    docstring's security note before exposing the port beyond loopback.

    Args:
        port: TCP port (1..65535); default: a free port picked on 127.0.0.1.
        timeout: Seconds to wait for the service to answer.
        quiet: Discard the worker's stdout/stderr (TensorFlow's start-up logging).

    Returns:
        A :class:`RemoteWorker`; stop it with :meth:`RemoteWorker.stop` or a ``with`` block.

    Raises:
        ValueError: `port` is not an int in 1..65535.
        RuntimeError: the worker exited before serving (e.g. the port is taken).
        TimeoutError: it did not answer within `timeout` (it is stopped first).
    """
    if port is None:
        port = _free_port()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    sink = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(
        [str(worker_binary_path()), f"--port={port}"], stdout=sink, stderr=sink, stdin=subprocess.DEVNULL
    )
    worker = RemoteWorker(proc, port)
    try:
        _wait_ready(worker.address, timeout, proc)
    except BaseException:
        worker.stop()
        raise
    return worker


def remote_execution_context(address: str, *, default_num_clients: int = 0):
    """A synchronous TFF execution context that runs computations on the worker at `address` (``host:port``).

    Built from TFF's public parts as its local C++ context is (``RemoteExecutor`` over a gRPC stub, the native
    compiler), but over a channel to `address` instead of to a child process.  The channel is
    ``grpc.insecure_channel``: plaintext, unauthenticated (see the module docstring).

    Raises:
        ValueError: `address` is not ``host:port``.
    """
    _check_address(address)
    import grpc
    import tensorflow_federated as tff

    channel = grpc.insecure_channel(address, _CHANNEL_OPTIONS)
    stub = tff.framework.RemoteExecutorGrpcStub(channel)

    def stack_fn(cardinalities):
        cardinalities.setdefault(tff.CLIENTS, default_num_clients)
        executor = tff.framework.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    return tff.framework.SyncExecutionContext(
        tff.framework.ResourceManagingExecutorFactory(stack_fn),
        compiler_fn=tff.backends.native.desugar_and_transform_to_native,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )


@contextlib.contextmanager
def use_remote_worker(address: str, *, timeout: float = 60.0) -> Iterator[None]:
    """Within the block, TFF computations run on the worker at `address`; the previous context is restored after.

    Raises:
        ValueError: `address` is not ``host:port``.
        TimeoutError: nothing answers at `address` within `timeout` seconds.
    """
    _check_address(address)
    _wait_ready(address, timeout)
    import tensorflow_federated as tff

    with tff.framework.get_context_stack().install(remote_execution_context(address)):
        yield


def set_remote_worker(address: str, *, timeout: float = 60.0) -> None:
    """Makes the worker at `address` the default TFF context for the rest of the process (scripts use this)."""
    _check_address(address)
    _wait_ready(address, timeout)
    import tensorflow_federated as tff

    tff.framework.set_default_context(remote_execution_context(address))


def main(argv=None) -> int:
    """``python -m tfppml.federated.remote --port PORT``: serve TFF's executor service until interrupted."""
    p = argparse.ArgumentParser(
        description="Run TFF's worker_binary (its executor service) on --port, for "
        "scripts/federated_train.py --remote-worker HOST:PORT. WARNING: plaintext, unauthenticated gRPC on every "
        "interface; run it only inside a trusted network."
    )
    p.add_argument("--port", type=int, required=True, help="TCP port to serve on")
    args = p.parse_args(argv)
    worker = start_remote_worker(args.port, quiet=False)
    print(f"TFF worker_binary pid {worker.pid} serving on port {worker.port} (insecure gRPC)", flush=True)
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    try:
        while not stop and worker.running():
            time.sleep(0.5)
    finally:
        code = worker.stop()
    return 0 if stop else code


if __name__ == "__main__":
    sys.exit(main())
