"""A tamper-evident audit log: append-only JSON lines, each authenticated with HMAC-SHA256, plus a checkpoint.

Every entry is one JSON object on its own line. Besides what happened (``who``, ``op``, ``objects``,
``allowed``, ``rule``, ``result_bytes`` ...) each entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous
entry's MAC; 64 zeros for the first) and ``mac``: HMAC-SHA256 of the entry's canonical JSON (sorted keys, no
whitespace, without ``mac``) under a key derived from the worker's **audit key**, a 32-byte secret the data
owner keeps *outside* the log's directory (`load_key` refuses a key file in the log's directory or readable by
group or others; `tfppml audit keygen PATH` makes one). Without the key nobody can write an entry that
verifies, so editing an entry (even re-chaining every later one), inserting, reordering or deleting entries is
caught by `verify_log`, which names the first bad entry.

A checkpoint file beside the log (``<log>.checkpoint``) holds the entry count and the last MAC, authenticated
with another derived key and rewritten atomically after each append. Cutting entries off the end, or deleting
the checkpoint, is therefore caught too. (The entry is written before its checkpoint: after a crash between the
two, the log may hold one entry more than the checkpoint says, which `verify_log` accepts and the next open
repairs.)

What the log alone cannot show: someone who can write the worker's files can put back an *older copy* of both
the log and its checkpoint (a consistent earlier state), which verifies on its own. To catch that, record the
head that `tfppml audit verify` prints somewhere the worker cannot write (the owner's monitoring) and verify
later with ``extends=`` that head (``tfppml audit verify LOG --key KEY --extends HEAD``): a log that does not
contain that entry was rolled back or replaced. The privacy ledger (`tfppml.remote.ledger`) is kept the same
way, under its own derived keys, and is checked the same way.

Each append is written with one `write` on an O_APPEND descriptor and fsync'd before the call returns. A log
re-opened after a restart is verified first and the chain continues from its last entry; a broken log is refused
rather than extended. Entries never hold data values: identities, operation names, object ids, data set names,
shapes, sizes and rule names only.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> key = generate_key(root / "keys" / "audit.key")
    >>> log = AuditLog(root / "logs" / "audit.log", key)
    >>> log.append(who="analyst", op="get", objects=["a1"], allowed=False, rule="raw_read")["seq"]
    0
    >>> verify_log(root / "logs" / "audit.log", key).entries
    1
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "GENESIS",
    "AuditKey",
    "AuditLog",
    "AuditLogError",
    "VerifyResult",
    "checkpoint_path",
    "generate_key",
    "load_key",
    "read_entries",
    "verify_log",
]

#: The ``prev`` of the first entry.
GENESIS = "0" * 64
_RESERVED = ("seq", "time", "prev", "mac")
KEY_BYTES = 32


class AuditLogError(ValueError):
    """An audit log is malformed, does not authenticate, or was cut; the message names the entry (1-based line)."""


@dataclass(frozen=True)
class AuditKey:
    """The audit key (kept outside the log's directory); `mac` derives one key per purpose from it."""

    secret: bytes
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != KEY_BYTES:
            raise ValueError(f"an audit key is {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never print the secret
        return f"AuditKey(path={str(self.path)!r})"

    def mac(self, purpose: str, message: bytes) -> str:
        """HMAC-SHA256 (hex) of `message` under the key derived for `purpose` (e.g. "audit/entry")."""
        derived = hmac.digest(self.secret, b"tfppml/" + purpose.encode("ascii"), "sha256")
        return hmac.new(derived, message, hashlib.sha256).hexdigest()


def generate_key(path: str | os.PathLike[str]) -> AuditKey:
    """Writes a fresh random audit key to `path` (mode 0600; its directory is created 0700) and returns it.

    Raises:
      FileExistsError: `path` exists (a key is never overwritten: the logs it signed would stop verifying).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return AuditKey(secret, path)


def load_key(path: str | os.PathLike[str], *, log: str | os.PathLike[str] | None = None) -> AuditKey:
    """Reads an audit key file (64 hex digits).

    Args:
      path: The key file.
      log: The log it is for: the key must not be in the log's directory (nor below it), where whoever can
        edit the log could also read the key.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is readable or writable by group or others, lies in the log's directory, or does not
        hold 64 hex digits (the message names the path).
    """
    path = Path(path)
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"audit key {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ValueError(
            f"audit key {path} has mode {stat.filemode(info.st_mode)}: group and others must have no access "
            f"(chmod 600 {path})"
        )
    if log is not None:
        log_dir = Path(log).resolve().parent
        key = path.resolve()
        if key.parent == log_dir or log_dir in key.parents:
            raise ValueError(
                f"audit key {path} is in the audit log's directory {log_dir}: keep it elsewhere (whoever can edit "
                "the log must not be able to read the key)"
            )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"audit key {path} must hold {2 * KEY_BYTES} hex digits")
    return AuditKey(secret, path)


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint of the log at `path` lives."""
    path = Path(path)
    return path.with_name(path.name + ".checkpoint")


def read_entries(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, entry)`` for each line of a log (1-based), without authenticating anything.

    Raises:
      AuditLogError: A line is not a JSON object, or the file does not end with a newline (a torn write).
      FileNotFoundError: No such file.
    """
    with open(path, "rb") as file:
        data = file.read()
    if data and not data.endswith(b"\n"):
        lines = data.split(b"\n")
        raise AuditLogError(f"{path}: entry {len(lines)} (line {len(lines)}) is incomplete (no newline at end)")
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
    """What `verify_log` found: the entry count, the last MAC (GENESIS if empty), and whether the checkpoint
    covers every entry (False: the last entry's checkpoint was not written, as after a crash)."""

    entries: int
    head: str
    checkpointed: bool = True


def _checkpoint_fields(path: Path, entries: int, head: str) -> dict[str, Any]:
    return {"log": path.name, "entries": entries, "head": head}


def verify_log(
    path: str | os.PathLike[str], key: AuditKey, *, purpose: str = "audit", extends: str | None = None
) -> VerifyResult:
    """Authenticates every entry of a log, its chain, and its checkpoint.

    Args:
      path: The log file.
      key: The audit key it was written with.
      purpose: "audit" for audit logs, "ledger" for privacy ledgers (each has its own derived keys).
      extends: A head recorded earlier (64 hex digits, as `VerifyResult.head` / `tfppml audit verify` print it);
        the log must contain the entry with that MAC, i.e. be that log or a continuation of it. None: no check.

    Returns:
      A `VerifyResult`.

    Raises:
      AuditLogError: The first problem, naming the entry: not JSON, a wrong ``seq`` (an entry removed, inserted
        or reordered), a ``prev`` that is not the previous entry's MAC, a MAC that does not authenticate (the
        entry was edited, or this is not the log's key), or a checkpoint that is missing, does not authenticate,
        or records more entries than the log holds (entries were cut off the end); or, with `extends`, the log
        does not contain the recorded head (rolled back to an earlier state, or replaced).
      ValueError: `extends` is not 64 hex digits.
      FileNotFoundError: No such log.
    """
    if extends is not None and (
        not isinstance(extends, str) or len(extends) != 64 or any(c not in "0123456789abcdef" for c in extends)
    ):
        raise ValueError(f"`extends` must be a head of 64 lowercase hex digits, got {extends!r}")
    path = Path(path)
    prev, count, macs = GENESIS, 0, [GENESIS]
    for number, entry in read_entries(path):
        where = f"{path}: entry {number} (line {number})"
        missing = [k for k in ("seq", "prev", "mac") if k not in entry]
        if missing:
            raise AuditLogError(f"{where} lacks field(s) {missing}")
        if entry["seq"] != number - 1:
            raise AuditLogError(f"{where} has seq {entry['seq']!r}, expected {number - 1}")
        if entry["prev"] != prev:
            raise AuditLogError(
                f"{where}: its prev does not match entry {number - 1}'s MAC (an entry before it was edited, "
                "removed, inserted or reordered)"
            )
        body = _canonical({k: v for k, v in entry.items() if k != "mac"})
        if not hmac.compare_digest(str(entry["mac"]), key.mac(f"{purpose}/entry", body)):
            raise AuditLogError(
                f"{where}: its MAC does not authenticate (the entry was edited or written without the key, or "
                "this is not the log's key)"
            )
        prev = entry["mac"]
        macs.append(prev)
        count = number
    recorded = _read_checkpoint(path, key, purpose, count)
    if recorded is None:
        return VerifyResult(0, GENESIS)
    if recorded > count:
        raise AuditLogError(
            f"{path}: the log holds {count} entries but its checkpoint records {recorded}: entries were cut off "
            "the end"
        )
    if recorded < count - 1:
        raise AuditLogError(
            f"{path}: the checkpoint records {recorded} entries but the log holds {count}: the checkpoint is stale "
            "(an older copy was put back)"
        )
    if extends is not None and extends not in macs:
        raise AuditLogError(
            f"{path}: no entry has the recorded head {extends[:16]}...: the log (with its checkpoint) was rolled "
            f"back to an earlier state or replaced; it holds {count} entries ending at {prev[:16]}..."
        )
    return VerifyResult(count, prev, checkpointed=recorded == count)


def _read_checkpoint(path: Path, key: AuditKey, purpose: str, count: int) -> int | None:
    """The entry count the checkpoint records (None: no checkpoint and an empty log)."""
    ckpt = checkpoint_path(path)
    try:
        raw = json.loads(ckpt.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if count == 0:
            return None
        raise AuditLogError(
            f"{path}: its checkpoint {ckpt.name} is missing, so a cut-off tail could not be detected"
        ) from None
    except ValueError as err:
        raise AuditLogError(f"{path}: its checkpoint {ckpt.name} is not valid JSON: {err}") from None
    fields = {k: raw.get(k) for k in ("log", "entries", "head")} if isinstance(raw, dict) else {}
    mac = raw.get("mac") if isinstance(raw, dict) else None
    if not isinstance(mac, str) or not hmac.compare_digest(mac, key.mac(f"{purpose}/checkpoint", _canonical(fields))):
        raise AuditLogError(f"{path}: its checkpoint {ckpt.name} does not authenticate (edited, or not this key)")
    if fields["log"] != path.name or not isinstance(fields["entries"], int):
        raise AuditLogError(f"{path}: its checkpoint {ckpt.name} belongs to another log ({fields['log']!r})")
    return fields["entries"]


class AuditLog:
    """An append-only, authenticated, checkpointed, fsync'd JSON-lines log (thread-safe).

    Args:
      path: The log file; created (with its directory) if missing. An existing log is verified and continued.
      key: The audit key (see `load_key`).
      purpose: "audit" or "ledger" (separate derived keys, so entries of one cannot pass as the other's).

    Raises:
      AuditLogError: The existing log does not verify (the worker must not extend a tampered log), or its
        checkpoint exists without the log.
    """

    def __init__(self, path: str | os.PathLike[str], key: AuditKey, *, purpose: str = "audit") -> None:
        if not isinstance(key, AuditKey):
            raise TypeError(f"`key` must be an AuditKey (see tfppml.remote.audit.load_key), got {type(key).__name__}")
        self._path = Path(path)
        self._key = key
        self._purpose = purpose
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self._path.exists():
            result = verify_log(self._path, key, purpose=purpose)
            self._seq, self._prev = result.entries, result.head
            if not result.checkpointed:
                self._write_checkpoint()
        elif checkpoint_path(self._path).exists():
            raise AuditLogError(f"{self._path} is missing but its checkpoint exists: the log was deleted")
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
        """MAC of the last entry (GENESIS when empty)."""
        return self._prev

    def entries(self) -> list[dict[str, Any]]:
        """Every entry so far (read back from the file)."""
        return [entry for _, entry in read_entries(self._path)]

    def append(self, **fields: Any) -> dict[str, Any]:
        """Appends one entry, fsyncs it, then rewrites the checkpoint.

        Args:
          **fields: JSON-compatible fields (``who``, ``op``, ``objects``, ``allowed`` ...); ``seq``, ``time``,
            ``prev`` and ``mac`` are set here.

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
            entry["mac"] = self._key.mac(f"{self._purpose}/entry", _canonical(entry))
            line = _canonical(entry) + b"\n"
            written = os.write(self._fd, line)
            if written != len(line):  # a short write would tear the line: refuse to go on
                raise OSError(f"AuditLog {self._path}: short write ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
            self._seq += 1
            self._prev = entry["mac"]
            self._write_checkpoint()
            return entry

    def _write_checkpoint(self) -> None:
        fields = _checkpoint_fields(self._path, self._seq, self._prev)
        record = {**fields, "mac": self._key.mac(f"{self._purpose}/checkpoint", _canonical(fields))}
        target = checkpoint_path(self._path)
        temporary = target.with_name(target.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _canonical(record) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

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
