"""A ``grpc.aio`` server as a :class:`~quiesce.Server`, with the standard health service.

The user builds the :class:`grpc.aio.Server` and adds the servicers; this
adapter binds it, starts it, and ties ``grpc.health.v1.Health`` to the
lifecycle: NOT_SERVING until the app is ready, SERVING while it runs,
NOT_SERVING for every service as soon as the stop begins. ``stop(grace)``
closes the listener at once (new calls get UNAVAILABLE), so the app calls
:meth:`GRPCServer.stop` only after its drain delay, while balancers and
health-checking clients have had time to move away.

Import this module only when grpc is wanted: it imports ``grpc`` and
``grpc_health`` (the ``quiesce[grpc]`` extra); ``import quiesce`` does not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # stubs predate it

from quiesce.errors import ConfigError, StartError
from quiesce.servers.grpc_calls import CallTracker, handler_tables
from quiesce.servers.listening import ListeningServer

__all__ = ["GRPCServer", "ServerFactory"]

#: A zero-argument callable, sync or async, that builds a filled ``grpc.aio.Server``.
ServerFactory = Callable[[], grpc.aio.Server | Awaitable[grpc.aio.Server]]

HEALTH_SERVICE = "grpc.health.v1.Health"

logger = logging.getLogger(__name__)


class GRPCServer(ListeningServer):
    """Serve a ``grpc.aio.Server`` on ``host:port`` within an :class:`~quiesce.App`.

    Long-lived calls (server streams, bidirectional streams) should await
    ``app.stopping`` and end on their own; those still open at the grace are
    cancelled by grpc and named in the report (method and peer). The
    constructor accepts anything; :meth:`check`, at the app's validation,
    refuses what cannot serve, as ``HTTPServer`` does.

    Args:
        server_or_factory: a ``grpc.aio.Server`` with its servicers added (and
            no port yet), or a zero-argument callable, sync or async, that
            builds one; the factory is called by :meth:`start`, in the app's
            loop. grpc binds a server to the event loop current when it is
            built, so a server built at import time cannot serve in a loop
            made later (``asyncio.run``): pass the factory form there.
        host: the address to bind, loopback by default.
        port: the port; 0 picks a free one and :meth:`endpoints` reports it.
        name: the server's name in ``depends_on``, logs and the report.
        depends_on: servers or resources that must be ready first.
        stop_timeout: the grace in-flight calls get at the stop; None
            inherits the app's default.
        health: register the standard ``grpc.health.v1.Health`` service
            (grpcio-health-checking) and tie it to the lifecycle.

    Each call (health checks aside) is an arrival for the app's adaptive drain.

    """

    scheme = "grpc"

    def __init__(
        self,
        server_or_factory: grpc.aio.Server | ServerFactory,
        *,
        host: str = "127.0.0.1",
        port: int = 50051,
        name: str = "grpc",
        depends_on: Sequence[str] = (),
        stop_timeout: float | None = None,
        health: bool = True,
    ) -> None:
        super().__init__(
            host=host, port=port, name=name, depends_on=depends_on, stop_timeout=stop_timeout
        )
        self._source = server_or_factory
        #: The health servicer once started (grpcio-health-checking's aio
        #: ``HealthServicer``; None with ``health=False``). Its ``set()`` is honoured
        #: until the stop begins.
        self.health: _Health | None = None
        #: The services the health status covers: ``""`` (the whole server) and each
        #: service found on the grpc server.
        self.services: tuple[str, ...] = ("",)
        self._health_enabled = health
        self._server: grpc.aio.Server | None = None
        self._running = False
        self._until_ready: asyncio.Task[None] | None = None
        self._calls = CallTracker()

    @property
    def bound_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop a given ``grpc.aio.Server`` is bound to; None for a factory.

        grpc binds a server to the loop current when it is built; only that
        loop can run it.
        """
        loop = getattr(self._source, "_loop", None)  # grpc.aio.Server keeps it there
        known = isinstance(self._source, grpc.aio.Server)
        return loop if known and isinstance(loop, asyncio.AbstractEventLoop) else None

    def check(self) -> None:
        """Check the options before the app starts anything.

        Raises:
            ConfigError: a bad address or stop timeout; neither a
                ``grpc.aio.Server`` nor a factory; a server bound to another
                event loop than the running one.

        """
        super().check()
        if (why := self._unusable()) is not None:
            raise ConfigError(f"{self.where}: {why}")

    @property
    def in_flight(self) -> int:
        """Calls being handled now (async handlers; sync ones are not followed)."""
        return len(self._calls.active)

    async def start(self) -> None:
        """Build the server if given a factory, add the health service, bind, start.

        Returns once grpc accepts calls on the port.

        Raises:
            StartError: naming this server and the cause (chained): ``host:port``
                cannot be bound, the factory failed or did not return a
                ``grpc.aio.Server``, ``health=True`` but the server already has
                a health service, or grpc failed to start.

        """
        where = self.where
        server = await self._build()
        found = _service_names(server)
        if self._health_enabled and HEALTH_SERVICE in found:
            why = f"the server already has a {HEALTH_SERVICE} service"
            raise StartError(where, f"{why}: pass health=False or remove yours")
        # Before the health service: its Watch streams are ended on purpose, never cut.
        if not self._calls.wrap_handlers(server):
            logger.debug("%s: grpc's handler tables not found; cut calls go unnamed", where)
        if self._health_enabled:
            self.health = await self._add_health(server, found)
        lifecycle = self.lifecycle
        self._calls.on_arrival = lifecycle.arrived if lifecycle is not None else None
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpc's message says only "Failed to bind"
            raise self.cannot_listen(_bind_error(self.host, self.port)) from exc
        if port == 0:  # older grpc releases return 0 instead of raising
            raise self.cannot_listen(_bind_error(self.host, self.port))
        self.port = port
        self._server = server
        try:
            await server.start()
        except Exception as exc:
            raise StartError(where, exc) from exc
        self._running = True
        if self.health is None:
            return
        if lifecycle is None:  # started alone: ready once started
            await self._mark_serving(self.health)
        else:
            # The app is ready once every server is bound and the instance registered.
            self._until_ready = asyncio.create_task(
                self._mark_serving(self.health, lifecycle.ready), name=f"quiesce {self.name} health"
            )

    async def drain(self) -> None:
        """Report NOT_SERVING for every service at once; calls keep being served."""
        if self.health is not None:
            # Also makes later set() calls no-ops: nothing can flip it back to SERVING.
            await self.health.enter_graceful_shutdown()

    async def stop(self, timeout: float) -> list[str]:
        """Close the listener, let in-flight calls finish within ``timeout``, cancel the rest.

        New calls fail with UNAVAILABLE from here on; health Watch streams end
        first so that they do not hold the grace. Returns one line per call
        cut (``call /pkg.Service/Method from ipv4:10.0.0.7:53522 cancelled at
        the 5s grace``); a call grpc cut that this adapter could not follow
        (a sync handler) is reported as "in-flight calls cancelled".
        """
        server, self._server = self._server, None
        if self._until_ready is not None:
            self._until_ready.cancel()  # the start was cut short: never SERVING
        if server is None:
            return []
        if self.health is not None:
            await self.health.enter_graceful_shutdown()  # a forced stop skips drain()
            self.health.end_watches()
        if not self._running or timeout <= 0:
            # Cut short during start(): nothing was served, and a server that never ran
            # never reports termination. No grace (the forced end): grpc cancels at once.
            at_once = [
                f"{call} cancelled at once (no grace)" for call in self._calls.active.values()
            ]
            await server.stop(None)
            return at_once
        # wait_for_termination() returns True when it times out; armed a moment before
        # stop() arms the grace, it times out exactly when grpc has to cancel calls.
        timed_out = asyncio.ensure_future(server.wait_for_termination(timeout))
        await asyncio.sleep(0)  # let it arm its timer first
        # The calls still running as the grace ends are the ones grpc cancels; armed
        # before grpc's own timer, and grpc's cancellation reaches them only later
        # (through its core), so they are still in the set.
        at_grace: list[str] = []
        named = asyncio.get_running_loop().call_later(
            timeout, lambda: at_grace.extend(self._calls.active.values())
        )
        try:
            await server.stop(timeout)
            cut = await timed_out
        finally:
            timed_out.cancel()  # safe: with a timeout, grpc shields its own future
            named.cancel()
        if not cut:
            return []
        grace = f"the {timeout:.3g}s grace"
        return [f"{call} cancelled at {grace}" for call in at_grace] or [
            f"in-flight calls cancelled at {grace}"
        ]

    async def wait_closed(self) -> None:
        """Return when the grpc server terminates on its own; raise what crashed it."""
        if self._server is not None:
            # Without a timeout grpc awaits its own "shutdown completed" future unshielded:
            # cancelling this wait (the app does, as its stop begins) would cancel that
            # future, and stop() would then fail at once instead of draining.
            await asyncio.shield(self._server.wait_for_termination())

    # -- internals -------------------------------------------------------------

    def _unusable(self) -> str | None:
        """Why the given server or factory cannot serve here, or None."""
        source = self._source
        if not isinstance(source, grpc.aio.Server) and not callable(source):
            return f"{source!r} is neither a grpc.aio.Server nor a factory returning one"
        bound = self.bound_loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # checked outside a loop: start() checks again
            return None
        if bound is not None and bound is not running:
            return (
                "this grpc.aio.Server was built outside the app's event loop (at import "
                "time?) and grpc binds a server to the loop it was built in; pass a factory "
                "instead: GRPCServer(make_server) or GRPCServer(lambda: build_server())"
            )
        return None

    async def _build(self) -> grpc.aio.Server:
        where = self.where
        if (why := self._unusable()) is not None:
            raise StartError(where, why)
        source = self._source
        if isinstance(source, grpc.aio.Server):
            return source
        try:
            made = source()
            if inspect.isawaitable(made):
                made = await made
        except Exception as exc:
            raise StartError(where, exc) from exc
        if not isinstance(made, grpc.aio.Server):
            why = (
                f"the factory returned {type(made).__name__}, not a grpc.aio.Server "
                "(build it with grpc.aio.server())"
            )
            raise StartError(where, why)
        return made

    async def _add_health(self, server: grpc.aio.Server, found: list[str]) -> _Health:
        health = _Health()
        self.services = ("", *found)
        # The reference servicer starts with "" SERVING; nothing is ready yet.
        for service in self.services:
            await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        return health

    async def _mark_serving(self, health: _Health, ready: asyncio.Event | None = None) -> None:
        if ready is not None:
            await ready.wait()
        for service in self.services:
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)


class _Health(health_aio.HealthServicer):  # type: ignore[misc]  # untyped: Any to mypy
    """The reference aio health service, whose Watch streams can be ended on purpose.

    A Watch stream never ends by itself, so it would hold ``server.stop(grace)``
    for the whole grace and be reported as cut; :meth:`end_watches` finishes
    them with status OK once clients have seen NOT_SERVING.
    """

    def __init__(self) -> None:
        super().__init__()
        self._watches: set[asyncio.Task[Any]] = set()
        self._ending = False

    async def Watch(self, request: Any, context: Any) -> None:
        """Stream status changes of ``request.service`` until the client or the stop ends it."""
        task = asyncio.current_task()
        assert task is not None
        self._watches.add(task)
        try:
            await super().Watch(request, context)
        except asyncio.CancelledError:
            if not self._ending or task.cancelling() > 1:
                raise
            task.uncancel()  # ended by end_watches(): grpc then closes the stream with OK
        finally:
            self._watches.discard(task)

    def end_watches(self) -> None:
        """End every open Watch stream."""
        self._ending = True
        for task in self._watches:
            task.cancel()


def _service_names(server: grpc.aio.Server) -> list[str]:
    """The names of the services added to ``server``, best effort.

    Should a grpc release move its handler tables, this finds none and
    health covers only ``""``.
    """
    tables = handler_tables(server)
    if tables is None:
        return []
    generic, registered = tables
    names = {h.service_name() for h in generic if isinstance(h, grpc.ServiceRpcHandler)}
    names.update(method[1:].partition("/")[0] for method in registered)
    return sorted(names)


def _bind_error(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, found by trying it (grpc only says that it failed)."""
    cause = "grpc could not bind it"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            probe.bind(addr)
    except OSError as exc:
        cause = exc.strerror or str(exc)
    return cause
