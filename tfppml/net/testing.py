"""The "echo" service: a real, tiny service for testing the network layer (not a protocol).

Operations (request meta "op"):

- "echo": returns the request's meta and tensors, plus "party" (this worker) and "caller" (the authenticated
  identity of the driver).
- "ring": each party sends its tensor "x" to the next party in configuration order (under tag "ring/<round>")
  and returns "sum" = its own x plus the one received from the previous party. Call every party at once.
- "send" / "recv": one channel operation: send tensor "x" to meta "peer" under meta "tag", or receive from
  "peer" under "tag" (with optional "timeout") and return it as "x".
- "send_timed" / "recv_all": send tensor "x" to "peer" "repeat" times (tags "<tag>/<i>") and return the seconds
  each send took (until the peer stored it); receive all of them and return the last as "x".
- "fail": raises ValueError(meta "message"), to test remote error reporting.
- "sleep": sleeps meta "seconds" (at most 60), to test deadlines.
- "pid": returns this worker's process id.

Example:
    >>> service = make_echo_service("server0", config, channel)                  # doctest: +SKIP
    >>> service.handle("driver", {"op": "echo"}, {})[0]["party"]                 # doctest: +SKIP
    'server0'
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from tfppml.net.channel import Channel
from tfppml.net.config import ClusterConfig

__all__ = ["EchoService", "make_echo_service"]

Message = tuple[dict[str, Any], dict[str, np.ndarray]]


class EchoService:
    """See the module docstring.

    Args:
      name: This party.
      channel: Its channel to the other parties.
    """

    def __init__(self, name: str, channel: Channel) -> None:
        self._name = name
        self._channel = channel

    def handle(self, caller: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> Message:
        op = meta.get("op")
        if op == "echo":
            return {**meta, "party": self._name, "caller": caller}, tensors
        if op == "ring":
            parties = self._channel.parties
            index = parties.index(self._name)
            tag = f"ring/{meta.get('round', 0)}"
            self._channel.send(parties[(index + 1) % len(parties)], tag, tensors["x"])
            received = self._channel.recv(parties[index - 1], tag)
            return {"party": self._name}, {"sum": tensors["x"] + received}
        if op == "send":
            self._channel.send(meta["peer"], meta["tag"], tensors["x"])
            return {"party": self._name}, {}
        if op == "recv":
            value = self._channel.recv(meta["peer"], meta["tag"], timeout=meta.get("timeout"))
            return {"party": self._name}, {"x": value}
        if op == "send_timed":
            seconds = []
            for index in range(int(meta.get("repeat", 1))):
                start = time.perf_counter()
                self._channel.send(meta["peer"], f"{meta['tag']}/{index}", tensors["x"])
                seconds.append(time.perf_counter() - start)
            return {"party": self._name, "seconds": seconds}, {}
        if op == "recv_all":
            received = [
                self._channel.recv(meta["peer"], f"{meta['tag']}/{index}")
                for index in range(int(meta.get("repeat", 1)))
            ]
            return {"party": self._name, "count": len(received)}, {"x": received[-1]}
        if op == "fail":
            raise ValueError(str(meta.get("message", "requested failure")))
        if op == "sleep":
            time.sleep(min(float(meta.get("seconds", 0)), 60.0))
            return {"party": self._name}, {}
        if op == "pid":
            return {"party": self._name, "pid": os.getpid()}, {}
        raise ValueError(f"echo service: unknown op {op!r}")


def make_echo_service(name: str, config: ClusterConfig, channel: Channel, **_: Any) -> EchoService:
    """Service factory for "echo" (the signature every service factory has)."""
    return EchoService(name, channel)
