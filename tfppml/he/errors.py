"""Errors of tfppml.he (domain errors derive from tfppml.errors.TfppmlError)."""

from __future__ import annotations

from tfppml.errors import KernelLibraryError, TfppmlError


class SealUnavailableError(KernelLibraryError):
    """The CKKS kernels (linked against SEAL) are not built or failed to load."""


class HEError(TfppmlError):
    """A homomorphic-encryption operation could not be carried out."""


class DepthExhaustedError(HEError):
    """A multiplication needs a level the ciphertext no longer has (the context's depth is too small)."""


class ContextMismatchError(HEError, ValueError):
    """Ciphertexts (or a ciphertext and a context) of two different key sets were combined."""


class MissingKeyError(HEError):
    """The context lacks the key an operation needs (a secret key to decrypt, Galois or relinearization keys)."""
