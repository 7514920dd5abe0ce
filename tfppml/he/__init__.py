"""Homomorphic encryption (CKKS on Microsoft SEAL 4.1.2) as TensorFlow kernels.

A client encrypts under its own key set, a server computes on the ciphertexts with plaintext weights using only
the public context (no secret key), and only the client decrypts:

    >>> import numpy as np
    >>> from tfppml import he
    >>> client = he.CKKSContext()                     # N=8192, [60, 40, 40, 60], scale 2**40: 128-bit security
    >>> server = he.CKKSContext.deserialize(client.public_context().serialize())
    >>> x = server.deserialize_cipher(client.encrypt([0.5, -1.0, 2.0]).serialize())
    >>> y = (x * x) @ np.eye(3)                       # computed by the server
    >>> np.round(client.decrypt(y), 4).tolist()
    [0.25, 1.0, 4.0]

Design: contexts and cipher tensors are scalar tf.variant tensors holding reference-counted C++ objects (see
cc/he/cipher_tensor.h); keys are separate objects and a public context simply has no secret key.  Importing this
package never fails: the kernel library is loaded on first use, and a missing SEAL build raises
`tfppml.he.errors.SealUnavailableError` naming `make install`.  Errors: `DepthExhaustedError` (out of levels,
naming the levels needed), `ContextMismatchError` (two key sets mixed), `MissingKeyError`, `ValueError` for
bad arguments, malformed serialized data and parameters below 128-bit security.
"""

from tfppml.he.ckks import LAYOUTS, CipherTensor, CKKSContext, poly_depth
from tfppml.he.errors import (
    ContextMismatchError,
    DepthExhaustedError,
    HEError,
    MissingKeyError,
    SealUnavailableError,
)
from tfppml.he.model import RELU2, SIGMOID3, HEModel, Polynomial, compile_model, register_converter, square

__all__ = [
    "CKKSContext",
    "CipherTensor",
    "ContextMismatchError",
    "DepthExhaustedError",
    "HEError",
    "HEModel",
    "LAYOUTS",
    "MissingKeyError",
    "Polynomial",
    "RELU2",
    "SIGMOID3",
    "SealUnavailableError",
    "compile_model",
    "poly_depth",
    "register_converter",
    "square",
]
