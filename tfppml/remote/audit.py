"""A tamper-evident audit log: append-only JSON lines chained by SHA-256.

Every entry is one JSON object on its own line. Besides what happened (``who``, ``op``, ``objects``,
``allowed``, ``rule``, ``result_bytes`` ...) each entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the hash of the
previous entry; 64 zeros for the first) and ``hash``: the SHA-256 of the entry's canonical JSON (sorted keys, no
whitespace) without the ``hash`` field. Editing, removing, inserting or reordering any entry breaks the chain
at that entry, which `verify_log` reports by number. Cutting entries off the end cannot be seen from the file
alone: compare the head hash that `verify_log` returns with one recorded elsewhere.

Each append is written with one `write` on an O_APPEND descriptor and fsync'd before the call returns, so an
entry a caller was told about survives a crash. A log re-opened after a restart is verified first and the chain
continues from its last entry; a broken log is refused rather than extended.

Entries never hold data values: identities, operation names, object ids, dataset names, shapes, sizes and
rule names only.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "audit.log"
    >>> log = AuditLog(path)
    >>> log.append(who="analyst", op="get", objects=["a1"], allowed=False, rule="raw_read")["seq"]
    0
    >>> verify_log(path).entries
    1
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["GENESIS", "AuditLog", "AuditLogError", "VerifyResult", "entry_hash", "read_entries", "verify_log"]

#: The ``prev`` of the first entry.
GENESIS = "0" * 64
_RESERVED = ("seq", "time", "prev", "hash")


class AuditLogError(ValueError):
    """An audit log is malformed or its hash chain is broken; the message names the entry (1-based line)."""


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical JSON, without its ``hash`` field.

    Args:
      entry: A log entry (with or without ``hash``).

    Returns:
      64 hex digits.

    Example:
      >>> len(entry_hash({"seq": 0, "prev": GENESIS}))
      64
    """
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def read_entries(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, entry)`` for each line of a log (1-based), without checking the chain.

    Raises:
      AuditLogError: A line is not a JSON object, or the file does not end with a newline (a torn write).
      FileNotFoundError: No such file.
    """
    with open(path, "rb") as file:
        data = file.read()
    if data and not data.endswith(b"\n"):
        lines = data.split(b"\n")
        raise AuditLogError(
            f"{path}: entry {len(lines)} (line {len(lines)}) is incomplete (no newline at end)"
        )
    for number, raw in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise AuditLogError(f"{path}: entry {number} (line {number}) is not valid JSON: {err}") from None
        if not isinstance(entry, dict):
            raise AuditLogError(f"{path}: entry {number} (line {number}) is not a JSON object")
        yield number, entry


@dataclass(frozen=True)
class VerifyResult:
    """What `verify_log` found: the number of entries and the hash of the last one (GENESIS if empty)."""

    entries: int
    head: str


def verify_log(path: str | os.PathLike[str]) -> VerifyResult:
    """Checks a log's hash chain from the first entry to the last.

    Args:
      path: The log file.

    Returns:
      A `VerifyResult` (entry count and head hash).

    Raises:
      AuditLogError: The first broken entry, by number: not JSON, a wrong ``seq``, a ``prev`` that is not the
        previous entry's hash (an entry was removed, inserted or reordered), or a ``hash`` that does not match
        the content (the entry was edited).
      FileNotFoundError: No such file.

    Example:
      >>> verify_log(path).head == entry_hash(last_entry)   # doctest: +SKIP
      True
    """
    prev = GENESIS
    count = 0
    for number, entry in read_entries(path):
        where = f"{path}: entry {number} (line {number})"
        missing = [key for key in ("seq", "prev", "hash") if key not in entry]
        if missing:
            raise AuditLogError(f"{where} lacks field(s) {missing}")
        if entry["seq"] != number - 1:
            raise AuditLogError(f"{where} has seq {entry['seq']!r}, expected {number - 1}")
        if entry["prev"] != prev:
            raise AuditLogError(
                f"{where}: its prev hash does not match entry {number - 1}'s hash "
                "(an entry before it was edited, removed, inserted or reordered)"
            )
        if entry["hash"] != entry_hash(entry):
            raise AuditLogError(f"{where}: its hash does not match its content (the entry was edited)")
        prev = entry["hash"]
        count = number
    return VerifyResult(entries=count, head=prev)


class AuditLog:
    """An append-only, hash-chained, fsync'd JSON-lines log (thread-safe).

    Args:
      path: The log file; created (with its directory) if missing. An existing log is verified and continued.

    Raises:
      AuditLogError: The existing log's chain is broken (the worker must not extend a tampered log).

    Example:
      >>> log = AuditLog("/tmp/audit.log")                                    # doctest: +SKIP
      >>> log.append(who="analyst", op="add", objects=["a", "b"], allowed=True)  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self._path.exists():
            result = verify_log(self._path)
            self._seq, self._prev = result.entries, result.head
        else:
            self._seq, self._prev = 0, GENESIS
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(self._path, flags, 0o600)

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def head(self) -> str:
        """Hash of the last entry (GENESIS when empty)."""
        return self._prev

    def entries(self) -> list[dict[str, Any]]:
        """Every entry so far (read back from the file)."""
        return [entry for _, entry in read_entries(self._path)]

    def append(self, **fields: Any) -> dict[str, Any]:
        """Appends one entry and fsyncs it.

        Args:
          **fields: JSON-compatible fields (``who``, ``op``, ``objects``, ``allowed`` ...); ``seq``, ``time``,
            ``prev`` and ``hash`` are set here.

        Returns:
          The entry as written.

        Raises:
          ValueError: A field name is reserved, or the log is closed.
          TypeError: A field is not JSON-serializable.
        """
        reserved = [key for key in fields if key in _RESERVED]
        if reserved:
            raise ValueError(f"AuditLog.append: fields {reserved} are set by the log itself")
        with self._lock:
            if self._fd is None:
                raise ValueError(f"AuditLog {self._path} is closed")
            entry = {"seq": self._seq, "time": round(time.time(), 6), **fields, "prev": self._prev}
            entry["hash"] = entry_hash(entry)
            line = _canonical(entry) + b"\n"
            written = os.write(self._fd, line)
            if written != len(line):  # a short write would tear the line: refuse to go on
                raise OSError(f"AuditLog {self._path}: short write ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
            self._seq += 1
            self._prev = entry["hash"]
            return entry

    def close(self) -> None:
        """Closes the file (further appends raise)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
