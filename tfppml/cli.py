"""The `tfppml` command line.

Each room adds its own sub-commands: a module listed in COMMAND_MODULES defines `register(subparsers)`, which
adds its parser(s) and sets `func` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# gRPC's C core logs connection events (e.g. "Got goaway" when a peer stops) at INFO on stderr; the command line
# and the workers it runs show errors only, unless GRPC_VERBOSITY is set.  Before anything imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# Modules that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "tfppml.net.cli",
    "tfppml.keras.cli",
    "tfppml.dp.cli",
    "tfppml.remote.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfppml",
        description="Privacy-preserving machine learning for TensorFlow/Keras.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
