"""One DPSGD epoch under a tf.distribute strategy, in a process of its own (tests/dp/test_distribute.py).

Device and cluster settings must be made before TensorFlow starts, so each setting runs here:

    python tests/dp/distributed_step.py mirrored OUT.json        # MirroredStrategy on 2 logical CPUs
    TF_CONFIG=... python tests/dp/distributed_step.py multiworker OUT.json   # one of 2 local worker processes
    python tests/dp/distributed_step.py none OUT.json            # no strategy (the reference)
    python tests/dp/distributed_step.py central OUT.json         # an unsupported strategy: the error

Writes JSON: the weight changes of one epoch (learning rate 1, so the change is the gradient) without noise,
and with noise (noise multiplier 1, clip 1) minus the clean change, over `--steps` draws; for "central", the
error message. Only the chief (task 0) writes in the multi-worker setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH, DIM, CLASSES = 64, 32, 32


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=["none", "mirrored", "multiworker", "central"])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=BATCH)
    parser.add_argument("--draws", type=int, default=4)
    args = parser.parse_args()

    if args.setting in ("mirrored", "central"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if args.setting == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif args.setting == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif args.setting == "central":
        strategy = tf.distribute.experimental.CentralStorageStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = None

    import tfppml.dp

    rng = np.random.default_rng(0)
    x = (3 * rng.normal(size=(args.rows, DIM))).astype("float32")  # large inputs: clipping is active
    y = rng.integers(0, CLASSES, size=args.rows)

    def epoch(noise: float) -> np.ndarray:
        scope = strategy.scope() if strategy is not None else tf.keras.utils.custom_object_scope({})
        with scope:
            tf.keras.utils.set_random_seed(0)
            model = tf.keras.Sequential([tf.keras.layers.Dense(CLASSES, input_shape=(DIM,))])
            model.compile(
                optimizer=tfppml.dp.DPSGD(l2_norm_clip=1.0, noise_multiplier=noise, learning_rate=1.0),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        before = [w.copy() for w in model.get_weights()]
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).with_options(options)
        model.fit(data, epochs=1, verbose=0)
        return np.concatenate([(b - a).ravel() for a, b in zip(model.get_weights(), before)])

    result: dict = {}
    try:
        clean = epoch(0.0)
        result["clean"] = clean.tolist()
        result["noise"] = np.concatenate([epoch(1.0) - clean for _ in range(args.draws)]).tolist()
        result["replicas"] = strategy.num_replicas_in_sync if strategy is not None else 1
    except ValueError as err:
        result["error"] = str(err)
    chief = args.setting != "multiworker" or json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    if chief:
        with open(args.out, "w") as file:
            json.dump(result, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
