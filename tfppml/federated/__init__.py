"""Federated learning: secure aggregation (Bonawitz et al. 2017) and its TFF aggregation factory.

:mod:`tfppml.federated.secure_agg` is the protocol as plain Python objects (X25519, Shamir, ChaCha20 masks);
it does not import TensorFlow Federated.  The TFF pieces (:class:`SecureAggregationFactory` and the builders)
are imported lazily, on first attribute access, because importing TFF takes several seconds.
"""

from __future__ import annotations

import importlib

from tfppml.federated.secure_agg import SecAggClient, SecAggConfig, SecAggServer, secure_sum

_LAZY = {
    "SecureAggregationFactory": "tfppml.federated.tff_secure_agg",
    "SecureSumFactory": "tfppml.federated.tff_secure_agg",
    "tf_chacha20_uniform": "tfppml.federated.tff_secure_agg",
    "prepare_round": "tfppml.federated.tff_secure_agg",
    "secure_dp_aggregator": "tfppml.federated.tff_secure_agg",
    "FederatedTrainer": "tfppml.federated.learning",
    "build_dp_fed_avg": "tfppml.federated.learning",
    "build_reptile": "tfppml.federated.learning",
    "build_secure_fed_avg": "tfppml.federated.learning",
    "dp_epsilon": "tfppml.federated.learning",
    "start_remote_worker": "tfppml.federated.remote",
    "use_remote_worker": "tfppml.federated.remote",
}

__all__ = ["SecAggClient", "SecAggConfig", "SecAggServer", "secure_sum", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfppml.federated' has no attribute {name!r}")
