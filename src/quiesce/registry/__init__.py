"""Where instances announce themselves, and how others find them.

Two tiny protocols, as in Kratos' ``registry`` package:

- :class:`Registry` (Kratos' ``Registrar``): ``register`` / ``deregister``;
  what :class:`~quiesce.App` needs.
- :class:`Discovery` (Kratos' ``Discovery``): ``instances`` / ``watch``; what
  clients need.

Two backends implement both, built from a URL by :func:`from_url`:

- ``file:`` / ``file:///dir`` -> :class:`~quiesce.registry.file.FileRegistry`,
  the embedded default: a directory of instance files with heartbeats, shared
  by every process on one machine.
- ``etcd://host:port[,host:port...]`` (``etcds://`` for TLS) ->
  :class:`~quiesce.registry.etcd.EtcdRegistry`, over etcd's v3 JSON gateway.

Both store an instance as Kratos does (key ``<prefix>/<name>/<id>``, value
:meth:`Instance.to_json` with endpoints in Kratos' form), so Go Kratos
services and quiesce services discover each other. The backends are imported
only when used: ``import quiesce`` imports neither httpx nor the file code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from quiesce.errors import ConfigError, QuiesceError

if TYPE_CHECKING:  # the backends are imported only when a URL asks for them
    from quiesce.registry.etcd import EtcdRegistry
    from quiesce.registry.file import FileRegistry

__all__ = [
    "Discovery",
    "Instance",
    "Registry",
    "RegistryError",
    "Watch",
    "from_url",
    "kratos_endpoint",
    "redact",
]

logger = logging.getLogger("quiesce.registry")

#: Secure schemes and the plain scheme Kratos writes with ``isSecure=true`` instead.
_SECURE_SCHEMES = {"https": "http", "grpcs": "grpc"}


class RegistryError(QuiesceError):
    """A registry could not do what was asked (unreachable, refused, lease lost for good).

    The cause, when there is one, is chained.
    """


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

    @classmethod
    def from_json(cls, text: str | bytes) -> Instance:
        """Parse Kratos' JSON layout (what :meth:`to_json` writes, or a Go service registered).

        Missing ``version``/``metadata``/``endpoints`` (Go omits empty ones) get defaults.

        Raises:
            ValueError: not JSON, not an object, or no string ``id`` and ``name``.

        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an instance is a JSON object")
        ident, name = data.get("id"), data.get("name")
        if not isinstance(ident, str) or not isinstance(name, str):
            raise ValueError("an instance needs string 'id' and 'name'")
        metadata = data.get("metadata") or {}
        endpoints = data.get("endpoints") or []
        return cls(
            id=ident,
            name=name,
            version=str(data.get("version") or ""),
            metadata={str(k): str(v) for k, v in dict(metadata).items()},
            endpoints=tuple(str(e) for e in endpoints),
        )

    def kratos(self) -> Instance:
        """A copy with every endpoint in Kratos' form (see :func:`kratos_endpoint`)."""
        return replace(self, endpoints=tuple(kratos_endpoint(e) for e in self.endpoints))


def kratos_endpoint(endpoint: str) -> str:
    """An endpoint as Kratos registers it: ``http://host:port?isSecure=false``.

    quiesce servers report ``http://host:port`` / ``https://...`` / ``grpc://...``;
    Kratos writes the plain scheme and says TLS in an ``isSecure`` query
    parameter. An endpoint that already has ``isSecure`` is left as it is.
    """
    parts = urlsplit(endpoint)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "isSecure" for k, _ in query):
        return endpoint
    scheme = _SECURE_SCHEMES.get(parts.scheme, parts.scheme)
    secure = "true" if parts.scheme in _SECURE_SCHEMES else "false"
    query.append(("isSecure", secure))
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


class Watch:
    """The changing instance list of one service: an async iterator and an async context manager.

    Each item is the full current list (sorted by id); the first is the list
    as it is now, each next one comes when the list changes. Leaving the
    ``async with`` block, or :meth:`aclose`, releases the watch (its
    connection, its poller).
    """

    def __init__(self, source: AsyncGenerator[list[Instance], None]) -> None:
        self._source = source

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> list[Instance]:
        return await anext(self._source)

    async def aclose(self) -> None:
        """Stop watching; idempotent."""
        await self._source.aclose()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves (Kratos' ``Registrar``)."""

    async def register(self, instance: Instance) -> None:
        """Announce ``instance`` and keep it announced until deregistered."""
        ...

    async def deregister(self, instance: Instance) -> None:
        """Withdraw ``instance``; watchers see it gone."""
        ...


@runtime_checkable
class Discovery(Protocol):
    """How clients find the instances of a service (Kratos' ``Discovery``)."""

    async def instances(self, name: str) -> list[Instance]:
        """The live instances of service ``name`` now, sorted by id."""
        ...

    def watch(self, name: str) -> Watch:
        """The live instances of ``name`` now and after every change (see :class:`Watch`)."""
        ...


def from_url(url: str) -> FileRegistry | EtcdRegistry:
    """Build a registry from a URL; nothing is contacted yet.

    Both backends are a :class:`Registry` and a :class:`Discovery`.

    ``file:`` (default directory), ``file:///dir``, ``etcd://host:port[,host:port...]``,
    ``etcds://...`` (TLS); query options per backend (``ttl``, ``prefix``, ...).

    Raises:
        ConfigError: the scheme is unknown, an option is invalid, or the
            backend's optional dependency (httpx for etcd) is not installed.

    """
    scheme = urlsplit(url).scheme.lower() if ":" in url else ""
    if scheme == "file":
        from quiesce.registry.file import FileRegistry

        return FileRegistry.from_url(url)
    if scheme in ("etcd", "etcds"):
        try:
            from quiesce.registry.etcd import EtcdRegistry
        except ImportError as exc:
            raise ConfigError(
                f"registry {url!r}: the etcd registry needs httpx (pip install 'quiesce[etcd]')"
            ) from exc
        return EtcdRegistry.from_url(url)
    raise ConfigError(
        f"registry {url!r}: unknown registry scheme {scheme or url!r} "
        "(expected file:, etcd:// or etcds://)"
    )


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: safe for logs and messages."""
    parts = urlsplit(url)
    userinfo, sep, hosts = parts.netloc.rpartition("@")
    if not sep or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def query_options(url: str, allowed: Sequence[str]) -> dict[str, str]:
    """The query parameters of a registry URL; an unknown or repeated one is a ConfigError.

    Raises:
        ConfigError: a parameter is not in ``allowed`` or is given twice.

    """
    options: dict[str, str] = {}
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key not in allowed:
            raise ConfigError(
                f"registry {url!r}: unknown option {key!r} (known: {', '.join(allowed)})"
            )
        if key in options:
            raise ConfigError(f"registry {url!r}: option {key!r} given twice")
        options[key] = value
    return options


def positive_seconds(url: str, options: Mapping[str, str], key: str, default: float) -> float:
    """Option ``key`` as a positive number of seconds, or ``default``.

    Raises:
        ConfigError: the value is not a positive number.

    """
    raw = options.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"registry {url!r}: {key}={raw!r} must be a positive number of seconds")
    return value


def parse_instances(items: Mapping[str, str | bytes], where: str) -> list[Instance]:
    """Instances from ``{key: json}``, sorted by id; a value that does not parse is logged, skipped.

    The key is only used to name a bad value in the log.
    """
    found: list[Instance] = []
    for key, raw in items.items():
        try:
            found.append(Instance.from_json(raw))
        except (ValueError, TypeError) as exc:
            _warn_once(f"{where}: skipping {key!r}: not an instance ({exc})")
    found.sort(key=lambda i: i.id)
    return found


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    # A bad value stays bad until someone fixes it: say so once, not on every poll.
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)
