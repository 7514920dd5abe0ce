"""A loopback TF Encrypted cluster for the peer benchmarks (runs inside the TFE 0.9.1 venv only).

Each TFE player is its own OS process (``python -m tf_encrypted.player NAME --config FILE``, TFE's own
player entry point, so that the workers load TFE's custom op library), listening on a free 127.0.0.1
port. This process is the TensorFlow client that connects to them with ``RemoteConfig.connect_servers``
and then drives the computation.

The cluster configuration names 127.0.0.1 addresses only, and all traffic goes over loopback; note that
TensorFlow's gRPC server (grpc_server_lib.cc) always listens on 0.0.0.0:<port>, with no option to bind
to one interface, so the players' ports are reachable on other interfaces for the length of a run.

Children are always cleaned up: ``stop()`` runs from ``__exit__``, from ``atexit`` and on
SIGTERM/SIGINT/SIGHUP, and every child also gets ``PR_SET_PDEATHSIG = SIGKILL`` so that it dies with
this process even when this process is killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def _free_ports(count: int) -> List[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def log(msg: str) -> None:
    """Progress goes to stderr; stdout is reserved for the final JSON line."""
    print(f"[tfe-peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class TfeCluster:
    """Starts TFE players as subprocesses on 127.0.0.1 and connects this process to them.

    Args:
        names: Player names, in task order (ABY3 wants ``server0``, ``server1``, ``server2``).
        start_timeout: Seconds to wait for every player's port to accept connections.
    """

    def __init__(self, names: Sequence[str] = ("server0", "server1", "server2"),
                 start_timeout: float = 120.0) -> None:
        self.names = list(names)
        self.start_timeout = start_timeout
        self.procs: Dict[str, subprocess.Popen] = {}
        self.hostmap: "OrderedDict[str, str]" = OrderedDict()
        self.tmpdir: Optional[str] = None
        self.config = None
        self.start_seconds: Optional[float] = None
        self._old_handlers: Dict[int, object] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self):
        t0 = time.perf_counter()
        self._install_handlers()
        atexit.register(self.stop)
        self.tmpdir = tempfile.mkdtemp(prefix="tfe-peer-")
        ports = _free_ports(len(self.names))
        self.hostmap = OrderedDict((n, f"127.0.0.1:{p}") for n, p in zip(self.names, ports))
        cfg_path = os.path.join(self.tmpdir, "config.json")
        with open(cfg_path, "w") as f:
            json.dump(self.hostmap, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        for name in self.names:
            logf = open(os.path.join(self.tmpdir, f"{name}.log"), "wb")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tf_encrypted.player", name, "--config", cfg_path],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent, close_fds=True,
            )
            logf.close()
        deadline = time.monotonic() + self.start_timeout
        pending = dict(zip(self.names, ports))
        while pending:
            for name, port in list(pending.items()):
                rc = self.procs[name].poll()
                if rc is not None:
                    raise RuntimeError(f"TFE player {name} exited with code {rc} while starting; "
                                       f"log tail:\n{self.player_log(name)}")
                if _port_open(port):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"TFE players {sorted(pending)} did not open their ports within "
                                   f"{self.start_timeout:.0f} s")
            if pending:
                time.sleep(0.2)

        import tf_encrypted as tfe  # imported late: slow, and only needed once players are up

        self.config = tfe.RemoteConfig(self.hostmap)
        self.config.connect_servers()
        tfe.set_config(self.config)
        self.start_seconds = time.perf_counter() - t0
        log(f"cluster up in {self.start_seconds:.1f} s: {dict(self.hostmap)}")
        return self

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"TFE player {name} died (code {p.returncode}); log tail:\n"
                                   f"{self.player_log(name)}")

    def player_log(self, name: str, tail: int = 2000) -> str:
        if not self.tmpdir:
            return ""
        try:
            with open(os.path.join(self.tmpdir, f"{name}.log"), "rb") as f:
                return f.read()[-tail:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 5.0
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        self.procs.clear()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def _install_handlers(self) -> None:
        def handler(signum, _frame):
            self.stop()
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, handler)


def aby3_protocol(frac_bits: int = 16, int_bits: int = 11):
    """ABY3 over Z_2^64 with ``frac_bits`` fractional bits, set explicitly.

    TFE 0.9.1's default for ABY3 is ``fixed64_heuristic``: base 2, 64-bit ring, 11 integral and 16
    fractional bits, matmul_threshold 256, truncation_gap 0, interactive (heuristic) truncation. The same
    values are spelled out here so that a change of TFE's default cannot change what we measure.
    """
    import tf_encrypted as tfe
    from tf_encrypted.protocol import ABY3
    from tf_encrypted.tensor.fixed import FixedpointConfig

    fp = FixedpointConfig(scaling_base=2, nbits=64, precision_integral=int_bits,
                          precision_fractional=frac_bits, matmul_threshold=256, truncation_gap=0,
                          use_noninteractive_truncation=False)
    prot = ABY3(fixedpoint_config=fp)
    tfe.set_protocol(prot)
    return prot


def clear_memo() -> None:
    """Forget TFE's protocol-level memoization cache.

    TFE memoizes protocol calls (``@memoize`` keyed on the Python arguments) in a module-global dict; a
    node cached while tracing one ``tfe.function`` would be handed to the trace of another graph. Clear it
    before tracing each new function.
    """
    from tf_encrypted.protocol import protocol as _p

    _p.nodes.clear()


def trace_seconds(tfe_fn, *args) -> Optional[float]:
    """Trace a ``tfe.function`` into its TF graph without running it; returns the seconds taken.

    ``tfe.function`` wraps a ``tf.function`` called with the unwrapped (args, kwargs); tracing that one
    ahead of the first call splits the first call into Python tracing and the first execution (graph
    instantiation on the workers + one run). Returns None if the wrapped function cannot be found.
    """
    from tensorflow.python.eager import def_function
    from tf_encrypted.protocol.protocol import input_unwrap

    inner = None
    for cell in getattr(tfe_fn, "__closure__", None) or ():
        if isinstance(cell.cell_contents, def_function.Function):
            inner = cell.cell_contents
    if inner is None:
        return None
    a, k = input_unwrap(args, {})
    t = time.perf_counter()
    inner.get_concrete_function(a, k)
    return time.perf_counter() - t


def versions() -> dict:
    import numpy as np
    import tensorflow as tf
    import tf_encrypted as tfe

    return {"python": sys.version.split()[0], "tensorflow": tf.__version__,
            "tf_encrypted": tfe.__version__, "numpy": np.__version__}
