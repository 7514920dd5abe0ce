"""Loads the compiled op libraries once, loudly.

If a library is missing or does not load, importing tfppml fails with `KernelLibraryError` saying how to build
it.  There is deliberately no fallback: TF Encrypted silently fell back to insecure randomness when its op
library was missing, and a privacy library must not do that.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import pathlib
import threading
import types
from typing import Any

import tensorflow as tf

from tfppml.errors import KernelLibraryError

_HERE = pathlib.Path(__file__).resolve().parent
_BUILD_HINT = "Build the kernels with `make install` (or `pip install --no-build-isolation -e .` in the repository)."


def library_path(stem: str, directory: pathlib.Path = _HERE) -> pathlib.Path:
    """Path of the extension `stem` built by setup.py (setuptools names it with the interpreter's tag)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise KernelLibraryError(
        f"tfppml kernel library '{stem}' was not found in {directory}. {_BUILD_HINT}"
    )


def load(stem: str, directory: pathlib.Path = _HERE) -> types.ModuleType:
    """Loads an op library with tf.load_op_library, turning any failure into KernelLibraryError."""
    path = library_path(stem, directory)
    try:
        return tf.load_op_library(str(path))
    except tf.errors.NotFoundError as err:
        raise KernelLibraryError(
            f"tfppml kernel library {path} failed to load: {err.message}. It was probably built against "
            f"another TensorFlow than the installed {tf.__version__}. {_BUILD_HINT}"
        ) from err


#: Values of the environment variable TFPPML_ISA, which caps the vector instructions the kernels use (read by
#: cc/kernels/cpu_isa.cc when the library loads; every cap gives the same results, only slower).
ISA_CAPS = ("scalar", "avx2", "avx512", "amx")


def check_isa_cap(value: str | None) -> None:
    """Raises ValueError unless `value` (TFPPML_ISA's value, None if unset) is unset or one of ISA_CAPS."""
    if value is not None and value not in ISA_CAPS:
        raise ValueError(f"environment variable TFPPML_ISA must be one of {', '.join(ISA_CAPS)} or unset, got {value!r}")


check_isa_cap(os.environ.get("TFPPML_ISA"))

# The ring / fixed-point / PRG / matmul kernels.
ops = load("_tfppml_ops")

_C_FUNCTIONS: dict[str, Any] = {}
_C_FUNCTIONS_LOCK = threading.Lock()


def c_function(name: str, argtypes: list[Any], restype: Any = ctypes.c_int) -> Any:
    """The C entry point `name` of the loaded _tfppml_ops library, bound once with ctypes.

    For kernels the MPC runtime calls on NumPy arrays many times per protocol round, where a TF eager dispatch
    would cost more than the work.  dlopen of the path TF already loaded returns the same handle: one copy of
    the code."""
    function = _C_FUNCTIONS.get(name)
    if function is None:
        with _C_FUNCTIONS_LOCK:
            function = _C_FUNCTIONS.get(name)
            if function is None:
                function = getattr(ctypes.CDLL(str(library_path("_tfppml_ops")), mode=ctypes.RTLD_LOCAL), name)
                function.argtypes, function.restype = argtypes, restype
                _C_FUNCTIONS[name] = function
    return function
