"""Per-example clipping cost by layer: tfppml's private gradient against a per-example loop, side by side.

For each layer kind (in a small model: the layer, a flatten or pooling, Dense(5)), at batch 64: the median time
of one `tfppml.dp.clipping.PrivateGradients.compute` (clip 1, noise 1) in a tf.function, against a baseline
that loops over the examples with one GradientTape each and clips (what a per-example loop costs), and, for
layers without a rule of their own, against the former fallback (the Jacobian of the whole batch's call).
Issue #19 asks that no layer be slower than the loop.

    .venv/bin/python benchmarks/dp_layers.py [--batch 64] [--repeats 10] [LAYER ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfppml.dp import clipping  # noqa: E402
from tfppml.dp.clipping import PrivateGradients  # noqa: E402

L = tf.keras.layers
LOSS = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _SelfAttention(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.attention, self.pool, self.out = L.MultiHeadAttention(2, 8), L.GlobalAveragePooling1D(), L.Dense(5)

    def call(self, x):
        return self.out(self.pool(self.attention(x, x)))


CASES = {
    "Conv1D": (lambda: tf.keras.Sequential([L.Conv1D(32, 5, activation="relu"), L.GlobalAveragePooling1D(),
                                            L.Dense(5)]), (100, 16)),  # fmt: skip
    "Conv2D groups=4": (lambda: tf.keras.Sequential([L.Conv2D(16, 3, groups=4), L.Flatten(), L.Dense(5)]), (12, 12, 8)),
    "Conv2DTranspose": (lambda: tf.keras.Sequential([L.Conv2DTranspose(8, 3, strides=2), L.Flatten(), L.Dense(5)]),
                        (8, 8, 4)),  # fmt: skip
    "DepthwiseConv2D": (lambda: tf.keras.Sequential([L.DepthwiseConv2D(3), L.Flatten(), L.Dense(5)]), (16, 16, 8)),
    "SeparableConv2D": (lambda: tf.keras.Sequential([L.SeparableConv2D(8, 3), L.Flatten(), L.Dense(5)]), (16, 16, 8)),
    "GroupNormalization": (lambda: tf.keras.Sequential([L.Dense(16), L.GroupNormalization(4), L.Flatten(),
                                                        L.Dense(5)]), (10, 8)),  # fmt: skip
    "MultiHeadAttention": (_SelfAttention, (10, 16)),
    "LSTM": (lambda: tf.keras.Sequential([L.LSTM(16), L.Dense(5)]), (10, 8)),
}


def _timed(function, repeats: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _model(make, x):
    tf.keras.utils.set_random_seed(0)
    model = make()
    model(x[:1])
    return model


def _private(make, x, y, repeats):
    model, engine = _model(make, x), PrivateGradients(1.0, 1.0)
    step = tf.function(lambda: engine.compute(model, x, y, loss=LOSS)[2])
    return _timed(lambda: [g.numpy() for g in step()], repeats)


def _loop(make, x, y, repeats):
    model = _model(make, x)

    @tf.function
    def step():
        total = [tf.zeros_like(v) for v in model.trainable_variables]
        for i in tf.range(tf.shape(x)[0]):
            with tf.GradientTape() as tape:
                loss = LOSS(tf.gather(y, [i]), model(tf.gather(x, [i]), training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            factor = tf.minimum(1.0, 1.0 / tf.linalg.global_norm(grads))
            total = [t + g * factor for t, g in zip(total, grads)]
        return total

    return _timed(lambda: [g.numpy() for g in step()], repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("layers", nargs="*", default=list(CASES))
    args = parser.parse_args()
    print(f"python {platform.python_version()}, tensorflow {tf.__version__}, {os.cpu_count()} CPUs, batch {args.batch}, "
          f"median of {args.repeats}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")  # fmt: skip
    print("| layer | tfppml ms | former fallback (Jacobian) ms | per-example loop ms | tfppml / loop |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name in args.layers:
        make, shape = CASES[name]
        x = rng.random((args.batch, *shape), dtype=np.float32)
        y = rng.integers(0, 5, args.batch)
        ours = _private(make, x, y, args.repeats)
        built = _model(make, x)
        uses_fallback = any(clipping.rule_for(layer) is None for layer in built.layers if layer.trainable_weights)
        jacobian = "-"
        if uses_fallback and name != "LSTM":
            vectorized = clipping.GenericRule.per_example_grads
            clipping.GenericRule.per_example_grads = clipping.RecurrentRule.per_example_grads
            try:
                jacobian = f"{_private(make, x, y, args.repeats):.1f}"
            finally:
                clipping.GenericRule.per_example_grads = vectorized
        loop = _loop(make, x, y, args.repeats)
        print(f"| {name} | {ours:.1f} | {jacobian} | {loop:.1f} | {ours / loop:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
