"""Runs the tutorials in notebooks/ headlessly and fails on any error or on a process left behind.

`make notebooks` calls this.  Each notebook runs top to bottom in a fresh kernel of this interpreter (nbclient,
no browser, no network).  After each one, any process the notebook's kernel started (tfppml workers, TFF's
``worker_binary``...) that is still running counts as a failure: a tutorial must clean up after itself.

Usage:
    .venv/bin/python scripts/run_notebooks.py                 # all notebooks/[0-9]*.ipynb
    .venv/bin/python scripts/run_notebooks.py 01 02           # those whose names start so
    .venv/bin/python scripts/run_notebooks.py --write         # also save the outputs into the notebooks
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import uuid

import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
#: Environment variable that marks the processes started by a notebook's kernel.
MARKER_VARIABLE = "TFPPML_NOTEBOOK_RUN"


def marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of the running processes whose environment carries `marker` (a notebook's kernel
    and everything it started, even after they were re-parented), other than this script."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = pathlib.Path(f"/proc/{entry}/environ").read_bytes()
            if needle not in environ.split(b"\0"):
                continue
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry)] = cmdline.strip()
    return found


def run(path: pathlib.Path, *, timeout: float, write: bool) -> float:
    """Executes one notebook; returns its wall time.  Raises on a failing cell or a leftover process."""
    notebook = nbformat.read(path, as_version=4)
    # Every process the kernel starts inherits this variable: that is how leftovers are found, whatever else
    # runs on the machine.
    marker = uuid.uuid4().hex
    os.environ[MARKER_VARIABLE] = marker
    start = time.monotonic()
    try:
        client = nbclient.NotebookClient(
            notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        )
        client.execute()
    finally:
        del os.environ[MARKER_VARIABLE]
    elapsed = time.monotonic() - start
    # Give processes told to stop at the end of the notebook (and the kernel itself) a moment to exit.
    deadline = time.monotonic() + 15
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        raise RuntimeError(f"{path.name} left processes behind: {left}")
    if write:
        nbformat.write(notebook, path)
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose file names start with these")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per cell (default 900)")
    parser.add_argument("--write", action="store_true", help="save the outputs into the notebook files")
    args = parser.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    if args.prefixes:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in args.prefixes)]
    if not paths:
        print(f"no notebook in {NOTEBOOKS} matches {args.prefixes}", file=sys.stderr)
        return 2
    # The kernel inherits this environment: keep TensorFlow's C++ start-up chatter (CUDA plugin messages logged
    # at error level on a machine without a GPU) out of the outputs; Python errors still fail the run.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # gRPC C-core's informational lines (a peer's GOAWAY when a worker stops) likewise.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    failed = []
    for path in paths:
        print(f"{path.name}: running", flush=True)
        try:
            elapsed = run(path, timeout=args.timeout, write=args.write)
        except Exception as err:  # noqa: BLE001 - every failure is reported, then the run fails
            failed.append(path.name)
            print(f"{path.name}: FAILED: {type(err).__name__}: {str(err)[-3000:]}", flush=True)
        else:
            print(f"{path.name}: ok in {elapsed:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
