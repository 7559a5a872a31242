"""``GatewayServer``: HTTP/JSON in front of gRPC, in the same App, stopped before what it calls.

It is an :class:`~quiesce.HTTPServer` (readiness probes, ``Connection:
close`` while draining, the bounded stop, cut requests named) whose ASGI app
transcodes each request into a unary gRPC call. The mapping (routes and
methods) is resolved at the first request, not at the start, so that a slow
upstream never fails the gateway's start (go-zero #3891). The resolution
is :mod:`quiesce.gateway.resolve`'s, the channels :mod:`quiesce.gateway.upstream`'s.

The stop cannot deadlock (go-zero #4261): the gateway depends on the
``GRPCServer`` it calls, so the app's group stops it first. Its listener
closes, its in-flight requests finish (the gRPC server still serves their
calls), its channels close, and only then does the gRPC server's graceful
stop begin.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote

import grpc

from quiesce.config import check_seconds
from quiesce.errors import ConfigError
from quiesce.gateway.errors import (
    BadRequest,
    GatewayError,
    WrongMethod,
    error_body,
    http_status,
    status_details,
)
from quiesce.gateway.resolve import (
    PICK_TIMEOUT,
    Binding,
    ExplicitRoutes,
    Resolver,
    RouteSpec,
    explicit_routes,
    gateway_error,
    unavailable,
)
from quiesce.gateway.routes import Route
from quiesce.gateway.transcode import request_message, response_json
from quiesce.gateway.upstream import (
    RegistryUpstream,
    Upstream,
    bad_upstream,
    loopback_target,
    upstream_kind,
)
from quiesce.lifecycle import Lifecycle
from quiesce.registry import Discovery
from quiesce.servers.asgi import HTTPServer
from quiesce.servers.gate import Message, Receive, Scope, Send

__all__ = ["GatewayServer"]

logger = logging.getLogger("quiesce.gateway")

#: The request headers forwarded as gRPC metadata by default (grpc-gateway forwards these too).
FORWARD_HEADERS = ("authorization", "x-request-id", "traceparent")
#: The largest request body read; grpc's own default limit on a message is 4 MiB too.
MAX_BODY = 4 * 1024 * 1024
#: Seconds of the stop timeout kept for closing the channels (at most a tenth of it).
CHANNEL_RESERVE = 0.2
#: What a 503 tells the client: try again in a second (the channels reconnect within it).
RETRY_AFTER = b"1"

_JSON = (b"content-type", b"application/json")
#: A header name gRPC takes as a text metadata key: not its own (grpc-*), not binary (*-bin).
_METADATA_KEY = re.compile(r"(?!grpc-)[0-9a-z_.-]+(?<!-bin)")


class GatewayServer(HTTPServer):
    """Serve HTTP/JSON on ``host:port``, transcoded into unary gRPC calls to ``upstream``.

    Args:
        upstream: the ``name`` of a :class:`~quiesce.GRPCServer` of the same
            App (the gateway then depends on it: it starts after it and stops
            before it, and calls it over loopback), a ``host:port`` target, or
            ``registry:SERVICE``: every instance of SERVICE in the App's
            registry, followed as they come and go, a channel each, round-robin.
        routes: explicit routes, ``{"GET /v1/orders/{id}": "shop.Orders/Get"}``,
            a value may be ``(rpc, timeout)``; or a list of
            :class:`~quiesce.gateway.routes.Route`. They come before the
            routes of the ``google.api.http`` annotations of the upstream's
            services (found through its reflection service, or the services
            of the imported ``_pb2`` modules when it has none).
        forward_headers: request headers sent along as gRPC metadata.
        timeout: the deadline of each call in seconds (None: no deadline).
        host, port, name, depends_on, stop_timeout, uvicorn_options: as for
            :class:`~quiesce.HTTPServer` (``lifespan`` defaults to ``"off"``).

    Methods are looked up in protobuf's default descriptor pool, else
    through the upstream's reflection service. Only unary methods are
    mapped: a route to a streaming one answers 501. gRPC statuses become
    HTTP ones as grpc-gateway's ``HTTPStatusFromCode`` does, with a JSON body
    ``{"code", "message", "details"}``; an upstream that cannot be reached
    (or a registry with no instance) answers 503 with ``Retry-After: 1``. An
    HTTP client that disconnects cancels its call.

    Raises (from :meth:`check` and :meth:`attach`, exit code 2):
        ConfigError: a bad ``upstream``, ``routes``, ``forward_headers`` or
            ``timeout``; an upstream name that is not a ``GRPCServer`` of
            the App; ``registry:`` without an App registry that can be watched.

    """

    def __init__(
        self,
        upstream: str,
        *,
        routes: Mapping[str, RouteSpec] | Sequence[Route] | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        name: str = "gateway",
        depends_on: Sequence[str] = (),
        stop_timeout: float | None = None,
        forward_headers: Iterable[str] = FORWARD_HEADERS,
        timeout: float | None = None,
        **uvicorn_options: Any,
    ) -> None:
        self.upstream = upstream
        self.routes = routes
        self.timeout = timeout
        self.forward_headers = tuple(forward_headers)
        depends_on = tuple(depends_on)
        given: object = upstream  # typed str, but only check() says it is one
        if isinstance(given, str) and upstream_kind(given) == "server" and given not in depends_on:
            depends_on = (*depends_on, given)  # started first, stopped after the gateway
        self._handler = _Handler()
        options = {"lifespan": "off", **uvicorn_options}
        super().__init__(
            self._handler,
            host=host,
            port=port,
            name=name,
            depends_on=depends_on,
            stop_timeout=stop_timeout,
            **options,
        )
        self._explicit: ExplicitRoutes | None = None
        self._channels: Upstream | RegistryUpstream | None = None

    def check(self) -> None:
        """Check the options before the app starts anything.

        Raises:
            ConfigError: as :meth:`HTTPServer.check`, or a bad ``upstream``,
                ``routes``, ``forward_headers`` or ``timeout``.

        """
        super().check()
        where = self.where
        if (why := bad_upstream(self.upstream)) is not None:
            raise ConfigError(f"{where}: upstream={self.upstream!r}: {why}")
        if self.timeout is not None:
            check_seconds({f"{where}: timeout": self.timeout})
        headers: tuple[object, ...] = self.forward_headers  # as given: maybe not strings
        for header in headers:
            if not isinstance(header, str) or not _METADATA_KEY.fullmatch(header.lower()):
                must = "must be a header name that gRPC metadata can carry (not grpc-*, *-bin)"
                raise ConfigError(f"{where}: forward_headers: {header!r} {must}")
        self._explicit = explicit_routes(where, self.routes)

    def attach(self, lifecycle: Lifecycle) -> None:
        """Find the upstream in the app: its ``GRPCServer``, or its registry for ``registry:``.

        Raises:
            ConfigError: the upstream names no ``GRPCServer`` of the app, or
                ``registry:`` but the app's registry is not a Discovery; or as
                :meth:`HTTPServer.attach`.

        """
        super().attach(lifecycle)
        self._connect(lifecycle)

    def _connect(self, lifecycle: Lifecycle | None) -> None:
        """Set up the channels and the resolver for the upstream (nothing is dialled)."""
        where, upstream = self.where, self.upstream
        kind = upstream_kind(upstream)
        server: object | None = None
        if kind == "server":
            from quiesce.servers.grpc import GRPCServer

            server = lifecycle.find_server(upstream) if lifecycle is not None else None
            if not isinstance(server, GRPCServer):
                what = "no server" if server is None else f"a {type(server).__name__}"
                raise ConfigError(
                    f"{where}: upstream={upstream!r} is {what} of this App; name a "
                    "GRPCServer of the App, a host:port, or registry:SERVICE"
                )
            grpc_server = server
            self._channels = Upstream(f"server {upstream!r}", lambda: loopback_target(grpc_server))
        elif kind == "target":
            self._channels = Upstream(upstream, lambda: upstream)
        else:
            registry = lifecycle.registry if lifecycle is not None else None
            if not isinstance(registry, Discovery):
                why = "the App has no registry" if registry is None else f"{registry!r} cannot"
                raise ConfigError(
                    f"{where}: upstream={upstream!r} needs the App's registry to watch the "
                    f"instances ({why}; App(registry='file:') or 'etcd://...')"
                )
            self._channels = RegistryUpstream(registry, upstream.partition(":")[2])
        explicit = self._explicit or explicit_routes(where, self.routes)
        self._handler.setup(
            Resolver(self._channels, explicit, self.timeout, server),
            self.forward_headers,
        )

    async def start(self) -> None:
        """Open the channels (no dial: grpc connects at the first call), then serve HTTP.

        Raises:
            ConfigError: started alone (not in an App) with a bad option, or an
                upstream that only an App has (a server name, ``registry:``).
            StartError: as :meth:`HTTPServer.start`.

        """
        if self.lifecycle is None:  # started alone, without an App
            self.check()
            self._connect(None)
        assert self._channels is not None
        self._handler.reset()
        await self._channels.open()
        try:
            await super().start()
        except BaseException:
            await self._channels.aclose(0)
            raise

    async def stop(self, timeout: float) -> list[str]:
        """Drain HTTP (its calls are still served), then close the channels; all in ``timeout``.

        Returns one line per request cut at the timeout (their calls are cancelled with them).
        """
        began = time.monotonic()
        reserve = min(CHANNEL_RESERVE, timeout / 10)
        cut = await super().stop(timeout - reserve)
        self._handler.reset()
        if self._channels is not None:
            # Every request has finished or was cut, and its call with it: a call still on a
            # channel now is one grpc lost track of, not one to wait for.
            left = timeout - (time.monotonic() - began)
            await self._channels.aclose(max(0.0, min(left, CHANNEL_RESERVE)))
        return cut


class _Handler:
    """The ASGI app: match the route, build the request, call, answer with JSON."""

    def __init__(self) -> None:
        self.resolver: Resolver | None = None
        self.forward: frozenset[bytes] = frozenset()

    def setup(self, resolver: Resolver, forward_headers: Sequence[str]) -> None:
        self.resolver = resolver
        self.forward = frozenset(h.lower().encode("ascii") for h in forward_headers)

    def reset(self) -> None:
        if self.resolver is not None:
            self.resolver.reset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # only with lifespan="on": nothing to start or stop
            return await _lifespan(receive, send)
        if kind != "http":
            return await send({"type": "websocket.close", "code": 1003})
        try:
            status, body, headers = await self._answer(scope, receive)
        except GatewayError as err:
            status, body, headers = err.status, err.body(), _error_headers(err)
        except _ClientGone:
            return
        headers.append(_JSON)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[Any]]:
        assert self.resolver is not None, "the gateway was not attached"
        resolver = self.resolver
        mapping = resolver.mapping or await resolver.resolve()
        route, params = mapping.table.match(scope["method"], _raw_path(scope))
        binding: Binding = mapping.bindings[id(route)]
        if binding.error is not None:
            raise binding.error
        assert binding.method is not None  # else the binding has an error
        body = await _read_body(receive)
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        try:
            request = request_message(route, binding.method, params, query, body)
        except ValueError as exc:  # the route names a field the message lacks: ours, not theirs
            raise gateway_error(500, grpc.StatusCode.INTERNAL, str(exc)) from None
        member = await resolver.upstream.member(PICK_TIMEOUT)
        if member is None:
            raise unavailable(resolver.upstream.why_none())
        forward = self.forward
        metadata = [_metadata(k, v) for k, v in scope["headers"] if k in forward]
        call = member.unary(binding.rpc, binding.serialize, binding.parse)(
            request, timeout=binding.timeout, metadata=metadata
        )
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, call))
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            return _rpc_error(exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watcher.done() and not watcher.cancelled() and not (task and task.cancelling()):
                raise _ClientGone from None  # nobody to answer
            raise
        finally:
            watcher.cancel()
        return 200, response_json(route, reply), []


class _ClientGone(Exception):
    """The HTTP client disconnected before its answer: the call was cancelled."""


def _rpc_error(exc: grpc.aio.AioRpcError) -> tuple[int, bytes, list[Any]]:
    """The answer to a failed call: grpc-gateway's status, the code, message and details."""
    code = exc.code()
    status = http_status(code)
    details = status_details(exc.trailing_metadata())
    headers = [(b"retry-after", RETRY_AFTER)] if status == 503 else []
    return status, error_body(code, exc.details() or "", details), headers


def _error_headers(err: GatewayError) -> list[Any]:
    if err.status == 503:
        return [(b"retry-after", RETRY_AFTER)]
    if isinstance(err, WrongMethod):
        return [(b"allow", ", ".join(err.allowed).encode())]
    return []


def _metadata(name: bytes, value: bytes) -> tuple[str, str]:
    """A forwarded header as metadata; gRPC refuses the call for a value it cannot carry."""
    text = value.decode("latin-1")
    if not (text.isascii() and text.isprintable()):
        raise BadRequest(f"header {name.decode()!r}: a forwarded value must be printable ASCII")
    return name.decode(), text


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            why = f"the request body is over {MAX_BODY} bytes"
            raise gateway_error(413, grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _raw_path(scope: Scope) -> str:
    """The path as sent, still percent-encoded (``%2F`` is not a segment's end)."""
    raw: bytes | None = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope["path"])


async def _cancel_on_disconnect(receive: Receive, call: grpc.aio.Call) -> None:
    """Cancel ``call`` when the HTTP client goes away (uvicorn says so through ``receive``)."""
    message: Message = await receive()
    while message["type"] != "http.disconnect":  # nothing else comes once the body is read
        message = await receive()
    call.cancel()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"].rpartition(".")[2]  # startup / shutdown
        await send({"type": f"lifespan.{kind}.complete"})
        if kind == "shutdown":
            return
