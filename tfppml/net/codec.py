"""The wire format of every tfppml network message: JSON metadata plus raw tensors.

A message is a small JSON object (`meta`) and a set of named NumPy arrays whose bytes travel as they are, each
behind a header that names its dtype and shape. Nothing is encoded per element, so a 10 MB ring tensor costs
10 MB plus a few dozen bytes.

Layout (all integers little-endian)::

    b"TFPM" | u8 version (1) | u8 flags (0) | u16 tensor count | u32 meta length | meta (UTF-8 JSON object)
    then per tensor:
    u16 name length | name (UTF-8) | u8 dtype code | u8 ndim | ndim x u64 dims | u64 data length | data

Decoding is strict: every length is checked against what is left of the buffer before anything is read or
allocated, a declared data length must equal the size implied by dtype and shape, trailing bytes are refused,
and any violation raises `tfppml.errors.ProtocolError` with a message that says what was wrong and where.

Example:
    >>> import numpy as np
    >>> data = encode_message({"op": "add"}, {"x": np.arange(3, dtype=np.uint64)})
    >>> meta, tensors = decode_message(data, max_bytes=1 << 20)
    >>> meta, tensors["x"].tolist()
    ({'op': 'add'}, [0, 1, 2])
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Mapping

import numpy as np

from tfppml.errors import ProtocolError

__all__ = ["ALLOWED_DTYPES", "MAX_NAME_BYTES", "MAX_NDIM", "MAX_TENSORS", "decode_message", "encode_message"]

MAGIC = b"TFPM"
VERSION = 1

# Codes are part of the wire format: never renumber, only append.
_DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("<u8"),
    2: np.dtype("<i8"),
    3: np.dtype("<i4"),
    4: np.dtype("<f4"),
    5: np.dtype("<f8"),
    6: np.dtype("u1"),
    7: np.dtype("?"),
}
_CODE_OF: dict[str, int] = {dtype.name: code for code, dtype in _DTYPE_CODES.items()}

#: dtype names a message may carry.
ALLOWED_DTYPES: tuple[str, ...] = tuple(dtype.name for dtype in _DTYPE_CODES.values())
#: Most tensors in one message (the count field is 16 bits; this is far below it on purpose).
MAX_TENSORS = 4096
#: Longest JSON metadata: parsed JSON holds ~24x its size in Python objects, so a message's metadata is refused
#: above this before it is parsed (a model configuration of up to 1 MiB is the largest legitimate one).
MAX_META_BYTES = 4 * 1024 * 1024
#: Longest tensor name, in UTF-8 bytes.
MAX_NAME_BYTES = 256
#: Most dimensions of one tensor.
MAX_NDIM = 32

_HEADER = struct.Struct("<4sBBHI")
_NAME_LEN = struct.Struct("<H")
_DTYPE_NDIM = struct.Struct("<BB")
_U64 = struct.Struct("<Q")
_META_SCALARS = (str, int, float, bool, type(None))


def encode_message(
    meta: Mapping[str, Any], tensors: Mapping[str, np.ndarray] | None = None, *, max_bytes: int | None = None
) -> bytes:
    """Serializes metadata and tensors into one message.

    Args:
      meta: A JSON-compatible dict: keys are str; values are str, int, float (finite), bool, None, lists
        (tuples are accepted and decode as lists) and dicts of the same.
      tensors: Name -> NumPy array (NumPy scalars travel as 0-d arrays). dtypes must be one of `ALLOWED_DTYPES`; arrays need not be contiguous (they
        are copied once into the message). Names are non-empty strings of at most `MAX_NAME_BYTES` UTF-8 bytes.
      max_bytes: If given, refuse to build a message longer than this.

    Returns:
      The encoded message.

    Raises:
      TypeError: `meta` holds a value JSON cannot carry exactly, or a tensor is not an ndarray of an allowed
        dtype.
      ValueError: A name is empty or too long, a float is NaN or infinite, there are too many tensors or
        dimensions, or the message would exceed `max_bytes`.

    Example:
      >>> len(encode_message({"tag": "t"}, {"x": np.zeros(4, np.uint64)}))  # 4 spaces align the data
      80
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f"encode_message: argument `meta` must be a dict, got {type(meta).__name__}")
    _check_meta(meta, "meta")
    tensors = {} if tensors is None else tensors
    if not isinstance(tensors, Mapping):
        raise TypeError(f"encode_message: argument `tensors` must be a dict, got {type(tensors).__name__}")
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"encode_message: at most {MAX_TENSORS} tensors per message, got {len(tensors)}")
    meta_bytes = json.dumps(meta, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    heads, arrays = [], []
    for name, array in tensors.items():
        name_bytes, array = _check_tensor(name, array)
        head = bytearray()
        head += _NAME_LEN.pack(len(name_bytes)) + name_bytes
        head += _DTYPE_NDIM.pack(_CODE_OF[array.dtype.name], array.ndim)
        for dim in array.shape:
            head += _U64.pack(dim)
        head += _U64.pack(array.nbytes)
        heads.append(bytes(head))
        arrays.append(array)
    if heads:
        # Trailing spaces (still the same JSON) put the first tensor's data on an 8-byte boundary of the
        # message, so a receiver can use it in place (decode_message(copy=False)) instead of copying it.
        meta_bytes += b" " * (-(_HEADER.size + len(meta_bytes) + len(heads[0])) % 8)
    if len(meta_bytes) > 0xFFFFFFFF:
        raise ValueError(f"encode_message: `meta` encodes to {len(meta_bytes)} bytes, more than 2**32 - 1")
    parts: list[Any] = [_HEADER.pack(MAGIC, VERSION, 0, len(tensors), len(meta_bytes)), meta_bytes]
    total = _HEADER.size + len(meta_bytes)
    for head, array in zip(heads, arrays):
        parts.append(head)
        # A memoryview of the (contiguous) array lets join copy the data once, straight into the message.
        parts.append(memoryview(array.reshape(-1)).cast("B") if array.size else b"")
        total += len(head) + array.nbytes
    if max_bytes is not None and total > max_bytes:
        raise ValueError(
            f"encode_message: the message would be {total} bytes, more than max_bytes={max_bytes}; "
            "raise the cluster's max_message_bytes or send smaller tensors"
        )
    return b"".join(parts)


def decode_message(
    data: bytes | bytearray | memoryview, *, max_bytes: int, copy: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parses and validates a message made by `encode_message`.

    Args:
      data: The received bytes.
      max_bytes: Refuse messages longer than this (checked before anything else).
      copy: If True (default) every array owns fresh, writable memory; if False arrays are read-only views
        into `data` where their data is aligned (saves one copy of large tensors; `data` stays alive as long as
        they do), and copies where it is not.

    Returns:
      `(meta, tensors)`: the metadata dict and a dict name -> array, in the order they were encoded.

    Raises:
      ProtocolError: The message is longer than `max_bytes`, truncated, has trailing bytes, a bad magic or
        version, an unknown dtype, a declared length that does not match, a duplicate or invalid name,
        invalid JSON metadata, or a bool tensor holding a byte other than 0 or 1.
      TypeError: `data` is not bytes-like.

    Example:
      >>> decode_message(encode_message({"a": 1}), max_bytes=1024)
      ({'a': 1}, {})
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_message: argument `data` must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    size = len(view)
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes} bytes")
    reader = _Reader(view)
    magic, version, flags, count, meta_len = reader.unpack(_HEADER, "message header")
    if magic != MAGIC:
        raise ProtocolError(f"not a tfppml message: bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(f"unsupported message version {version} (this side speaks version {VERSION})")
    if flags != 0:
        raise ProtocolError(f"unsupported message flags {flags:#x} (expected 0)")
    if count > MAX_TENSORS:
        raise ProtocolError(f"message declares {count} tensors, more than the limit of {MAX_TENSORS}")
    if meta_len > MAX_META_BYTES:
        raise ProtocolError(f"message metadata of {meta_len} bytes exceeds the limit of {MAX_META_BYTES} bytes")
    meta = _parse_meta(reader.take(meta_len, "metadata"))
    tensors: dict[str, np.ndarray] = {}
    for index in range(count):
        where = f"tensor #{index}"
        (name_len,) = reader.unpack(_NAME_LEN, f"{where} name length")
        if not 0 < name_len <= MAX_NAME_BYTES:
            raise ProtocolError(f"{where}: name length {name_len} is not in [1, {MAX_NAME_BYTES}]")
        try:
            name = bytes(reader.take(name_len, f"{where} name")).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"{where}: name is not valid UTF-8 ({err.reason})") from None
        where = f"tensor {name!r}"
        if name in tensors:
            raise ProtocolError(f"{where} appears twice in the message")
        code, ndim = reader.unpack(_DTYPE_NDIM, f"{where} dtype")
        dtype = _DTYPE_CODES.get(code)
        if dtype is None:
            raise ProtocolError(f"{where}: unknown dtype code {code} (known: {sorted(_DTYPE_CODES)})")
        if ndim > MAX_NDIM:
            raise ProtocolError(f"{where}: {ndim} dimensions, more than the limit of {MAX_NDIM}")
        shape = tuple(reader.unpack(_U64, f"{where} dimension {axis}")[0] for axis in range(ndim))
        (nbytes,) = reader.unpack(_U64, f"{where} data length")
        expected = _nbytes(shape, dtype.itemsize, limit=size)
        if expected is None or nbytes != expected:
            implied = "more than the whole message" if expected is None else f"{expected} bytes"
            raise ProtocolError(
                f"{where}: declared data length {nbytes} does not match dtype {dtype.name} and shape "
                f"{shape} ({implied})"
            )
        chunk = reader.take(nbytes, f"{where} data")
        try:
            array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        except ValueError as err:  # e.g. a zero-size shape whose other dimensions overflow numpy's limits
            raise ProtocolError(f"{where}: shape {shape} is not representable ({err})") from None
        if dtype.kind == "b" and array.size and np.frombuffer(chunk, dtype=np.uint8).max() > 1:
            raise ProtocolError(f"{where}: bool data holds a byte other than 0 or 1")
        # An unaligned view (data at an offset that is not a multiple of the item size) is copied even when
        # copy=False: NumPy would buffer every operation on it.  encode_message aligns the first tensor.
        tensors[name] = array.copy() if copy or not array.flags.aligned else array
    if reader.remaining:
        raise ProtocolError(f"{reader.remaining} unexpected trailing bytes after the last tensor")
    return meta, tensors


class _Reader:
    """Bounds-checked sequential reads from a byte view."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._view) - self._pos

    def take(self, count: int, what: str) -> memoryview:
        if count > self.remaining:
            raise ProtocolError(
                f"message truncated: {what} needs {count} bytes at offset {self._pos}, only {self.remaining} left"
            )
        chunk = self._view[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def unpack(self, layout: struct.Struct, what: str) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size, what))


def _nbytes(shape: tuple[int, ...], itemsize: int, *, limit: int) -> int | None:
    """Byte size implied by a shape, or None when it exceeds `limit` (never builds an absurd number)."""
    if 0 in shape:
        return 0
    total = itemsize
    for dim in shape:
        total *= dim
        if total > limit:
            return None
    return total


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name} is not allowed")


def _parse_meta(raw: memoryview) -> dict[str, Any]:
    try:
        text = bytes(raw).decode("utf-8")
        meta = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise ProtocolError(f"metadata is not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise ProtocolError("metadata JSON is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, non-finite constants, over-long integers
        raise ProtocolError(f"metadata is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"metadata must be a JSON object, got {type(meta).__name__}")
    return meta


def _check_meta(value: Any, path: str, depth: int = 0) -> None:
    if depth > 64:
        raise ValueError(f"encode_message: `{path}` is nested more than 64 levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"encode_message: `{path}` has a key {key!r} of type {type(key).__name__}; keys must be str"
                )
            _check_meta(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_meta(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(
                f"encode_message: `{path}` is {value}; JSON metadata carries finite numbers only"
            )
    elif not isinstance(value, _META_SCALARS) or isinstance(value, np.generic):
        raise TypeError(
            f"encode_message: `{path}` has type {type(value).__name__}; metadata holds only str, int, float, "
            "bool, None, list and dict (convert NumPy scalars with int()/float(), send arrays as tensors)"
        )


def _check_tensor(name: Any, array: Any) -> tuple[bytes, np.ndarray]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"encode_message: tensor names must be non-empty str, got {name!r}")
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > MAX_NAME_BYTES:
        raise ValueError(
            f"encode_message: tensor name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes"
        )
    if isinstance(array, np.generic):  # a NumPy scalar (e.g. from .sum()): carried as a 0-d array
        array = np.asarray(array)
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"encode_message: tensor {name!r} must be a numpy.ndarray, got {type(array).__name__} "
            "(convert tf.Tensors with .numpy())"
        )
    if array.dtype.name not in _CODE_OF:
        raise TypeError(
            f"encode_message: tensor {name!r} has dtype {array.dtype.name}; allowed: {', '.join(ALLOWED_DTYPES)}"
        )
    if array.ndim > MAX_NDIM:
        raise ValueError(f"encode_message: tensor {name!r} has {array.ndim} dimensions, more than {MAX_NDIM}")
    wire = _DTYPE_CODES[_CODE_OF[array.dtype.name]]
    if array.dtype != wire:  # a big-endian array: the wire is little-endian
        array = array.astype(wire)
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    return name_bytes, array if array.flags.c_contiguous else array.copy(order="C")
