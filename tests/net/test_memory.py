"""tune_allocator: large arrays come from a reused heap instead of fresh mmaps (see tfppml.net.memory)."""

import json
import subprocess
import sys
import textwrap

import pytest

from tfppml.net import memory

# Runs in a fresh interpreter (allocator settings are per process and cannot be undone): allocates a 16 MiB
# array and reports how many blocks glibc's malloc_info counts as mmapped while it is alive.
_PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, json, os, re, sys, tempfile
    import numpy as np
    from tfppml.net.memory import tune_allocator
    tuned = tune_allocator() if sys.argv[1] == "tune" else None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    def mmapped():
        fd, path = tempfile.mkstemp()
        os.close(fd)
        fp = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        text = open(path).read()
        os.unlink(path)
        return int(re.findall(r'<total type="mmap" count="(\\d+)"', text)[-1])
    before = mmapped()
    array = np.ones(2 * 1024 * 1024, dtype=np.uint64)  # 16 MiB
    during = mmapped()
    print(json.dumps({"tuned": tuned, "new_mmaps": during - before, "sum": int(array.sum())}))
    """
)


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_info is Linux-only")
def test_large_arrays_come_from_the_heap_once_tuned():
    default = _probe("default")
    tuned = _probe("tune")
    # Without the settings the 16 MiB block is its own mmap; the probe would not see a difference otherwise.
    assert default["new_mmaps"] == 1
    assert tuned["tuned"] is True
    assert tuned["new_mmaps"] == 0
    assert tuned["sum"] == default["sum"] == 2 * 1024 * 1024


def test_settings_stay_within_what_glibc_accepts():
    # glibc refuses an mmap threshold above 32 MiB on 64-bit systems (mallopt returns 0).
    assert memory.MMAP_THRESHOLD_BYTES <= 32 * 1024 * 1024
    assert memory.TRIM_THRESHOLD_BYTES >= memory.MMAP_THRESHOLD_BYTES
