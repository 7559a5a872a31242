"""etcd as the registry, over its v3 JSON gateway (grpc-gateway) with httpx.

What it does, in etcd's terms (DESIGN.md, "Registry facts"):

- register: ``lease/grant`` (TTL ``ttl``), then ``kv/put`` of
  ``<prefix>/<name>/<id>`` -> the instance's Kratos JSON, attached to the lease;
  then a background task keeps the lease (and the key) alive for as long as the
  process lives (:mod:`quiesce.registry.etcd_lease`).
- deregister: ``lease/revoke``; watchers see the delete within milliseconds.
  A crashed instance disappears when its lease expires, ``ttl`` seconds on.
- watch: ``kv/range`` of ``<prefix>/<name>/``, then ``watch`` from the next
  revision, re-listed now and then (:mod:`quiesce.registry.etcd_watch`).

The requests go through :class:`~quiesce.registry.etcd_gateway.EtcdGateway`
(member failover, authentication, ``/v3/`` or ``/v3beta/``), and ``etcd://``
URLs are read by :mod:`quiesce.registry.etcd_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, Sequence

from quiesce.backoff import backoff_delay
from quiesce.errors import ConfigError
from quiesce.registry import Instance, RegistryError, Watch, parse_instances
from quiesce.registry.etcd_gateway import EtcdError, EtcdGateway
from quiesce.registry.etcd_lease import Registration, grant_and_put, keep_alive, revoke
from quiesce.registry.etcd_url import check_client_url, registry_arguments
from quiesce.registry.etcd_watch import watch_prefix

__all__ = ["EtcdError", "EtcdRegistry"]

logger = logging.getLogger("quiesce.registry")

#: First retry delay after an error; it doubles up to ``min(ttl / 3, _BACKOFF_CAP)``.
_BACKOFF_FIRST = 0.1
_BACKOFF_CAP = 2.0


class EtcdRegistry(EtcdGateway):
    """Instances as leased keys in etcd: a :class:`~quiesce.registry.Registry` and a Discovery.

    Args:
        endpoints: client URLs of the members, e.g. ``["http://127.0.0.1:2379"]``.
        prefix: key prefix; ``/microservices`` is Kratos' and keeps Go services compatible.
        ttl: lease TTL in seconds (whole seconds, at least 1; etcd may raise it to
            its minimum); the keepalive runs every ``ttl / 3``.
        username: with ``password``, authenticate (``auth/authenticate``) and
            send the token with every request.
        password: see ``username``.
        ssl_context: TLS settings for ``https://`` endpoints (default: the system's CAs).
        request_timeout: bound on one request to one member (connect, read, write);
            a watch stream has no read bound, ``relist_interval`` bounds it instead.
        relist_interval: seconds between two full re-lists of a watched service (jittered
            down to three quarters), which also bounds how long a silently dead
            connection can hide changes.

    Raises:
        ConfigError: no endpoints, one that is not ``http[s]://host:port``, ``ttl``
            under 1 s, a non-positive timeout, or a username without a password
            (or the reverse).

    """

    def __init__(
        self,
        endpoints: Sequence[str] = ("http://127.0.0.1:2379",),
        *,
        prefix: str = "/microservices",
        ttl: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        request_timeout: float = 3.0,
        relist_interval: float = 45.0,
    ) -> None:
        if not endpoints:
            raise ConfigError("etcd registry: no endpoints")
        if not ttl >= 1:
            raise ConfigError(f"etcd registry: ttl={ttl!r} must be at least 1 second")
        if not request_timeout > 0 or not relist_interval > 0:
            raise ConfigError("etcd registry: request_timeout and relist_interval must be positive")
        if (username is None) != (password is None):
            raise ConfigError("etcd registry: give both username and password, or neither")
        for endpoint in endpoints:
            check_client_url(endpoint)
        super().__init__(
            endpoints,
            username=username,
            password=password,
            ssl_context=ssl_context,
            request_timeout=request_timeout,
        )
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.ttl = int(ttl)
        self.relist_interval = relist_interval
        self._registrations: dict[tuple[str, str], Registration] = {}
        self._watches = 0

    @classmethod
    def from_url(cls, url: str) -> EtcdRegistry:
        """``etcd[s]://[user:password@]host:port[,host:port...]`` with query options.

        Options: ``prefix`` (default ``/microservices``), ``ttl`` (10), ``timeout``
        (request timeout, 3), ``relist`` (45), and for ``etcds://`` ``ca``, ``cert``,
        ``key`` (PEM file paths). A missing port is 2379. A ``/``, ``?``, ``#`` or
        ``@`` in the user or password is percent-encoded (``%2F``, ``%3F``, ``%23``,
        ``%40``); error messages show the URL with its secret masked.

        Raises:
            ConfigError: the URL does not parse, no host (or a bad one), a bad port
                or option, a user without a password, or unreadable TLS files.

        """
        return cls(**registry_arguments(url))

    def __repr__(self) -> str:
        return f"EtcdRegistry({','.join(self.endpoints)!r}, prefix={self.prefix!r})"

    # -- Registry ------------------------------------------------------------------

    def check_name(self, name: str) -> None:
        """Refuse a service name that is not exactly one segment of ``<prefix>/<name>/<id>``.

        A ``/`` would put the service's keys inside another service's prefix
        (``a/b``'s instances would be listed as ``a``'s); an empty name, ``.``
        and ``..`` read as paths to Kratos' tools; control characters would
        forge lines in logs. Call it at validation, before anything binds.

        Raises:
            ConfigError: ``name`` is not a string, or is such a name.

        """
        if not isinstance(name, str):
            raise ConfigError(f"{self!r}: a service name is a string, not {type(name).__name__}")
        reason = None
        if name in ("", ".", ".."):
            reason = "is not a name"
        elif "/" in name:
            reason = "contains '/': its keys would be inside another service's prefix"
        elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            reason = "contains a control character"
        if reason is not None:
            raise ConfigError(f"{self!r}: service name {name!r} {reason}")

    async def register(self, instance: Instance) -> None:
        """Grant a lease, put the instance's key, and keep the lease alive in the background.

        Bound it from outside (the App's ``registry_timeout``); a cancelled
        register leaves nothing running, and a :meth:`deregister` after it
        revokes the lease if one was granted (the key may have been put).

        Raises:
            ConfigError: the instance's name is refused by :meth:`check_name`.
            RegistryError: no member could be reached, or etcd refused (``EtcdError``).

        """
        self.check_name(instance.name)
        key = (instance.name, instance.id)
        await self._forget(key)
        reg = Registration(
            instance,
            key=self._key(instance.name, instance.id),
            value=instance.kratos().to_json().encode(),
        )
        # Recorded before the grant: a register cut after etcd put the key (a lost
        # reply, the caller's timeout) must still be revocable by deregister.
        self._registrations[key] = reg
        try:
            await grant_and_put(self, reg, self.ttl)
        except RegistryError:
            # The caller says the error (the App, in its one start-failed line): no
            # WARNING here, and the traceback only for whoever debugs.
            logger.debug("%r: register of %s failed", self, instance.id, exc_info=True)
            raise
        reg.task = asyncio.create_task(
            keep_alive(self, reg, ttl=self.ttl, backoff=self._backoff),
            name=f"quiesce etcd keepalive {instance.id}",
        )

    def keep_registered(self, instance: Instance) -> None:
        """Register ``instance`` in the background, retrying until it works, then keep it alive.

        For a service that should serve even while etcd is down
        (``registry_required=False``): never raises for etcd errors, logs them.
        Call it from the running event loop; :meth:`deregister` ends it.

        Raises:
            ConfigError: the instance's name is refused by :meth:`check_name`.

        """
        self.check_name(instance.name)
        key = (instance.name, instance.id)
        old = self._registrations.pop(key, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        reg = Registration(
            instance,
            key=self._key(instance.name, instance.id),
            value=instance.kratos().to_json().encode(),
        )
        self._registrations[key] = reg
        reg.task = asyncio.create_task(
            keep_alive(self, reg, ttl=self.ttl, backoff=self._backoff, first_delay=0.0),
            name=f"quiesce etcd keepalive {instance.id}",
        )

    async def deregister(self, instance: Instance) -> None:
        """Stop the keepalive and revoke the lease; watchers see the key deleted.

        While etcd is unreachable the revoke is retried (jittered backoff)
        until the lease would have expired anyway; bound it from outside (the
        App's ``registry_timeout``) to give up sooner.

        Raises:
            RegistryError: etcd stayed unreachable until the lease expired on its own,
                or refused the revoke.

        """
        reg = await self._forget((instance.name, instance.id))
        try:
            if reg is None or reg.lease is None:
                return
            await revoke(self, reg, backoff=self._backoff)
        finally:
            await self._release_client()

    async def aclose(self) -> None:
        """Stop every keepalive (leases then expire after ``ttl``) and close connections."""
        for key in list(self._registrations):
            await self._forget(key)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- Discovery -----------------------------------------------------------------

    async def instances(self, name: str) -> list[Instance]:
        """The instances of ``name`` registered now, sorted by id.

        Raises:
            RegistryError: no member could be reached, or etcd refused.

        """
        kvs, _ = await self._range(self._service_prefix(name))
        return parse_instances(kvs, repr(self), name)

    def watch(self, name: str) -> Watch:
        """Range, then watch ``<prefix>/<name>/``; yield the list whenever it changes.

        Errors (etcd down, member lost) are logged once and retried with
        jittered backoff; the iterator itself does not raise for them.
        """
        return Watch(self._watch(name))

    async def _watch(self, name: str) -> AsyncGenerator[list[Instance], None]:
        self._watches += 1
        try:
            lists = watch_prefix(
                self,
                self._service_prefix(name),
                name,
                relist_interval=self.relist_interval,
                backoff=self._backoff,
            )
            # Closed with this generator, so that its stream is closed before the client.
            async with contextlib.aclosing(lists):
                async for listed in lists:
                    yield listed
        finally:
            self._watches -= 1
            await self._release_client()

    # -- internals -------------------------------------------------------------------

    async def _forget(self, key: tuple[str, str]) -> Registration | None:
        reg = self._registrations.pop(key, None)
        if reg is not None and reg.task is not None:
            reg.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reg.task
        return reg

    def _backoff(self, failures: int) -> float:
        # Never longer than the keepalive interval (ttl / 3): retried later, the lease may expire.
        return backoff_delay(failures, first=_BACKOFF_FIRST, cap=min(self.ttl / 3, _BACKOFF_CAP))

    # -- keys ------------------------------------------------------------------------

    def _key(self, name: str, ident: str) -> bytes:
        return f"{self.prefix}/{name}/{ident}".encode()

    def _service_prefix(self, name: str) -> bytes:
        return f"{self.prefix}/{name}/".encode()

    async def _release_client(self) -> None:
        # Close the connections once nothing uses them (the App never calls aclose()).
        if self._client is not None and not self._registrations and not self._watches:
            client, self._client = self._client, None
            await client.aclose()
