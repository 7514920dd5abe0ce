"""DP-SGD step time at batch 256: plain SGD vs tfppml.dp.DPSGD vs TF Privacy (DPKerasSGDOptimizer, DPSequential).

Models: TF Privacy's MNIST tutorial CNN and a 2-layer MLP (784-512-10), on 28x28 inputs (MNIST-shaped random
data: step time does not depend on the values).  Each configuration is timed on its own compiled Keras train
function (graph mode), after warm-up.  The configurations of a model are stepped in turn (round robin), so
that load from other processes on a shared machine falls on all of them alike; the median step time over
``--steps`` rounds is reported with its ratio to plain SGD on the same model.  Target (issue 5): tfppml DP <=
1.5x plain SGD for both models.

``--tf-noise`` adds "tfppml DPSGD, TF RNG noise": the same optimizer drawing its Gaussian noise with
``tf.random.Generator.normal`` instead of tfppml's ChaCha20/Ziggurat kernel (how tfppml did it before that
kernel), to show what the kernel saves.

Reproduce:
    .venv/bin/python benchmarks/dp.py [--steps 30] [--batch-size 256] [--skip-tfp-optimizer] [--tf-noise]
"""

from __future__ import annotations

import argparse
import os
import types
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

L = tf.keras.layers
CLIP, NOISE, LR = 1.0, 1.1, 0.1


def cnn_layers():
    return [
        L.Conv2D(16, 8, strides=2, padding="same", activation="relu", input_shape=(28, 28, 1)),
        L.MaxPool2D(2, 1),
        L.Conv2D(32, 4, strides=2, padding="valid", activation="relu"),
        L.MaxPool2D(2, 1),
        L.Flatten(),
        L.Dense(32, activation="relu"),
        L.Dense(10),
    ]


def mlp_layers():
    return [L.Flatten(input_shape=(28, 28, 1)), L.Dense(512, activation="relu"), L.Dense(10)]


MODELS = {"tutorial CNN": cnn_layers, "2-layer MLP": mlp_layers}


def build(kind: str, layers_fn):
    from tensorflow_privacy import DPKerasSGDOptimizer, DPSequential
    from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry

    import tfppml.dp

    mean = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if kind == "plain SGD":
        model = tf.keras.Sequential(layers_fn())
        model.compile(optimizer=tf.keras.optimizers.SGD(LR), loss=mean)
    elif kind == "tfppml DPSGD":
        model = tf.keras.Sequential(layers_fn())
        model.compile(optimizer=tfppml.dp.DPSGD(l2_norm_clip=CLIP, noise_multiplier=NOISE, learning_rate=LR), loss=mean)
    elif kind == "tfppml DPSGD, TF RNG noise":
        opt = tfppml.dp.DPSGD(l2_norm_clip=CLIP, noise_multiplier=NOISE, learning_rate=LR)
        opt._private._add_noise = types.MethodType(_tf_rng_noise, opt._private)
        model = tf.keras.Sequential(layers_fn())
        model.compile(optimizer=opt, loss=mean)
    elif kind == "TFP DPKerasSGDOptimizer":
        model = tf.keras.Sequential(layers_fn())
        none = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        opt = DPKerasSGDOptimizer(l2_norm_clip=CLIP, noise_multiplier=NOISE, num_microbatches=None, learning_rate=LR)
        model.compile(optimizer=opt, loss=none)
    elif kind == "TFP DPSequential":
        model = DPSequential(
            l2_norm_clip=CLIP,
            noise_multiplier=NOISE,
            layer_registry=layer_registry.make_default_layer_registry(),
            layers=layers_fn(),
        )
        model.compile(optimizer=tf.keras.optimizers.SGD(LR), loss=mean)
    else:
        raise ValueError(kind)
    return model


def _tf_rng_noise(self, gmean, stddev, nonce):
    """tfppml's noise addition as it was before the C++ kernel: tf.random.Generator.normal plus an add."""
    if not hasattr(self, "_bench_generator"):
        with tf.init_scope():
            self._bench_generator = tf.random.Generator.from_non_deterministic_state()
    noise = self._bench_generator.normal(tf.shape(gmean), dtype=gmean.dtype)
    return gmean + noise * tf.cast(stddev, gmean.dtype)


class Stepper:
    """One configuration's compiled train function and data, warmed up; ``step()`` times one step."""

    def __init__(self, model, batch_size: int, warmup: int = 3):
        rng = np.random.default_rng(0)
        x = rng.random((batch_size * 4, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, batch_size * 4)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True).repeat()
        self.iterator = iter(data.prefetch(2))
        self.train = model.make_train_function()
        self.times: list[float] = []
        for _ in range(warmup):
            float(self.train(self.iterator)["loss"])

    def step(self) -> None:
        start = time.perf_counter()
        float(self.train(self.iterator)["loss"])  # wait for the step
        self.times.append(time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--skip-tfp-optimizer", action="store_true", help="skip the slowest baseline")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tf-noise", action="store_true", help="also time tfppml DPSGD with TF's RNG noise")
    args = parser.parse_args(argv)

    import tensorflow_privacy

    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"python {platform.python_version()}, tensorflow {tf.__version__}, tensorflow-privacy "
        f"{getattr(tensorflow_privacy, '__version__', '0.9.0')}, {os.cpu_count()} CPUs, batch {args.batch_size}, "
        f"median of {args.steps} steps"
    )
    kinds = ["plain SGD", "tfppml DPSGD"]
    if args.tf_noise:
        kinds.append("tfppml DPSGD, TF RNG noise")
    kinds.append("TFP DPSequential")
    if not args.skip_tfp_optimizer:
        kinds.append("TFP DPKerasSGDOptimizer")
    print(f"{'model':<14} {'configuration':<28} {'median ms/step':>15} {'x plain':>8}")
    for name in args.models.split(","):
        tf.keras.backend.clear_session()
        steppers = {kind: Stepper(build(kind, MODELS[name]), args.batch_size) for kind in kinds}
        rounds = {kind: args.steps if "DPKeras" not in kind else max(5, args.steps // 6) for kind in kinds}
        for i in range(args.steps):
            for kind, stepper in steppers.items():
                if i < rounds[kind]:
                    stepper.step()
        plain = statistics.median(steppers["plain SGD"].times)
        for kind, stepper in steppers.items():
            t = statistics.median(stepper.times)
            print(f"{name:<14} {kind:<28} {1e3 * t:15.1f} {t / plain:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
