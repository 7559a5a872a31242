"""A discovery-aware HTTP client: relative URLs go to a live instance of a service.

::

    from quiesce.client import AsyncClient

    async with AsyncClient(service="orders", registry="etcd://127.0.0.1:2379") as orders:
        response = await orders.post("/orders", json={"sku": "A-1"})

:class:`AsyncClient` is an :class:`httpx.AsyncClient` whose base URL is a
placeholder host (``http://quiesce-discovery.invalid``, a name that never
resolves) mounted on a :class:`DiscoveryTransport`. That transport follows the
service's instances with :meth:`~quiesce.registry.Discovery.watch` and sends
each request to one of them; absolute URLs to other hosts never reach it and
go through httpx as usual.

What the transport does with a request:

- Round-robin over the instances of the latest watch list that have an HTTP
  endpoint (``http://``/``https://``, or Kratos' ``http://host:port?isSecure=true``).
  An instance leaves the rotation as soon as the watch reports it gone: within
  milliseconds of its deregistration on etcd, within the poll interval on the
  file registry. The instance's drain delay must exceed that latency.
- A connection that could not be made (refused, connect timeout, TLS
  handshake) sent nothing: any method is tried again on another instance.
  A connection that broke before any response (``RemoteProtocolError``,
  ``ReadError``, ``WriteError``) may have reached the application: only
  idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) with a body that
  can be sent again are retried. A timeout waiting for the response is not
  retried: the instance may still be working on it. Each retry goes to an
  instance not yet tried for this request, at most ``retries`` of them.
- ``ejection_threshold`` consecutive connect failures take an instance out of
  the rotation for ``ejection_time`` seconds (outlier ejection), unless it is
  the last one in. A crashed instance stays registered until its lease or
  heartbeat expires; ejected, it no longer costs every other request a
  failed first attempt.
- With no instance (none registered, or the watch has not answered), a
  request waits up to ``discovery_timeout`` for one, then fails with
  :class:`NoInstanceError`, an :class:`httpx.ConnectError`.

The watch starts with the first request (or ``async with``) and ends with
``aclose()``; while it fails (etcd down), the last list it gave is kept.
A response answered by an instance carries it in
``response.extensions["quiesce.instance"]`` (an :class:`~quiesce.registry.Instance`);
its ``response.url`` stays the service's (the placeholder host), so relative
redirects go through discovery again and cookies are kept for the service,
not for whichever instance set them.

The choice of instance and the ejection are :class:`quiesce.rotation.Rotation`'s;
this module sends and retries. It imports httpx; ``import quiesce`` does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("quiesce.client needs httpx: pip install 'quiesce[client]'") from exc

from quiesce.errors import ConfigError
from quiesce.registry import Discovery, Instance, from_url
from quiesce.registry.following import follow
from quiesce.rotation import Rotation, Target, http_endpoint

__all__ = [
    "DEFAULT_DISCOVERY_TIMEOUT",
    "DEFAULT_EJECTION_THRESHOLD",
    "DEFAULT_EJECTION_TIME",
    "DEFAULT_RETRIES",
    "IDEMPOTENT_METHODS",
    "PLACEHOLDER_HOST",
    "AsyncClient",
    "DiscoveryTransport",
    "NoInstanceError",
    "http_endpoint",
]

logger = logging.getLogger("quiesce.client")

#: Seconds a request waits for the service to have an instance before NoInstanceError.
DEFAULT_DISCOVERY_TIMEOUT = 5.0
#: Further instances a failed request may be tried on (each a different one).
DEFAULT_RETRIES = 3
#: Consecutive connect failures that eject an instance.
DEFAULT_EJECTION_THRESHOLD = 3
#: Seconds an ejected instance stays out of the rotation.
DEFAULT_EJECTION_TIME = 5.0
#: Methods safe to send again after a connection broke before any response (RFC 9110 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

#: The placeholder host of relative URLs; ``.invalid`` never resolves (RFC 2606), so a
#: request that somehow bypassed the transport fails instead of going somewhere else.
PLACEHOLDER_HOST = "quiesce-discovery.invalid"
#: First delay before watching again after the watch failed; doubles up to the cap.
_WATCH_BACKOFF_FIRST = 0.1
_WATCH_BACKOFF_CAP = 2.0
#: Bound on cancelling the watch and closing an owned registry in aclose().
_CLOSE_TIMEOUT = 2.0

_CONNECT_FAILURES = (httpx.ConnectError, httpx.ConnectTimeout)
_DISCONNECTS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class NoInstanceError(httpx.ConnectError):
    """The service had no instance with an HTTP endpoint within ``discovery_timeout``.

    An :class:`httpx.ConnectError`: code that handles "could not connect" handles it too.
    """


class DiscoveryTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends requests for ``PLACEHOLDER_HOST`` to live instances.

    :class:`AsyncClient` mounts one; use it directly to add discovery to an
    httpx client of your own (``mounts={f"all://{PLACEHOLDER_HOST}": transport}``,
    ``base_url=transport.base_url``). Requests for any other host are passed to
    ``transport`` unchanged. The module docstring describes the balancing,
    retries and ejection.

    Args:
        service: the service name instances register under.
        registry: a registry URL (``file:...``, ``etcd://...``; built, and closed
            by :meth:`aclose`) or a :class:`~quiesce.registry.Discovery` (not closed).
        transport: what sends the requests; default a new
            :class:`httpx.AsyncHTTPTransport`. Closed by :meth:`aclose`.
        discovery_timeout: seconds a request waits for an instance when there is none.
        retries: further instances a failed request may be tried on.
        ejection_threshold: consecutive connect failures that eject an instance.
        ejection_time: seconds an ejected instance stays out.

    Raises:
        ConfigError: an option is out of range, or the registry URL is invalid.

    """

    def __init__(
        self,
        service: str,
        registry: str | Discovery,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        discovery_timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        ejection_threshold: int = DEFAULT_EJECTION_THRESHOLD,
        ejection_time: float = DEFAULT_EJECTION_TIME,
    ) -> None:
        if not service:
            raise ConfigError("discovery client: service must be a service name")
        if not discovery_timeout > 0:
            raise ConfigError(f"discovery_timeout={discovery_timeout!r}: must be positive")
        if retries < 0 or retries != int(retries):
            raise ConfigError(f"retries={retries!r}: must be a whole number, 0 or more")
        if ejection_threshold < 1 or ejection_threshold != int(ejection_threshold):
            raise ConfigError(f"ejection_threshold={ejection_threshold!r}: must be 1 or more")
        if not ejection_time >= 0:
            raise ConfigError(f"ejection_time={ejection_time!r}: must be 0 or more seconds")
        if isinstance(registry, str):
            self.discovery: Discovery = from_url(registry)
            self._owns_discovery = True
        elif isinstance(registry, Discovery):
            self.discovery = registry
            self._owns_discovery = False
        else:
            raise ConfigError(f"registry={registry!r}: expected a URL or a quiesce Discovery")
        self.service = service
        self.base_url = f"http://{PLACEHOLDER_HOST}"
        self.discovery_timeout = float(discovery_timeout)
        self.retries = retries
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._rotation = Rotation(
            ejection_threshold=ejection_threshold, ejection_time=float(ejection_time), owner=self
        )
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_error: BaseException | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"DiscoveryTransport({self.service!r}, {self.discovery!r})"

    @property
    def instances(self) -> list[Instance]:
        """The instances in the rotation now (ejected ones included), in rotation order."""
        return [t.instance for t in self._rotation.targets]

    @property
    def ejection_threshold(self) -> int:
        """Consecutive connect failures that eject an instance."""
        return self._rotation.ejection_threshold

    @property
    def ejection_time(self) -> float:
        """Seconds an ejected instance stays out of the rotation."""
        return self._rotation.ejection_time

    # -- httpx transport -------------------------------------------------------

    async def __aenter__(self) -> DiscoveryTransport:
        self._start_watch()
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching, close the transport and an owned registry; idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            # Bounded: the watch's cleanup may close network connections.
            await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT)
        await self._transport.aclose()
        close = getattr(self.discovery, "aclose", None)
        if self._owns_discovery and close is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await close()
            except (TimeoutError, OSError) as exc:
                logger.warning("%r: closing the registry: %r", self, exc)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a live instance, retrying on others as the module docstring says.

        Raises:
            NoInstanceError: no instance within ``discovery_timeout``.
            httpx.TransportError: the last attempt's error when every allowed attempt
                failed, or the first error that may not be retried (a note names the
                service and the instances tried).
            RuntimeError: the transport is closed.

        """
        if request.url.host != PLACEHOLDER_HOST:
            return await self._transport.handle_async_request(request)
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not self._rotation.targets:
            await self._wait_for_instances(request)
        set_host = request.headers.get("host") == PLACEHOLDER_HOST
        service_url = request.url
        try:
            return await self._send(request, set_host)
        finally:
            # httpx reads the request back for a relative redirect and for the cookies a
            # response sets: both must belong to the service, not to the instance that
            # happened to answer (the next request may go to another one).
            request.url = service_url
            if set_host:
                request.headers["Host"] = PLACEHOLDER_HOST

    async def _send(self, request: httpx.Request, set_host: bool) -> httpx.Response:
        # After a broken connection only an idempotent request may be sent again, and
        # only with a body held in memory (a streamed one may be half consumed).
        idempotent = request.method in IDEMPOTENT_METHODS
        replayable = idempotent and isinstance(request.stream, httpx.ByteStream)
        rotation = self._rotation
        tried: list[Target] = []
        position = rotation.start()
        while True:
            target = rotation.choose(position, tried)
            if target is None:
                raise NoInstanceError(self._no_instance(), request=request)
            tried.append(target)
            # Parsing one string costs half of URL.copy_with(scheme=, host=, port=).
            request.url = httpx.URL(target.origin + request.url.raw_path.decode("ascii"))
            if set_host:
                request.headers["Host"] = target.netloc
            try:
                response = await self._transport.handle_async_request(request)
            except _CONNECT_FAILURES as exc:
                rotation.connect_failed(target, exc)
                retry = True
                error: httpx.TransportError = exc
            except _DISCONNECTS as exc:
                retry = replayable
                error = exc
            else:
                rotation.answered(target)
                response.extensions["quiesce.instance"] = target.instance
                return response
            more = len(tried) <= self.retries and rotation.choose(position, tried) is not None
            if not (retry and more):
                why = ""
                if not retry:
                    what = "a streamed body" if idempotent else request.method
                    why = f" ({what} not retried after a disconnect)"
                error.add_note(
                    f"quiesce.client: {request.method} to service {self.service!r} failed on "
                    + ", ".join(t.describe() for t in tried)
                    + why
                )
                raise error
            logger.debug(
                "%s %s: %s failed (%s); trying another instance",
                request.method,
                request.url.path,
                target.describe(),
                type(error).__name__,
            )
            position = rotation.after(target, position)

    # -- the watch -------------------------------------------------------------

    def _start_watch(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(
                self._follow(), name=f"quiesce discovery watch {self.service}"
            )

    async def _wait_for_instances(self, request: httpx.Request) -> None:
        self._start_watch()
        try:
            async with asyncio.timeout(self.discovery_timeout):
                await self._rotation.wait_for_any()
        except TimeoutError:
            raise NoInstanceError(self._no_instance(), request=request) from self._watch_error

    def _no_instance(self) -> str:
        why = f"; the watch is failing: {self._watch_error!r}" if self._watch_error else ""
        return (
            f"service {self.service!r}: no live instance with an HTTP endpoint in "
            f"{self.discovery!r} within discovery_timeout={self.discovery_timeout:g}s{why}"
        )

    async def _follow(self) -> None:
        """Keep the rotation equal to the watch's latest list for the life of the transport."""
        await follow(
            self.discovery,
            self.service,
            self._rotation.update,
            who=repr(self),
            failing=self._watching,
            first=_WATCH_BACKOFF_FIRST,
            cap=_WATCH_BACKOFF_CAP,
        )

    def _watching(self, error: BaseException | None) -> None:
        self._watch_error = error


class AsyncClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` whose relative URLs go to live instances of ``service``.

    ``await client.get("/orders/1")`` goes to an instance found in
    ``registry``; ``await client.get("https://example.com/")`` goes to
    example.com as with any httpx client. See the module docstring for the
    balancing, retries and ejection, and :class:`DiscoveryTransport` for the options.

    Args:
        service: the service name instances register under.
        registry: a registry URL or a :class:`~quiesce.registry.Discovery`.
        discovery_timeout: seconds a request waits for an instance when there is none.
        retries: further instances a failed request may be tried on.
        ejection_threshold: consecutive connect failures that eject an instance.
        ejection_time: seconds an ejected instance stays out.
        base_url: a path prefix for relative URLs (``"/api/v1"``); the host is the service.
        httpx_options: the other :class:`httpx.AsyncClient` options. ``verify``,
            ``cert``, ``http1``, ``http2``, ``limits`` and ``trust_env`` also apply to
            the connections to instances; those never go through a proxy, and
            ``transport`` serves absolute URLs only.

    Raises:
        ConfigError: an option is out of range, ``base_url`` has a host, or the
            registry URL is invalid.

    """

    def __init__(
        self,
        *,
        service: str,
        registry: str | Discovery,
        discovery_timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        ejection_threshold: int = DEFAULT_EJECTION_THRESHOLD,
        ejection_time: float = DEFAULT_EJECTION_TIME,
        base_url: str = "",
        mounts: Mapping[str, httpx.AsyncBaseTransport | None] | None = None,
        **httpx_options: Any,
    ) -> None:
        prefix = httpx.URL(base_url)
        if prefix.scheme or prefix.host:
            raise ConfigError(
                f"base_url={base_url!r}: the discovery client picks the host; give a path prefix"
            )
        connection_options = {
            key: httpx_options[key]
            for key in ("verify", "cert", "http1", "http2", "limits", "trust_env")
            if key in httpx_options
        }
        self.discovery = DiscoveryTransport(
            service,
            registry,
            transport=httpx.AsyncHTTPTransport(**connection_options),
            discovery_timeout=discovery_timeout,
            retries=retries,
            ejection_threshold=ejection_threshold,
            ejection_time=ejection_time,
        )
        # A mount on the placeholder host wins over the catch-all proxy mounts that
        # httpx adds from HTTP_PROXY & co: service traffic never goes to a proxy.
        super().__init__(
            base_url=self.discovery.base_url + prefix.path.rstrip("/"),
            mounts={**(mounts or {}), f"all://{PLACEHOLDER_HOST}": self.discovery},
            **httpx_options,
        )

    @property
    def service(self) -> str:
        """The service name requests to relative URLs go to."""
        return self.discovery.service

    @property
    def instances(self) -> list[Instance]:
        """The instances in the rotation now (ejected ones included)."""
        return self.discovery.instances
