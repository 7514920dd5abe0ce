"""DP-SGD accuracy on Fashion-MNIST at a fixed (epsilon, delta), and a privacy/utility plot. Not part of CI.

Trains an end-to-end tanh CNN (the shape Tramer & Boneh 2021 use; no BatchNormalization) with tfppml.dp.DPSGD,
the noise calibrated by tfppml.dp.calibrate_noise for the *shuffled fixed-size batches* that Model.fit uses
(no amplification claimed, the conservative figure), unless --poisson is given, in which case batches come
from tfppml.dp.poisson_sample and the Poisson figure applies.  The epsilon printed is the one the run spent.

Reproduce:  .venv/bin/python benchmarks/dp_accuracy.py --epsilon 3 [--epochs 15] [--plot eps.png --sweep 1,2,3,5,8]
Needs Debian's dataset-fashion-mnist package.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import tfppml.dp  # noqa: E402
from tfppml import datasets  # noqa: E402

L = tf.keras.layers


def cnn():
    return tf.keras.Sequential(
        [
            L.Conv2D(16, 8, strides=2, padding="same", activation="tanh", input_shape=(28, 28, 1)),
            L.MaxPool2D(2, 1),
            L.Conv2D(32, 4, strides=2, padding="valid", activation="tanh"),
            L.MaxPool2D(2, 1),
            L.Flatten(),
            L.Dense(32, activation="tanh"),
            L.Dense(10),
        ]
    )


def run(epsilon: float, args) -> tuple[float, float]:
    (x, y), (xt, yt) = datasets.load_fashion_mnist()
    x, xt = x[..., None], xt[..., None]
    n = x.shape[0]
    sigma = tfppml.dp.calibrate_noise(epsilon, args.delta, n, args.batch_size, args.epochs, poisson=args.poisson)
    tf.keras.utils.set_random_seed(args.seed)
    model = cnn()
    model.compile(
        optimizer=tfppml.dp.DPSGD(l2_norm_clip=args.clip, noise_multiplier=sigma, learning_rate=args.lr,
                                  momentum=0.9),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    budget = tfppml.dp.PrivacyBudget(n, args.batch_size, args.delta, target_epsilon=epsilon, poisson=args.poisson)
    if args.poisson:
        train = tfppml.dp.poisson_sample(x, y, batch_size=args.batch_size, seed=args.seed)
        model.fit(train, epochs=args.epochs, callbacks=[budget], verbose=2)
    else:
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, callbacks=[budget], verbose=2)
    _, acc = model.evaluate(xt, yt, batch_size=1000, verbose=0)
    print(f"epsilon target {epsilon:g}: spent {budget.epsilon:.3f} at delta {args.delta:g} "
          f"({'Poisson' if args.poisson else 'shuffled batches'}), noise {sigma:.3f}, test accuracy {acc:.4f}")
    return budget.epsilon, acc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poisson", action="store_true")
    parser.add_argument("--sweep", default="", help="comma-separated epsilons for the privacy/utility plot")
    parser.add_argument("--plot", default="", help="PNG path of the accuracy-vs-epsilon plot")
    args = parser.parse_args(argv)
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}; tensorflow {tf.__version__}")
    start = time.time()
    points = [run(float(e), args) for e in (args.sweep.split(",") if args.sweep else [args.epsilon])]
    print(f"total {time.time() - start:.0f} s")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        eps, acc = zip(*points)
        plt.plot(eps, acc, "o-")
        plt.xlabel(f"epsilon spent (delta={args.delta:g})")
        plt.ylabel("Fashion-MNIST test accuracy")
        plt.title("tfppml DP-SGD: privacy / utility")
        plt.grid(True)
        plt.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
