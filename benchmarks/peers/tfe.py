"""Run a TF Encrypted 0.9.1 peer benchmark in TF Encrypted's own venv and return its JSON result.

TF Encrypted 0.9.1 imports only on TensorFlow 2.9.1 / Python 3.10, so its benchmarks (``tfe_aby3.py``,
``tfe_inference.py`` in this folder) cannot run in tfppml's environment. ``run_peer`` makes sure that venv
exists (``make_tfe_venv.sh``, once; cached under ~/.cache/tfppml), runs the script with the venv's python
and parses the JSON object the script prints on its last stdout line. The script's progress (its stderr)
is passed through. When anything fails -- no Python 3.10, the venv cannot be built, the script fails or
times out -- it prints the reason to stderr and returns None, so a benchmark can report "not measured"
instead of crashing; the reason is also kept in ``last_failure``.

Example:
    >>> from peers.tfe import run_peer                      # with benchmarks/ on sys.path
    >>> peer = run_peer("tfe_aby3.py", ["--sizes", "256", "--repeats", "3"], timeout=900)
    >>> peer["matmul_256"] if peer else "TF Encrypted not measured"
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from typing import Optional

PEERS_DIR = pathlib.Path(__file__).resolve().parent
MAKE_VENV = PEERS_DIR / "make_tfe_venv.sh"
#: Seconds allowed for building the venv the first time (pip installs TensorFlow 2.9.1, ~0.5 GB).
VENV_TIMEOUT_S = 1800.0

#: Why the last ``run_peer`` / ``tfe_python`` call returned None (None after a success).
last_failure: Optional[str] = None


def _fail(reason: str) -> None:
    global last_failure
    last_failure = reason
    print(f"TF Encrypted peer: {reason}", file=sys.stderr, flush=True)


def _clean_env() -> dict:
    """Environment for the other venv: nothing of ours (PYTHONPATH, VIRTUAL_ENV) may leak into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def tfe_python(timeout: float = VENV_TIMEOUT_S) -> Optional[str]:
    """Returns the TF Encrypted venv's python, building the venv first if needed.

    Args:
        timeout: Seconds allowed for ``make_tfe_venv.sh`` (which returns at once when the venv exists).

    Returns:
        The path of the venv's python, or None (reason printed and kept in ``last_failure``).
    """
    global last_failure
    if not MAKE_VENV.is_file():
        _fail(f"{MAKE_VENV} is missing")
        return None
    print("TF Encrypted peer: checking its venv (the first time this builds it: pip installs "
          "tensorflow 2.9.1 and tf-encrypted 0.9.1, several minutes)", file=sys.stderr, flush=True)
    proc = subprocess.Popen(["bash", str(MAKE_VENV)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_clean_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _fail(f"building its venv with {MAKE_VENV.name} took longer than {timeout:.0f} s")
        return None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(err.strip().splitlines()[-5:])
        _fail(f"cannot make its venv ({MAKE_VENV.name} exited with {proc.returncode}): {tail}")
        return None
    python = lines[-1].strip()
    if not os.access(python, os.X_OK):
        _fail(f"{MAKE_VENV.name} printed {python!r}, which is not an executable python")
        return None
    last_failure = None
    return python


def run_peer(script: str, args: list[str], timeout: float) -> dict | None:
    """Runs a peer benchmark script in the TF Encrypted venv and returns its JSON result.

    Args:
        script: The script, by name inside benchmarks/peers (``"tfe_aby3.py"``) or by path.
        args: Its command-line arguments, e.g. ``["--sizes", "256", "1024"]``.
        timeout: Seconds allowed for the script itself (building the venv, if needed, has its own
            ``VENV_TIMEOUT_S``). On expiry the script is killed (its player processes die with it).

    Returns:
        The parsed JSON object (with ``ok`` true, plus ``peer_command``: the command line that
        reproduces it and ``peer_wall_s``), or None when the venv cannot be made or the script fails,
        times out or prints no valid JSON; the reason is printed to stderr and kept in ``last_failure``.
    """
    global last_failure
    path = pathlib.Path(script)
    if not path.is_absolute() and not path.exists():
        path = PEERS_DIR / script
    if not path.is_file():
        _fail(f"no such peer script: {script}")
        return None
    python = tfe_python()
    if python is None:
        return None
    cmd = [python, str(path), *map(str, args)]
    command = " ".join(shlex.quote(c) for c in cmd)
    print(f"TF Encrypted peer: {command}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # stderr (progress) goes straight through; stdout is collected for the JSON line.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=_clean_env(),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _fail(f"{path.name} did not finish within {timeout:.0f} s (killed)")
        return None
    except BaseException:  # e.g. KeyboardInterrupt: never leave the peer running
        _kill_group(proc)
        raise
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.splitlines() if ln.strip()]
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if not isinstance(result, dict):
        _fail(f"{path.name} exited with {proc.returncode} without a JSON result on its last stdout line")
        return None
    if proc.returncode != 0 or not result.get("ok", False):
        _fail(f"{path.name} failed (exit {proc.returncode}): {result.get('error', 'no error given')}")
        return None
    result["peer_command"] = command
    result["peer_wall_s"] = wall
    last_failure = None
    return result
