"""What a worker runs: the `Service` interface and the registry of service names.

A worker process answers driver calls with a service object made by a factory::

    factory(name: str, config: ClusterConfig, channel: Channel) -> Service

`name` is the worker's party name and `channel` its `PeerChannel` to the other parties. The service's
`handle(caller, meta, tensors)` gets the caller's authenticated identity (the common name of its TLS certificate)
and returns `(meta, tensors)`. If it has a `close()` method, the worker calls it on shutdown.

`tfppml worker --service NAME` looks NAME up in `SERVICES` ("name" -> "module:factory"); a "module:factory" string
is also accepted directly, so a room can run its service before it is registered here. Modules are imported only
when their service is started, so a worker does not import what it does not run.

Example:
    >>> factory = resolve_service("echo")
    >>> factory.__name__
    'make_echo_service'
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

__all__ = ["SERVICES", "Service", "ServiceFactory", "resolve_service"]


@runtime_checkable
class Service(Protocol):
    """A worker's request handler."""

    def handle(
        self, caller: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Answers one driver call.

        Args:
          caller: The authenticated identity of the caller (its certificate's common name).
          meta: The request's JSON metadata.
          tensors: The request's arrays.

        Returns:
          `(meta, tensors)` of the reply (same rules as `tfppml.net.codec.encode_message`).

        Raises:
          Anything: the caller gets a `tfppml.net.transport.RemoteError` (a ProtocolError) with the type, message
          and a traceback summary; `PolicyDenied` and `PartyUnavailableError` reach the caller as themselves
          (PolicyDenied without a traceback, so that nothing about the refused data leaks).
        """
        ...


ServiceFactory = Callable[..., Service]

#: Built-in service names -> "module:factory". Read-only: add a line here to register a service.
SERVICES: Mapping[str, str] = MappingProxyType(
    {
        "ckks": "tfppml.he.service:make_service",
        "echo": "tfppml.net.testing:make_echo_service",
        "mpc": "tfppml.mpc.runtime:make_service",
        "remote": "tfppml.remote.service:make_service",
    }
)


def resolve_service(spec: str, registry: Mapping[str, str] = SERVICES) -> ServiceFactory:
    """Imports and returns the factory for a service name or a "module:factory" string.

    Args:
      spec: A key of `registry`, or "package.module:function".
      registry: Name -> "module:factory" (default: `SERVICES`).

    Returns:
      The factory callable.

    Raises:
      ValueError: `spec` is neither a registered name nor "module:factory", or the module or factory cannot be
        found (the message names both the service and the target).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"`service` must be a registered name {sorted(registry)} or 'module:factory', got {spec!r}"
        )
    target = registry.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown service {spec!r}: registered services are {sorted(registry)}, or give 'module:factory'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"service {spec!r} -> {target!r}: cannot import {module_name!r} ({err})") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"service {spec!r} -> {target!r}: {module_name} has no callable {attr!r}")
    return factory
