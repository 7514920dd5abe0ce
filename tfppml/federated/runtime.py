"""Leave no TFF ``worker_binary`` behind.

TFF 0.87's default execution context starts its C++ runtime as a child process (``worker_binary``) and stops
it only from ``ServiceManager.__del__``, which the interpreter does not promise to run at exit; when Python
is killed, the child is re-parented to init and keeps running (and keeps the parent's stdout/stderr pipes
open, so a shell pipeline reading them never ends).  :func:`reap_tff_workers` finds this process's own
``worker_binary`` children through ``/proc`` and stops them by process id; :func:`install_worker_reaper`
calls it at interpreter exit and on SIGTERM / SIGINT.

Example:
    >>> install_worker_reaper()   # at the top of a script that uses TFF
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from typing import Callable

__all__ = ["install_worker_reaper", "process_running", "reap_tff_workers", "tff_worker_children"]

_INSTALLED = False


def tff_worker_children(parent: int | None = None) -> list[int]:
    """Process ids of the ``worker_binary`` processes whose parent is `parent` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv0 = handle.read().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        is_worker = os.path.basename(argv0) == "worker_binary"
        if is_worker and len(fields) > 1 and fields[0] != "Z" and int(fields[1]) == parent:
            found.append(int(entry))
    return sorted(found)


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reap_tff_workers(timeout: float = 5.0) -> list[int]:
    """Stops this process's ``worker_binary`` children (SIGTERM, then SIGKILL after `timeout` seconds).

    Args:
        timeout: Seconds to wait for each child to exit after SIGTERM.

    Returns:
        The process ids that were signalled.
    """
    pids = tff_worker_children()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
                break
            time.sleep(0.05)
    return pids


def install_worker_reaper() -> None:
    """Reaps TFF workers at interpreter exit and on SIGTERM/SIGINT (then re-raises the signal's default)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    atexit.register(reap_tff_workers)

    def make_handler(signum: int, previous: Callable | int | None):
        def handler(sig, frame):
            reap_tff_workers()
            if callable(previous):
                previous(sig, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        return handler

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, make_handler(signum, signal.getsignal(signum)))
