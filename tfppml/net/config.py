"""Cluster configuration: who the parties are, where they listen, and the limits every connection obeys.

A `cluster.json` looks like::

    {
      "parties": {"server0": "localhost:4000", "server1": "localhost:4001", "server2": "localhost:4002"},
      "cert_dir": "certs",
      "timeout": 30,
      "max_message_bytes": 268435456
    }

`cert_dir` is relative to the file's own directory unless absolute. `timeout` (seconds, default 30) bounds every
call and every wait for a peer's message; `max_message_bytes` (default 256 MiB) bounds every message in both
directions. Only `parties` and `cert_dir` are required; unknown fields are refused so that a typo cannot silently
leave a default in force.

Example:
    >>> cfg = ClusterConfig(parties={"server0": "localhost:4000"}, cert_dir="/tmp/certs")
    >>> cfg.address("server0"), cfg.timeout
    ('localhost:4000', 30.0)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from tfppml.net.certs import check_identity_name

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TIMEOUT", "ClusterConfig", "load_config", "parse_address"]

DEFAULT_TIMEOUT = 30.0
#: Identities that may set up computations and serve models by default (every other identity only queries).
DEFAULT_OWNERS = ("driver", "model_owner")
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# gRPC cannot carry a message of 2 GiB or more.
_MAX_MAX_MESSAGE_BYTES = 2**31 - 1 - 64 * 1024
_MIN_MAX_MESSAGE_BYTES = 1024
_FIELDS = ("parties", "cert_dir", "timeout", "max_message_bytes", "owners")


def parse_address(address: object, *, arg: str = "address", allow_port_zero: bool = False) -> tuple[str, int]:
    """Splits "host:port" (IPv6 as "[::1]:port") into host and port.

    Args:
      address: The address string.
      arg: Name used in error messages.
      allow_port_zero: Accept port 0 ("pick a free port").

    Returns:
      `(host, port)`.

    Raises:
      TypeError: `address` is not a str.
      ValueError: It is not host:port with a port in [1, 65535] (or 0 when allowed).
    """
    if not isinstance(address, str):
        raise TypeError(f"{arg} must be a 'host:port' str, got {type(address).__name__}")
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    low = 0 if allow_port_zero else 1
    if not sep or not host or not port_text.isdigit() or not low <= int(port_text) <= 65535:
        raise ValueError(f"{arg} must be 'host:port' with a port in [{low}, 65535], got {address!r}")
    if any(char.isspace() for char in host):
        raise ValueError(f"{arg} has whitespace in its host: {address!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class ClusterConfig:
    """Validated cluster configuration (immutable).

    Attributes:
      parties: Party name -> "host:port", in a fixed order (the order of the file).
      cert_dir: Directory holding ca.crt and the identities' keys and certificates.
      timeout: Default seconds for calls and for waiting on a peer's message.
      max_message_bytes: Largest message accepted or sent.
      owners: Identities the services treat as owners (the MPC servers let them set up, share, compute and
        serve; every other identity may only query served programs).

    Raises (on construction):
      ValueError, TypeError: A field is invalid; the message names the field.
    """

    parties: Mapping[str, str]
    cert_dir: Path
    timeout: float = DEFAULT_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    owners: tuple[str, ...] = DEFAULT_OWNERS
    source: str = field(default="ClusterConfig", compare=False, repr=False)

    def __post_init__(self) -> None:
        where = self.source
        if not isinstance(self.parties, Mapping) or not self.parties:
            raise ValueError(f"{where}: field 'parties' must be a non-empty object name -> 'host:port'")
        seen: dict[tuple[str, int], str] = {}
        for name, address in self.parties.items():
            check_identity_name(name, arg=f"{where}: party name")
            endpoint = parse_address(address, arg=f"{where}: field 'parties.{name}'")
            if endpoint in seen:
                raise ValueError(
                    f"{where}: parties {seen[endpoint]!r} and {name!r} share the address {address!r}"
                )
            seen[endpoint] = name
        object.__setattr__(self, "parties", MappingProxyType(dict(self.parties)))
        if not isinstance(self.cert_dir, (str, os.PathLike)):
            raise TypeError(f"{where}: field 'cert_dir' must be a path, got {type(self.cert_dir).__name__}")
        object.__setattr__(self, "cert_dir", Path(self.cert_dir))
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
            raise ValueError(
                f"{where}: field 'timeout' must be a positive number of seconds, got {timeout!r}"
            )
        object.__setattr__(self, "timeout", float(timeout))
        owners = self.owners
        if isinstance(owners, str) or not isinstance(owners, (list, tuple)) or not owners:
            raise ValueError(f"{where}: field 'owners' must be a non-empty list of identity names, got {owners!r}")
        for index, owner in enumerate(owners):
            check_identity_name(owner, arg=f"{where}: field 'owners[{index}]'")
            if owner in self.parties:
                raise ValueError(f"{where}: field 'owners' names the party {owner!r}; owners are driver identities")
        object.__setattr__(self, "owners", tuple(owners))
        limit = self.max_message_bytes
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not _MIN_MAX_MESSAGE_BYTES <= limit <= _MAX_MAX_MESSAGE_BYTES
        ):
            raise ValueError(
                f"{where}: field 'max_message_bytes' must be an int in [{_MIN_MAX_MESSAGE_BYTES}, "
                f"{_MAX_MAX_MESSAGE_BYTES}], got {limit!r}"
            )

    @property
    def party_names(self) -> tuple[str, ...]:
        """Party names in configuration order."""
        return tuple(self.parties)

    def address(self, name: str) -> str:
        """The "host:port" of party `name`.

        Raises:
          ValueError: `name` is not a party of this cluster.
        """
        self.check_party(name)
        return self.parties[name]

    def check_party(self, name: str, *, arg: str = "name") -> str:
        """Returns `name` if it is a party, else raises ValueError naming the argument and the parties."""
        if name not in self.parties:
            raise ValueError(
                f"`{arg}` must be one of the cluster's parties {list(self.parties)}, got {name!r}"
            )
        return name

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (cert_dir as given, absolute if it was made absolute)."""
        return {
            "parties": dict(self.parties),
            "cert_dir": str(self.cert_dir),
            "timeout": self.timeout,
            "max_message_bytes": self.max_message_bytes,
            "owners": list(self.owners),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the configuration as JSON to `path` and returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return target

    def replace(self, **changes: Any) -> ClusterConfig:
        """A copy with some fields changed (validated again)."""
        values = {**self.to_dict(), **changes, "source": self.source}
        return ClusterConfig(**values)


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Reads and validates a cluster.json.

    Args:
      path: The file.

    Returns:
      The configuration, with `cert_dir` resolved against the file's directory.

    Raises:
      ValueError: The file is missing, is not a JSON object, lacks a required field, has an unknown field, a
        field has a bad value, or `cert_dir` does not hold `ca.crt`. Messages name the file and the field.

    Example:
      >>> import json, tempfile, pathlib
      >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "ca.crt").write_text("")
      0
      >>> _ = (d / "cluster.json").write_text(json.dumps({"parties": {"server0": "localhost:4000"}, "cert_dir": "."}))
      >>> load_config(d / "cluster.json").timeout
      30.0
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        raise ValueError(f"cannot read cluster config {file}: {err.strerror}") from None
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{file}: unknown field(s) {unknown}; known fields are {list(_FIELDS)}")
    for required in ("parties", "cert_dir"):
        if required not in raw:
            raise ValueError(f"{file}: missing required field {required!r}")
    if not isinstance(raw["parties"], dict):
        raise ValueError(f"{file}: field 'parties' must be an object name -> 'host:port'")
    if not isinstance(raw["cert_dir"], str) or not raw["cert_dir"]:
        raise ValueError(f"{file}: field 'cert_dir' must be a non-empty path string, got {raw['cert_dir']!r}")
    cert_dir = Path(raw["cert_dir"])
    if not cert_dir.is_absolute():
        cert_dir = (file.parent / cert_dir).resolve()
    try:
        config = ClusterConfig(
            parties=raw["parties"],
            cert_dir=cert_dir,
            timeout=raw.get("timeout", DEFAULT_TIMEOUT),
            max_message_bytes=raw.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
            owners=raw.get("owners", DEFAULT_OWNERS),
            source=str(file),
        )
    except TypeError as err:  # a value of the wrong JSON type is a bad file, like any other bad value
        raise ValueError(str(err)) from None
    if not (cert_dir / "ca.crt").is_file():
        raise ValueError(f"{file}: field 'cert_dir' ({cert_dir}) holds no ca.crt")
    return config
