"""Worker memory per fit, in a process of its own (tests/remote/test_limits.py): an in-process RemoteService
fits one model 40 times after a warm-up, deleting each result, and prints the resident memory added per fit.

    python tests/remote/fit_memory.py shared     # the worker as it is: fits share the model put_model built
    python tests/remote/fit_memory.py rebuild    # control: a new Keras model built for every fit, as before
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gc  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfppml.remote.audit import AuditLog, generate_key  # noqa: E402
from tfppml.remote.ledger import PrivacyLedger  # noqa: E402
from tfppml.remote.model_ops import ModelOps, SharedModel  # noqa: E402
from tfppml.remote.models import build_model  # noqa: E402
from tfppml.remote.policy import Policy  # noqa: E402
from tfppml.remote.service import RemoteService  # noqa: E402


def resident_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    arm = sys.argv[1]
    if arm == "rebuild":
        train = ModelOps._train

        def rebuilt(self, shared, source, *args):
            weights = {f"w{i}": w for i, w in enumerate(source.weights)}
            with self._build_lock:
                fresh = SharedModel(build_model(source.model_spec, weights))
            return train(self, fresh, source, *args)

        ModelOps._train = rebuilt
    root = Path(tempfile.mkdtemp())
    key = generate_key(root / "keys" / "k")
    service = RemoteService(
        "hospital", {}, Policy.from_dict({"identities": {"analyst": {}}}),
        AuditLog(root / "logs" / "audit.log", key), PrivacyLedger(root / "logs" / "audit.log.ledger", key),
    )  # fmt: skip
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(64), tf.keras.layers.Dense(1)])
    tensors = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    put = service.handle("analyst", {"op": "put_model", "model": model.to_json(), "compile": {"loss": "mse"}}, tensors)
    ids = {}
    for key_, array in (("x", np.zeros((200, 4), np.float32)), ("y", np.zeros((200, 1), np.float32))):
        ids[key_] = service.handle("analyst", {"op": "put"}, {"value": array})[0]["id"]

    def fit() -> None:
        reply = service.handle("analyst", {"op": "fit", "model": put[0]["id"], "x": ids["x"], "y": ids["y"],
                                           "epochs": 1, "batch_size": 64}, {})[0]  # fmt: skip
        service.handle("analyst", {"op": "delete", "ids": [reply["id"]]}, {})

    for _ in range(10):
        fit()
    gc.collect()
    start = resident_mib()
    for _ in range(40):
        fit()
    gc.collect()
    print(json.dumps({"mib_per_fit": (resident_mib() - start) / 40}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
