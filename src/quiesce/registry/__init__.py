"""The :class:`Registry` protocol and the :class:`Instance` it registers.

Backends (the embedded file registry, etcd) plug in here; until then only a
``Registry`` object, or None for no registration, is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from quiesce.errors import ConfigError

__all__ = ["Instance", "Registry", "from_url"]


@dataclass(frozen=True)
class Instance:
    """What a registry knows of one running instance (Kratos' ``ServiceInstance``)."""

    id: str
    name: str
    version: str = "0.0.0"
    metadata: Mapping[str, str] = field(default_factory=dict)
    endpoints: Sequence[str] = ()

    def to_json(self) -> str:
        """Kratos' JSON layout, so Go and Python services can discover each other."""
        return json.dumps(
            {
                "id": self.id,
                "name": self.name,
                "version": self.version,
                "metadata": dict(self.metadata),
                "endpoints": list(self.endpoints),
            },
            separators=(",", ":"),
        )


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves (Kratos' ``Registrar``)."""

    async def register(self, instance: Instance) -> None:
        """Announce ``instance`` and keep it announced until deregistered."""
        ...

    async def deregister(self, instance: Instance) -> None:
        """Withdraw ``instance``; watchers see it gone."""
        ...


def from_url(url: str) -> Registry:
    """Build a registry from a URL.

    Raises:
        ConfigError: the scheme is unknown (or its backend is not available yet).

    """
    scheme = urlsplit(url).scheme or url
    raise ConfigError(f"registry {url!r}: unknown registry scheme {scheme!r}")
