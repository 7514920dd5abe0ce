"""Checks of a command's arguments where they arrive, before anything is allocated: every refusal is a
ProtocolError naming the argument and what was expected."""

from __future__ import annotations

from typing import Any

from tfppml.errors import ProtocolError

#: Most dimensions a tensor of a command may have.
MAX_RANK = 8


def int_arg(args: dict, name: str, low: int, high: int) -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"argument {name!r} must be an int in [{low}, {high}], got {value!r:.80}")
    return value


def bool_arg(args: dict, name: str, default: bool = False) -> bool:
    value = args.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"argument {name!r} must be a bool, got {value!r:.80}")
    return value


def shape_arg(args: dict, name: str, *, allow_infer: bool = True) -> list[int]:
    """A list of at most MAX_RANK dimensions (>= 0; one -1 to infer, when `allow_infer`)."""
    value = args.get(name)
    low = -1 if allow_infer else 0
    if (
        not isinstance(value, list)
        or len(value) > MAX_RANK
        or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**40 for v in value)
        or value.count(-1) > 1
    ):
        raise ProtocolError(
            f"argument {name!r} must be a list of at most {MAX_RANK} dimensions (ints >= {low}"
            f"{', one -1 at most' if allow_infer else ''}), got {value!r:.120}"
        )
    return value


def window_arg(args: dict, name: str, limit: int) -> list[int]:
    """A pool size or strides: two ints in [1, limit]."""
    value = args.get(name)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit for v in value)
    ):
        raise ProtocolError(f"argument {name!r} must be two ints in [1, {limit}], got {value!r:.80}")
    return value


def choice_arg(args: dict, name: str, choices: tuple[str, ...]) -> str:
    value = args.get(name)
    if value not in choices:
        raise ProtocolError(f"argument {name!r} must be one of {list(choices)}, got {value!r:.80}")
    return value


def id_list_arg(args: dict, name: str, limit: int = 1 << 16) -> list[Any]:
    value = args.get(name, [])
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError(f"argument {name!r} must be a list of at most {limit} shared tensor ids")
    return value
