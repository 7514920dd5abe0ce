"""Loads the CKKS kernel library (tfppml/he/_tfppml_he*.so) on first use, never at `import tfppml`.

The library links a static Microsoft SEAL 4.1.2 built by scripts/build_seal.sh.  When it is missing or broken,
only tfppml.he fails, on first use, with `SealUnavailableError` naming the fix; the rest of tfppml works.
"""

from __future__ import annotations

import pathlib
import threading
import types

from tfppml.he.errors import SealUnavailableError

_HERE = pathlib.Path(__file__).resolve().parent
_FIX = (
    "Build SEAL and the HE kernels with `make install` (it runs `bash scripts/build_seal.sh`, which fetches the "
    "pyfhel 3.5.0 sdist with pip and builds SEAL 4.1.2 into ~/.cache/tfppml/seal-4.1.2, then "
    "`pip install --no-build-isolation -e .`)."
)
_lock = threading.Lock()
_ops: types.ModuleType | None = None


def ops() -> types.ModuleType:
    """The loaded op library; raises SealUnavailableError (an ImportError) naming the fix."""
    global _ops
    if _ops is None:
        with _lock:
            if _ops is None:
                from tfppml.errors import KernelLibraryError
                from tfppml.ops._library import load

                try:
                    _ops = load("_tfppml_he", _HERE)
                except KernelLibraryError as err:
                    raise SealUnavailableError(f"tfppml.he is unavailable: {err} {_FIX}") from err
    return _ops
