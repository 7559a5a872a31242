"""The gateway's mapping: routes and methods, resolved from the upstream at the first request.

:class:`Resolver` finds the services the upstream serves (a local
``GRPCServer`` knows them; else its reflection service lists them; else the
services of the imported ``_pb2`` modules), their descriptors (protobuf's
default pool, else reflection), the routes of their ``google.api.http``
annotations after the explicit ones (``routes=``), and each route's method.
An upstream that cannot be reached leaves the mapping unresolved: the
request answers 503 and the next one tries again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2

from quiesce.config import check_seconds
from quiesce.errors import ConfigError
from quiesce.gateway.descriptors import (
    find_method,
    load_from_reflection,
    message_classes,
    reflection_call,
    split_rpc,
)
from quiesce.gateway.errors import GatewayError
from quiesce.gateway.routes import (
    Route,
    RouteTable,
    check_route,
    routes_from_mapping,
    routes_from_service,
)
from quiesce.gateway.upstream import Member, RegistryUpstream, Upstream

__all__ = [
    "Binding",
    "ExplicitRoutes",
    "Resolved",
    "Resolver",
    "RouteSpec",
    "explicit_routes",
    "gateway_error",
    "imported_services",
    "list_services",
    "unavailable",
]

logger = logging.getLogger("quiesce.gateway")

#: A value of ``routes=``: ``"pkg.Service/Method"``, or ``(that, timeout in seconds)``.
RouteSpec = str | tuple[str, float]
#: The explicit routes with their own timeouts (None: the gateway's).
ExplicitRoutes = list[tuple[Route, float | None]]

#: Bound on each reflection call made while resolving the mapping.
RESOLVE_TIMEOUT = 2.0
#: How long resolving waits for the registry's first instance.
PICK_TIMEOUT = 1.0
#: How often listing the upstream's services is tried when grpc's core fails it (INTERNAL).
LIST_ATTEMPTS = 3
#: Services never mapped: grpc's own (health, reflection, channelz).
_GRPC_OWN = "grpc."
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


@dataclass(slots=True, eq=False)
class Binding:
    """What a route calls: the method's path, (de)serializers and deadline, or why it cannot."""

    rpc: str
    method: MethodDescriptor | None
    timeout: float | None
    serialize: Callable[[Any], bytes] = bytes
    parse: Callable[[bytes], Any] = bytes
    #: Set when the route cannot be served (unknown or streaming method): its answer.
    error: GatewayError | None = None

    @classmethod
    def of(cls, route: Route, method: MethodDescriptor | None, timeout: float | None) -> Binding:
        """The binding of ``route`` to ``method`` (None: not found anywhere)."""
        rpc = route.rpc
        if method is None:
            why = (
                f"method {rpc} is unknown: not in protobuf's default descriptor pool (import "
                "its _pb2 module) and not found through the upstream's reflection service"
            )
            return cls(rpc, None, timeout, error=gateway_error(501, _UNIMPLEMENTED, why))
        if method.client_streaming or method.server_streaming:
            why = f"method {rpc} is a streaming method: the gateway maps unary methods only"
            return cls(rpc, method, timeout, error=gateway_error(501, _UNIMPLEMENTED, why))
        try:
            check_route(route, method)
        except ValueError as exc:  # an explicit route naming fields the messages lack
            return cls(
                rpc, method, timeout, error=gateway_error(500, grpc.StatusCode.INTERNAL, str(exc))
            )
        request, reply = message_classes(method)
        return cls(rpc, method, timeout, request.SerializeToString, reply.FromString)


@dataclass(slots=True, eq=False)
class Resolved:
    """The routes, in match order, and each one's binding (by ``id(route)``)."""

    table: RouteTable
    bindings: dict[int, Binding]


class Resolver:
    """The mapping of one upstream, resolved once at the first request that needs it.

    ``explicit`` routes (with their own timeouts, None: ``timeout``) come
    first; ``server`` is the App's ``GRPCServer`` when the upstream is one.
    """

    def __init__(
        self,
        upstream: Upstream | RegistryUpstream,
        explicit: ExplicitRoutes,
        timeout: float | None,
        server: object | None = None,
    ) -> None:
        self.upstream = upstream
        self.explicit = list(explicit)
        self.timeout = timeout
        self.server = server
        #: The mapping once resolved; None before.
        self.mapping: Resolved | None = None
        self._task: asyncio.Task[Resolved] | None = None

    def reset(self) -> None:
        """Forget the mapping (a new run resolves afresh); cancel a resolution under way."""
        self.mapping = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def resolve(self) -> Resolved:
        """The mapping, resolving it (once for all concurrent requests) if needed.

        Raises:
            GatewayError: 503 when the upstream cannot be reached (nothing is kept:
                the next request tries again).

        """
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = self._task = asyncio.create_task(self._build(), name="quiesce gateway resolve")
            # Retrieved here, so a resolution whose requests all went away stays quiet.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        # Shielded: a request that goes away does not cancel the others' resolution.
        self.mapping = await asyncio.shield(task)
        return self.mapping

    async def _build(self) -> Resolved:
        member = await self.upstream.member(PICK_TIMEOUT)
        pool = DescriptorPool()  # what reflection finds; the default pool is asked first
        routes = [(r, self.timeout if t is None else t) for r, t in self.explicit]
        for name in await self._service_names(member):
            service = await self._find(name, member, pool, partial(_find_service, name))
            if service is None:
                logger.warning("gateway %s: no descriptor for %s", self.upstream.describe, name)
                continue
            try:
                routes.extend((r, self.timeout) for r in routes_from_service(service))
            except ValueError as exc:  # a bad annotation: say which, serve the rest
                logger.error("gateway %s: %s not mapped: %s", self.upstream.describe, name, exc)
        if not routes:
            # Nothing to serve yet: perhaps an upstream still coming up. Ask again next time.
            why = "serves no method with a google.api.http annotation, and routes= is empty"
            raise unavailable(f"upstream {self.upstream.describe} {why}")
        bindings = {}
        for route, timeout in routes:
            owner = split_rpc(route.rpc)[0]
            method = await self._find(owner, member, pool, partial(find_method, route.rpc))
            bindings[id(route)] = binding = Binding.of(route, method, timeout)
            if binding.error is not None:
                logger.warning("gateway %s: %s", self.upstream.describe, binding.error.message)
        return Resolved(RouteTable([r for r, _ in routes]), bindings)

    async def _service_names(self, member: Member | None) -> list[str]:
        names = getattr(self.server, "services", ())
        found = [n for n in names if n and not n.startswith(_GRPC_OWN)]
        if found:
            return found
        if member is None:
            raise unavailable(self.upstream.why_none())
        for attempt in range(LIST_ATTEMPTS):
            try:
                listed = await list_services(member.channel, RESOLVE_TIMEOUT)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    listed = imported_services()  # no reflection: what the app imported
                    break
                # grpc's core answers a reflection stream on a fresh channel now and then
                # with INTERNAL ("Internal error from Core"), then serves the next: ask
                # again rather than fail every request waiting on this resolution.
                if exc.code() is not grpc.StatusCode.INTERNAL or attempt == LIST_ATTEMPTS - 1:
                    raise _unreachable(member, exc) from None
        return [n for n in listed if not n.startswith(_GRPC_OWN)]

    async def _find(
        self,
        service: str,
        member: Member | None,
        pool: DescriptorPool,
        look: Callable[[DescriptorPool | None], _D | None],
    ) -> _D | None:
        """``look`` in the default pool, in ``pool``, then in ``pool`` after reflection."""
        found = look(None) or look(pool)
        if found is not None or member is None:
            return found
        try:
            loaded = await load_from_reflection(member.channel, service, pool, RESOLVE_TIMEOUT)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            raise _unreachable(member, exc) from None
        return look(pool) if loaded else None


_D = TypeVar("_D", ServiceDescriptor, MethodDescriptor)


def _find_service(name: str, pool: DescriptorPool | None) -> ServiceDescriptor | None:
    try:
        return (descriptor_pool.Default() if pool is None else pool).FindServiceByName(name)
    except KeyError:
        return None


def _unreachable(member: Member, exc: Exception) -> GatewayError:
    if isinstance(exc, grpc.aio.AioRpcError):
        return unavailable(f"upstream {member!r}: {exc.code().name}: {exc.details()}")
    return unavailable(f"upstream {member!r}: {exc}")


def gateway_error(status: int, code: grpc.StatusCode, message: str) -> GatewayError:
    """A :class:`GatewayError` answered with HTTP ``status`` and gRPC ``code``."""
    error = GatewayError(message)
    error.status, error.code = status, code.name
    return error


def unavailable(message: str) -> GatewayError:
    """A 503 (gRPC UNAVAILABLE) with ``message``; the gateway adds ``Retry-After``."""
    return gateway_error(503, grpc.StatusCode.UNAVAILABLE, message)


async def list_services(channel: grpc.aio.Channel, timeout: float) -> list[str]:
    """The services ``channel``'s server lists through its reflection service (v1alpha).

    Raises:
        grpc.aio.AioRpcError: the call failed (UNIMPLEMENTED: no reflection service).

    """
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = reflection_call(channel, timeout, iter([request]))
    try:
        reply = await call.read()
    finally:
        call.cancel()
    if not isinstance(reply, reflection_pb2.ServerReflectionResponse):  # EOF: nothing said
        return []
    if reply.HasField("error_response"):
        return []
    return [s.name for s in reply.list_services_response.service]


def imported_services() -> list[str]:
    """The services of the generated ``_pb2`` modules imported so far (the default pool's)."""
    default = descriptor_pool.Default()
    names: set[str] = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "DESCRIPTOR", None)
        if isinstance(file, FileDescriptor) and file.pool is default:
            names.update(s.full_name for s in file.services_by_name.values())
    return sorted(names)


def explicit_routes(where: str, routes: object) -> ExplicitRoutes:
    """The routes of ``routes=``: None, ``{"GET /path": rpc or (rpc, timeout)}`` or Routes.

    Raises:
        ConfigError: ``<where>: routes...: <why>``, naming the entry.

    """
    if routes is None:
        return []
    if isinstance(routes, Mapping):
        found: ExplicitRoutes = []
        for key, spec in routes.items():
            rpc, timeout = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, None)
            if not isinstance(key, str) or not isinstance(rpc, str):
                must = 'must map "METHOD /path" to "pkg.Service/Method" or (that, timeout)'
                raise ConfigError(f"{where}: routes[{key!r}]={spec!r}: {must}")
            if timeout is not None:
                check_seconds({f"{where}: routes[{key!r}] timeout": timeout})
            try:
                found.extend((r, timeout) for r in routes_from_mapping({key: rpc}))
            except (ValueError, GatewayError) as exc:
                raise ConfigError(f"{where}: routes[{key!r}]: {exc}") from None
        return found
    if isinstance(routes, Sequence) and all(isinstance(r, Route) for r in routes):
        return [(r, None) for r in routes]
    raise ConfigError(f"{where}: routes={routes!r}: must be a dict of routes or a list of Route")
