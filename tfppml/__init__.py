"""tfppml: privacy-preserving machine learning for TensorFlow and Keras.

Importing tfppml loads its compiled kernels once; a missing or broken kernel library makes the import fail with
`tfppml.errors.KernelLibraryError` rather than fall back to anything weaker.
"""

from tfppml import errors, ops
from tfppml.keras import Client, KerasHook
from tfppml.net.cluster import Cluster, Worker

__version__ = "0.1.0.dev0"

__all__ = ["Client", "Cluster", "KerasHook", "Worker", "errors", "ops", "__version__"]
