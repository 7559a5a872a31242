"""etcd as the registry, over its v3 JSON gateway (grpc-gateway) with httpx.

What it does, in etcd's terms (DESIGN.md, "Registry facts"):

- register: ``lease/grant`` (TTL ``ttl``), then ``kv/put`` of
  ``<prefix>/<name>/<id>`` -> the instance's Kratos JSON, attached to the lease;
  then a background task sends ``lease/keepalive`` every ``ttl / 3`` for as
  long as the process lives. Errors are retried with jittered backoff, logged
  once when they begin and once when they end. A keepalive answered without a
  ``TTL`` means the lease is gone (etcd lost its data, or the lease was
  revoked): a new lease is granted and the key put again. A key deleted under
  a live lease is put again too.
- deregister: ``lease/revoke``; watchers see the delete within milliseconds.
  A crashed instance disappears when its lease expires, ``ttl`` seconds on.
- watch: ``kv/range`` of ``<prefix>/<name>/`` (the trailing ``/`` keeps
  ``foo`` from matching ``foobar``), then ``watch`` from the next revision;
  re-listed after a cancelled watch (compaction), a broken stream, and every
  ``relist_interval`` seconds.

etcd 3.4 serves the gateway under ``/v3/`` and ``/v3beta/``, 3.3 under
``/v3beta/`` only, 3.5+ under ``/v3/`` only: ``/v3/`` is tried first and
``/v3beta/`` used when it is missing. With several endpoints, a connection
error or an unavailable member (no leader) moves on to the next one. 64-bit
integers travel as strings and zero values are omitted, as protobuf's JSON
mapping does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from quiesce.errors import ConfigError, describe
from quiesce.registry import (
    Instance,
    RegistryError,
    Watch,
    parse_instances,
    positive_seconds,
    query_options,
    redact,
    split_userinfo,
)

__all__ = ["EtcdError", "EtcdRegistry"]

logger = logging.getLogger("quiesce.registry")

#: gRPC codes after which another member may well succeed: DEADLINE_EXCEEDED,
#: RESOURCE_EXHAUSTED, UNAVAILABLE ("no leader", "leader changed", "request timed out").
_TRY_ANOTHER_MEMBER = {4, 8, 14}
_UNAUTHENTICATED = 16
_NOT_FOUND = 5
#: First retry delay after an error; it doubles up to ``min(ttl / 3, _BACKOFF_CAP)``.
_BACKOFF_FIRST = 0.1
_BACKOFF_CAP = 2.0


class EtcdError(RegistryError):
    """etcd answered with an error; ``code`` is its gRPC status code (0 when unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        self.code = code
        super().__init__(message)


@dataclass
class _Registration:
    instance: Instance
    key: bytes
    value: bytes
    lease: int | None = None
    #: Monotonic time until which the lease is surely alive (last grant/keepalive + its TTL).
    alive_until: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class EtcdRegistry:
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
            _check_client_url(endpoint)
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.ttl = int(ttl)
        self.request_timeout = request_timeout
        self.relist_interval = relist_interval
        self._username = username
        self._password = password
        self._ssl = ssl_context
        self._client: httpx.AsyncClient | None = None
        self._current = 0  # the member that answered last; tried first
        self._api = "/v3"
        self._tokens: dict[str, str] = {}
        self._registrations: dict[tuple[str, str], _Registration] = {}
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
        safe = redact(url)  # error messages name the URL, never its secret
        userinfo, bare = split_userinfo(url)
        try:
            parts = urlsplit(bare)
        except ValueError as exc:
            raise ConfigError(f"registry {safe!r}: not a valid URL ({exc})") from None
        secure = parts.scheme.lower() == "etcds"
        options = query_options(url, ("prefix", "ttl", "timeout", "relist", "ca", "cert", "key"))
        username = password = None
        if userinfo is not None:
            user, sep, pw = userinfo.partition(":")
            if not sep or not user:
                raise ConfigError(
                    f"registry {safe!r}: give user:password before the '@' "
                    "(a token alone is not a credential etcd takes)"
                )
            if any(c in userinfo for c in "/?#@"):
                raise ConfigError(
                    f"registry {safe!r}: write '/', '?', '#' and '@' in the user or "
                    "password as %2F, %3F, %23 and %40 (or in the prefix: ?prefix=%40...)"
                )
            username, password = unquote(user), unquote(pw)
        endpoints = [_endpoint(safe, host, secure) for host in parts.netloc.split(",")]
        if parts.path not in ("", "/"):
            raise ConfigError(f"registry {safe!r}: use ?prefix=..., not a path")
        context = None
        if secure:
            try:
                context = ssl.create_default_context(cafile=options.get("ca"))
                if "cert" in options:
                    context.load_cert_chain(options["cert"], options.get("key"))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"registry {safe!r}: TLS files: {exc}") from exc
        elif {"ca", "cert", "key"} & set(options):
            raise ConfigError(f"registry {safe!r}: ca/cert/key need etcds://")
        ttl = positive_seconds(safe, options, "ttl", 10.0)
        if ttl < 1:
            raise ConfigError(f"registry {safe!r}: ttl must be at least 1 second")
        return cls(
            endpoints,
            prefix=options.get("prefix", "/microservices"),
            ttl=ttl,
            username=username,
            password=password,
            ssl_context=context,
            request_timeout=positive_seconds(safe, options, "timeout", 3.0),
            relist_interval=positive_seconds(safe, options, "relist", 45.0),
        )

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
        reg = _Registration(
            instance,
            key=self._key(instance.name, instance.id),
            value=instance.kratos().to_json().encode(),
        )
        # Recorded before the grant: a register cut after etcd put the key (a lost
        # reply, the caller's timeout) must still be revocable by deregister.
        self._registrations[key] = reg
        try:
            await self._grant_and_put(reg)
        except RegistryError:
            # The caller says the error (the App, in its one start-failed line): no
            # WARNING here, and the traceback only for whoever debugs.
            logger.debug("%r: register of %s failed", self, instance.id, exc_info=True)
            raise
        reg.task = asyncio.create_task(
            self._keep_alive(reg), name=f"quiesce etcd keepalive {instance.id}"
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
        reg = _Registration(
            instance,
            key=self._key(instance.name, instance.id),
            value=instance.kratos().to_json().encode(),
        )
        self._registrations[key] = reg
        reg.task = asyncio.create_task(
            self._keep_alive(reg, first_delay=0.0), name=f"quiesce etcd keepalive {instance.id}"
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
            await self._revoke(reg)
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
        prefix = self._service_prefix(name)
        current: dict[str, bytes] = {}
        last: list[Instance] | None = None
        failures = 0
        self._watches += 1
        try:
            while True:
                try:
                    kvs, revision = await self._range(prefix)
                    current = dict(kvs)
                    if failures:
                        logger.warning("%r: watch of %r works again", self, name)
                        failures = 0
                    listed = parse_instances(current, repr(self), name)
                    if listed != last:
                        last = listed
                        yield listed
                    relist_at = time.monotonic() + self.relist_interval * random.uniform(0.75, 1)
                    request = {
                        "create_request": {
                            "key": _b64(prefix),
                            "range_end": _b64(_prefix_end(prefix)),
                            "start_revision": str(revision + 1),
                        }
                    }
                    async with self._stream("/watch", request) as messages:
                        while True:
                            try:
                                async with asyncio.timeout_at(_loop_time(relist_at)):
                                    message = await anext(messages)
                            except (TimeoutError, StopAsyncIteration):
                                break  # time to re-list, or the member ended the stream
                            result = _result(message)
                            if result.get("canceled"):
                                reason = str(result.get("cancel_reason", ""))
                                if "Unauthenticated" in reason or "auth token" in reason:
                                    # etcd refuses a stale token by cancelling the new watch.
                                    raise EtcdError(reason, _UNAUTHENTICATED)
                                # Compacted past our revision (or etcd cancelled it): re-list.
                                logger.info(
                                    "%r: watch of %r cancelled (%s); re-listing",
                                    self,
                                    name,
                                    reason or "compaction",
                                )
                                break
                            for event in result.get("events", ()):
                                kv = event.get("kv", {})
                                key = base64.b64decode(kv.get("key", "")).decode()
                                if event.get("type") == "DELETE":
                                    current.pop(key, None)
                                else:
                                    current[key] = base64.b64decode(kv.get("value", ""))
                            listed = parse_instances(current, repr(self), name)
                            if listed != last:
                                last = listed
                                yield listed
                except (RegistryError, httpx.HTTPError, ValueError) as exc:
                    if isinstance(exc, EtcdError) and exc.code == _UNAUTHENTICATED:
                        self._tokens.clear()  # expired, or another member's: authenticate again
                    failures += 1
                    if failures == 1:
                        logger.warning(
                            "%r: watch of %r failing, retrying: %s", self, name, describe(exc)
                        )
                    await asyncio.sleep(self._backoff(failures))
        finally:
            self._watches -= 1
            await self._release_client()

    # -- registration internals ------------------------------------------------------

    async def _grant_and_put(self, reg: _Registration) -> None:
        granted = await self._call("/lease/grant", {"TTL": self.ttl})
        # Recorded before the put: a deregister that cancels us mid-put must revoke this
        # lease; and if the put fails, the next keepalive round puts the key again.
        reg.lease = int(granted["ID"])
        reg.alive_until = time.monotonic() + int(granted.get("TTL", self.ttl))
        await self._call(
            "/kv/put", {"key": _b64(reg.key), "value": _b64(reg.value), "lease": str(reg.lease)}
        )

    async def _keep_alive(self, reg: _Registration, first_delay: float | None = None) -> None:
        """Keep ``reg`` registered for as long as the process lives (until deregister)."""
        failures = 0
        failing_since = 0.0
        delay = self.ttl / 3 if first_delay is None else first_delay
        ident = reg.instance.id
        while True:
            await asyncio.sleep(delay)
            try:
                if reg.lease is None:
                    await self._grant_and_put(reg)
                    logger.info("%r: registered %s (lease %x)", self, ident, reg.lease)
                else:
                    answer = await self._call("/lease/keepalive", {"ID": str(reg.lease)})
                    ttl = int(answer.get("TTL", 0))
                    if ttl <= 0:
                        logger.warning(
                            "%r: lease %x of %s is gone (etcd lost it or it was revoked); "
                            "registering again",
                            self,
                            reg.lease,
                            ident,
                        )
                        reg.lease = None
                        await self._grant_and_put(reg)
                    else:
                        reg.alive_until = time.monotonic() + ttl
                        if not await self._key_exists(reg.key):
                            logger.warning(
                                "%r: key of %s was deleted; putting it again", self, ident
                            )
                            await self._call(
                                "/kv/put",
                                {
                                    "key": _b64(reg.key),
                                    "value": _b64(reg.value),
                                    "lease": str(reg.lease),
                                },
                            )
            except (RegistryError, httpx.HTTPError, ValueError, KeyError) as exc:
                failures += 1
                if failures == 1:
                    failing_since = time.monotonic()
                    logger.error(
                        "%r: keeping %s registered is failing, retrying until it works: %s",
                        self,
                        ident,
                        describe(exc),
                    )
                delay = self._backoff(failures)
                continue
            if failures:
                logger.warning(
                    "%r: keeping %s registered works again after %d failures in %.1fs",
                    self,
                    ident,
                    failures,
                    time.monotonic() - failing_since,
                )
                failures = 0
            delay = self.ttl / 3

    async def _key_exists(self, key: bytes) -> bool:
        answer = await self._call("/kv/range", {"key": _b64(key), "count_only": True})
        return int(answer.get("count", 0)) > 0

    async def _revoke(self, reg: _Registration) -> None:
        failures = 0
        while True:
            try:
                await self._call("/lease/revoke", {"ID": str(reg.lease)})
                return
            except EtcdError as exc:
                if exc.code == _NOT_FOUND:
                    return  # already expired or revoked: the key is gone either way
                raise
            except (RegistryError, httpx.HTTPError) as exc:
                failures += 1
                left = reg.alive_until - time.monotonic()
                if left <= 0:
                    raise RegistryError(
                        f"{self!r}: could not revoke the lease of {reg.instance.id}; "
                        f"it has expired on its own: {describe(exc)}"
                    ) from exc
                if failures == 1:
                    logger.warning(
                        "%r: revoke of %s failing, retrying for up to %.1fs: %s",
                        self,
                        reg.instance.id,
                        left,
                        describe(exc),
                    )
                await asyncio.sleep(min(self._backoff(failures), left))

    async def _forget(self, key: tuple[str, str]) -> _Registration | None:
        reg = self._registrations.pop(key, None)
        if reg is not None and reg.task is not None:
            reg.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reg.task
        return reg

    def _backoff(self, failures: int) -> float:
        """Jittered exponential backoff: spread retries so that a fleet does not stampede."""
        cap = min(self.ttl / 3, _BACKOFF_CAP)
        step: float = _BACKOFF_FIRST * 2.0 ** min(failures - 1, 16)
        return min(cap, step) * random.uniform(0.5, 1.0)

    # -- keys ------------------------------------------------------------------------

    def _key(self, name: str, ident: str) -> bytes:
        return f"{self.prefix}/{name}/{ident}".encode()

    def _service_prefix(self, name: str) -> bytes:
        return f"{self.prefix}/{name}/".encode()

    async def _range(self, prefix: bytes) -> tuple[dict[str, bytes], int]:
        answer = await self._call(
            "/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
        )
        revision = int(answer.get("header", {}).get("revision", 0))
        kvs = {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
            for kv in answer.get("kvs", ())
        }
        return kvs, revision

    # -- the gateway -------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = self._ssl if self._ssl is not None else True
            if not any(e.startswith("https://") for e in self.endpoints):
                # Plain-HTTP members: nothing to verify, and not loading the CA bundle
                # saves ~80 ms of the first registration.
                verify = False
            self._client = httpx.AsyncClient(
                timeout=self.request_timeout,
                verify=verify,
                # Never pick up an HTTP proxy from the environment for cluster traffic.
                trust_env=False,
            )
        return self._client

    async def _release_client(self) -> None:
        # Close the connections once nothing uses them (the App never calls aclose()).
        if self._client is not None and not self._registrations and not self._watches:
            client, self._client = self._client, None
            await client.aclose()

    def _members(self) -> list[str]:
        """The endpoints in the order to try them: the last one that answered first."""
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    def _answered(self, base: str) -> None:
        self._current = self.endpoints.index(base)

    async def _call(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST one request, failing over across members; the answer's ``result`` or body.

        Raises:
            EtcdError: etcd refused (not a reason to try another member).
            RegistryError: no member answered.

        """
        errors: list[str] = []
        for base in self._members():
            try:
                answer = await self._post(base, method, body)
            except _TryAnotherMember as exc:
                errors.append(f"{base}: {exc}")
                continue
            self._answered(base)
            return answer
        # The members named once each, and no repr: the caller (the App) names the registry.
        raise RegistryError(f"no etcd member answered {method}: " + "; ".join(errors))

    async def _post(self, base: str, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        client = self._http()
        for attempt in range(3):  # a fallback to /v3beta, a fresh auth token, then the call
            try:
                response = await client.post(
                    base + self._api + method, json=body, headers=await self._auth(base)
                )
            except httpx.TransportError as exc:
                raise _TryAnotherMember(describe(exc)) from exc
            if not _is_json(response) and response.status_code == 404 and self._api == "/v3":
                self._api = "/v3beta"  # etcd 3.3 (3.4 serves both; 3.5+ only /v3)
                continue
            first = response.text.strip().split("\n", 1)[0]
            try:
                answer = _result(json.loads(first)) if first else {}
            except EtcdError as exc:
                if exc.code == _UNAUTHENTICATED and self._username is not None and attempt < 2:
                    self._tokens.pop(base, None)  # simple tokens expire and are per member
                    continue
                if exc.code in _TRY_ANOTHER_MEMBER:
                    raise _TryAnotherMember(str(exc)) from exc
                raise
            except ValueError as exc:
                if response.status_code >= 500:
                    raise _TryAnotherMember(f"HTTP {response.status_code}") from exc
                raise EtcdError(
                    f"{self!r}: {method}: HTTP {response.status_code}: {first[:200]!r}"
                ) from exc
            return answer
        raise EtcdError(f"{self!r}: {method}: no gateway or authentication kept failing")

    @contextlib.asynccontextmanager
    async def _stream(
        self, method: str, body: Mapping[str, Any]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Open a streaming call (watch) on the first member that accepts it.

        Raises:
            RegistryError: no member accepted it (``EtcdError`` when etcd refused).

        """
        client = self._http()
        timeout = httpx.Timeout(self.request_timeout, read=None)
        errors: list[str] = []
        for base in self._members():
            headers = await self._auth_or_skip(base, errors)
            if headers is None:
                continue
            request = client.build_request(
                "POST", base + self._api + method, json=body, headers=headers, timeout=timeout
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.TransportError as exc:
                errors.append(f"{base}: {describe(exc)}")
                continue
            try:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    if response.status_code == 401:
                        self._tokens.pop(base, None)  # the next attempt authenticates again
                    if response.status_code >= 500 or response.status_code in (401, 404):
                        errors.append(f"{base}: HTTP {response.status_code} {text[:200]!r}")
                        continue
                    raise EtcdError(f"{self!r}: {method}: HTTP {response.status_code}: {text!r}")
                self._answered(base)
                yield _messages(response)
                return
            finally:
                await response.aclose()
        raise RegistryError(f"no etcd member accepted {method}: " + "; ".join(errors))

    async def _auth_or_skip(self, base: str, errors: list[str]) -> dict[str, str] | None:
        try:
            return await self._auth(base)
        except _TryAnotherMember as exc:
            errors.append(f"{base}: {exc}")
            return None

    async def _auth(self, base: str) -> dict[str, str]:
        """The Authorization header for ``base`` (authenticating first if needed)."""
        if self._username is None:
            return {}
        token = self._tokens.get(base)
        if token is None:
            client = self._http()
            try:
                response = await client.post(
                    base + self._api + "/auth/authenticate",
                    json={"name": self._username, "password": self._password},
                )
            except httpx.TransportError as exc:
                raise _TryAnotherMember(describe(exc)) from exc
            try:
                answer = _result(response.json())
            except EtcdError as exc:
                if exc.code in _TRY_ANOTHER_MEMBER:
                    raise _TryAnotherMember(str(exc)) from exc
                raise EtcdError(f"{self!r}: authentication failed: {exc}", exc.code) from exc
            except ValueError as exc:
                raise _TryAnotherMember(f"authenticate: HTTP {response.status_code}") from exc
            token = str(answer.get("token", ""))
            self._tokens[base] = token
        return {"Authorization": token}


def _check_client_url(endpoint: object) -> None:
    """Refuse a member URL httpx could only fail on at the first request.

    Raises:
        ConfigError: not a string, not ``http://`` or ``https://``, no host, a bad
            port, or credentials in it.

    """
    if not isinstance(endpoint, str):
        raise ConfigError(f"etcd registry: an endpoint is a URL string, not {endpoint!r}")
    safe = redact(endpoint)
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"etcd registry: bad endpoint {safe!r} ({exc})") from None
    if "@" in parts.netloc:
        # It would be shown by repr() and every error naming the member.
        raise ConfigError(
            f"etcd registry: endpoint {safe!r}: give username= and password=, not user@host"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(
            f"etcd registry: bad endpoint {safe!r} (expected http[s]://host:port, "
            "the members' client URLs)"
        )


def _endpoint(safe: str, host: str, secure: bool) -> str:
    """The client URL of one ``host[:port]`` of an etcd URL (``safe``: the URL, redacted).

    Raises:
        ConfigError: an empty host, no host name (``:2379``), a malformed one
            (``[::1``, ``a b``), or a port that is not 1-65535.

    """
    if not host:
        raise ConfigError(f"registry {safe!r}: an empty host")
    try:
        parsed = urlsplit(f"//{host}")
    except ValueError:  # "Invalid IPv6 URL": an unclosed bracket
        raise ConfigError(f"registry {safe!r}: bad host in {host!r}") from None
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"registry {safe!r}: bad port in {host!r} (1-65535)") from None
    hostname = parsed.hostname or ""
    if not hostname:
        raise ConfigError(f"registry {safe!r}: no host name in {host!r} (host:port)")
    if ":" in hostname:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise ConfigError(f"registry {safe!r}: bad IPv6 address in {host!r}") from None
        hostname = f"[{hostname}]"
    elif not _HOSTNAME.fullmatch(hostname):
        raise ConfigError(f"registry {safe!r}: bad host name in {host!r}")
    if port == 0:
        raise ConfigError(f"registry {safe!r}: bad port in {host!r} (1-65535)")
    return f"{'https' if secure else 'http'}://{hostname}:{port or 2379}"


#: A DNS name or an IPv4 address: what an etcd member's host can be besides ``[IPv6]``.
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


class _TryAnotherMember(Exception):
    """The member cannot serve the request now; another may."""


async def _messages(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.strip():
            yield json.loads(line)


def _result(message: Any) -> dict[str, Any]:
    """The payload of an answer, or the EtcdError it carries.

    Unary answers are the message itself or ``{"error", "code", "message"}``;
    streamed ones are ``{"result": ...}`` or ``{"error": {"grpc_code", "message"}}``.
    """
    if not isinstance(message, dict):
        raise ValueError(f"not a JSON object: {message!r:.200}")
    error = message.get("error")
    if isinstance(error, dict):
        code = int(error.get("grpc_code") or error.get("code") or 0)
        raise EtcdError(str(error.get("message", error)), code)
    if error:
        raise EtcdError(str(message.get("message") or error), int(message.get("code") or 0))
    result = message.get("result", message)
    if not isinstance(result, dict):
        raise ValueError(f"not a JSON object: {result!r:.200}")
    return result


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/json")


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _loop_time(monotonic_at: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock (uvloop's differs)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_at - time.monotonic())
