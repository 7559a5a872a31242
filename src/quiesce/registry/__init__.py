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
import re
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
    "ChecksNames",
    "Discovery",
    "Instance",
    "KeepsRegistering",
    "Registry",
    "RegistryError",
    "Watch",
    "from_url",
    "kratos_endpoint",
    "redact",
    "split_userinfo",
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
class ChecksNames(Protocol):
    """A registry that refuses service names it cannot store safely (checked before the start)."""

    def check_name(self, name: str) -> None:
        """Raises :class:`~quiesce.ConfigError` for a name that would land in another's key."""
        ...


@runtime_checkable
class KeepsRegistering(Protocol):
    """A registry that can go on registering in the background (``registry_required=False``)."""

    def keep_registered(self, instance: Instance) -> None:
        """Register ``instance`` until it works, then keep it fresh; never raises."""
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
    Every error message shows the URL through :func:`redact`.

    Raises:
        ConfigError: the URL does not parse, the scheme is unknown, an option is
            invalid, or the backend's optional dependency (httpx for etcd) is not installed.

    """
    scheme = _scheme(url)
    if scheme == "file":
        from quiesce.registry.file import FileRegistry

        return FileRegistry.from_url(url)
    if scheme in ("etcd", "etcds"):
        try:
            from quiesce.registry.etcd import EtcdRegistry
        except ImportError as exc:
            raise ConfigError(
                f"registry {redact(url)!r}: the etcd registry needs httpx "
                "(pip install 'quiesce[etcd]')"
            ) from exc
        return EtcdRegistry.from_url(url)
    # The scheme alone, never the URL: an unknown scheme may still carry a password.
    raise ConfigError(
        f"registry {redact(url)!r}: unknown registry scheme {scheme or '(none)'!r} "
        "(expected file:, etcd:// or etcds://)"
    )


def _scheme(url: str) -> str:
    """The scheme of ``url``, lower-cased ('' when there is none); never raises."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


#: RFC 3986's scheme: a letter, then letters, digits, ``+``, ``-`` or ``.``, then ``:``.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def split_userinfo(url: str) -> tuple[str | None, str]:
    """``url``'s userinfo (the text before the authority's ``@``) and ``url`` without it.

    The userinfo ends at the *last* ``@`` after ``//``, wherever it is: a
    password written with a raw ``/``, ``?``, ``#`` or ``@`` still counts as
    userinfo, so that :func:`redact` masks all of it and nothing of it can
    end up in a host, a path or an option named by an error message. The
    price is that an ``@`` elsewhere (in ``?prefix=``) must be written
    ``%40``. An empty authority (``file:///dir``) has no userinfo. Never raises.
    """
    head, sep, rest = url.partition("//")
    if not sep or not _SCHEME.fullmatch(head) or rest.startswith("/"):
        return None, url
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        return None, url
    return userinfo, f"{head}//{hosts}"


def redact(url: str) -> str:
    """``url`` with its userinfo's secret replaced by ``***``: safe for logs and messages.

    ``user:password@`` becomes ``user:***@``; a token alone (``token@``)
    becomes ``***@``. Anything that may be part of the userinfo is masked
    (see :func:`split_userinfo`), so a URL that does not parse is masked
    too. Never raises; ``redact(redact(url)) == redact(url)``.
    """
    userinfo, bare = split_userinfo(url)
    if userinfo is None:
        return url
    user, colon, _ = userinfo.partition(":")
    # A "user" holding a character that cannot be in one is a raw password's tail.
    masked = f"{user}:***" if colon and not _NOT_IN_USER.search(user) else "***"
    head, _, hosts = bare.partition("//")
    return f"{head}//{masked}@{hosts}"


#: Characters an unencoded user name cannot hold (they end the authority).
_NOT_IN_USER = re.compile(r"[/?#\[\]]")


def query_options(url: str, allowed: Sequence[str]) -> dict[str, str]:
    """The query parameters of a registry URL; an unknown or repeated one is a ConfigError.

    Raises:
        ConfigError: a parameter is not in ``allowed`` or is given twice.

    """
    safe = redact(url)
    options: dict[str, str] = {}
    _, _, query = split_userinfo(url)[1].partition("?")
    for key, value in parse_qsl(query.partition("#")[0], keep_blank_values=True):
        if key not in allowed:
            raise ConfigError(
                f"registry {safe!r}: unknown option {key!r} (known: {', '.join(allowed)})"
            )
        if key in options:
            raise ConfigError(f"registry {safe!r}: option {key!r} given twice")
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
        raise ConfigError(
            f"registry {redact(url)!r}: {key}={raw!r} must be a positive number of seconds"
        )
    return value


def parse_instances(
    items: Mapping[str, str | bytes], where: str, name: str | None = None
) -> list[Instance]:
    """Instances from ``{key: json}``, sorted by id; a value that does not parse is logged, skipped.

    With ``name``, an instance of another service is skipped too (logged
    once): what is stored under a service's key or folder does not get to
    speak for another one. The key is only used to name a bad value in the log.
    """
    found: list[Instance] = []
    for key, raw in items.items():
        try:
            instance = Instance.from_json(raw)
        except (ValueError, TypeError) as exc:
            _warn_once(f"{where}: skipping {key!r}: not an instance ({exc})")
            continue
        if name is not None and instance.name != name:
            _warn_once(f"{where}: skipping {key!r}: an instance of {instance.name!r}, not {name!r}")
            continue
        found.append(instance)
    found.sort(key=lambda i: i.id)
    return found


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    # A bad value stays bad until someone fixes it: say so once, not on every poll.
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)
