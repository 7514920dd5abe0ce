"""Importing tfppml loads the kernels; a missing library fails loudly instead of falling back."""

import pathlib

import pytest

import tfppml
from tfppml.errors import KernelLibraryError
from tfppml.ops import _library


def test_import_loads_the_ring_kernels():
    assert hasattr(_library.ops, "tfppml_ring_add")
    assert tfppml.__version__


def test_missing_library_raises_kernel_library_error(tmp_path: pathlib.Path):
    with pytest.raises(KernelLibraryError, match="make install"):
        _library.load("_tfppml_ops", directory=tmp_path)


def test_broken_library_raises_kernel_library_error(tmp_path: pathlib.Path):
    import importlib.machinery

    (tmp_path / f"_broken{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file")
    with pytest.raises(KernelLibraryError, match="failed to load"):
        _library.load("_broken", directory=tmp_path)
