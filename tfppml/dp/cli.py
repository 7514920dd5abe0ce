"""``tfppml privacy``: print the DP-SGD privacy statement of a run, or calibrate the noise for a target epsilon.

Examples::

    tfppml privacy --n 60000 --batch-size 256 --noise-multiplier 1.1 --epochs 60 --delta 1e-5
    tfppml privacy --n 60000 --batch-size 256 --epochs 60 --delta 1e-5 --target-epsilon 3
    tfppml privacy --n 60000 --batch-size 256 --epochs 60 --delta 1e-5 --target-epsilon 3 --sampling shuffle

The statement gives epsilon under both sampling assumptions; ``--target-epsilon`` calibrates for one,
``--sampling``: Poisson sampling by default (as everywhere in tfppml.dp), ``shuffle`` for the shuffled
fixed-size batches of ``Model.fit``.
"""

from __future__ import annotations

import argparse

from tfppml.dp import accounting


def register(subparsers) -> None:
    """Adds the ``privacy`` sub-command to the ``tfppml`` command line."""
    parser = subparsers.add_parser(
        "privacy",
        help="epsilon of a DP-SGD run, or the noise multiplier for a target epsilon",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--n", type=int, required=True, help="number of training examples")
    parser.add_argument("--batch-size", type=int, required=True, help="examples per step")
    parser.add_argument("--epochs", type=float, required=True, help="passes over the data (may be fractional)")
    parser.add_argument("--delta", type=float, required=True, help="target delta, e.g. 1e-5")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--noise-multiplier", type=float, help="noise std / clip norm: prints the statement")
    group.add_argument("--target-epsilon", type=float, help="budget: prints the calibrated noise multiplier")
    parser.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default="rdp")
    parser.add_argument(
        "--sampling",
        choices=("poisson", "shuffle"),
        default="poisson",
        help="sampling assumption used for --target-epsilon: poisson (default, as compute_epsilon and "
        "PrivacyBudget; batches from tfppml.dp.poisson_sample) or shuffle (shuffled fixed-size batches, as "
        "Model.fit draws them: no amplification claimed)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Executes ``tfppml privacy``; returns the exit code (2 for invalid arguments)."""
    try:
        if args.noise_multiplier is not None:
            print(
                accounting.privacy_statement(
                    args.n, args.batch_size, args.noise_multiplier, args.epochs, args.delta, args.accountant
                ),
                end="",
            )
        else:
            poisson = args.sampling == "poisson"
            sigma = accounting.calibrate_noise(
                args.target_epsilon, args.delta, args.n, args.batch_size, args.epochs, args.accountant, poisson
            )
            eps = accounting.compute_epsilon(
                args.n, args.batch_size, sigma, args.epochs, args.delta, args.accountant, poisson
            )
            sampling = "Poisson sampling (tfppml.dp.poisson_sample)" if poisson else "shuffled batches (no amplification)"
            print(
                f"noise multiplier {sigma:.4f} gives epsilon = {eps:.3f} <= {args.target_epsilon:g} at delta = "
                f"{args.delta:g} for {args.n} examples, batch size {args.batch_size}, {args.epochs:g} epochs "
                f"({accounting.steps_for(args.n, args.batch_size, args.epochs)} steps), "
                f"{sampling}, "
                f"{eps.accountant.upper()} accounting, add-or-remove-one adjacency."
                + (f" Note: {eps.note}." if eps.note else "")
            )
    except (TypeError, ValueError) as err:
        print(f"tfppml privacy: error: {err}")
        return 2
    return 0
