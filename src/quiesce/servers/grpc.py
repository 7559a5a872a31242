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
import gc
import inspect
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # stubs predate it

from quiesce.config import check_listen

if TYPE_CHECKING:
    from quiesce.app import App

__all__ = ["GRPCServer", "ServerFactory"]

#: A zero-argument callable, sync or async, that builds a filled ``grpc.aio.Server``.
ServerFactory = Callable[[], grpc.aio.Server | Awaitable[grpc.aio.Server]]

HEALTH_SERVICE = "grpc.health.v1.Health"


class GRPCServer:
    """Serve a ``grpc.aio.Server`` on ``host:port`` within an :class:`~quiesce.App`.

    Args:
        server_or_factory: a ``grpc.aio.Server`` with its servicers added (and
            no port yet), or a zero-argument callable, sync or async, that
            builds one; the factory is called by :meth:`start`.
        host: the address to bind, loopback by default.
        port: the port; 0 picks a free one and :meth:`endpoints` reports it.
        name: the server's name in ``depends_on``, logs and the report.
        depends_on: servers or resources that must be ready first.
        stop_timeout: the grace in-flight calls get at the stop; None
            inherits the app's default.
        health: register the standard ``grpc.health.v1.Health`` service
            (grpcio-health-checking) and tie it to the lifecycle.

    Long-lived calls (server streams, bidirectional streams) should await
    ``app.stopping`` and end on their own; those still open at the grace are
    cancelled by grpc and reported as cut.

    Raises:
        TypeError: ``server_or_factory`` is neither a ``grpc.aio.Server`` nor callable.

    """

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
        if not isinstance(server_or_factory, grpc.aio.Server) and not callable(server_or_factory):
            raise TypeError(
                f"GRPCServer needs a grpc.aio.Server or a factory returning one, "
                f"not {type(server_or_factory).__name__}"
            )
        self._source = server_or_factory
        self.host = host
        self.port = port
        self.name = name
        self.depends_on = tuple(depends_on)
        self.stop_timeout = stop_timeout
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
        self._app: App | None = None
        self._until_ready: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Check the options before the app starts anything.

        Raises:
            ConfigError: a bad address or stop timeout.

        """
        check_listen(self.name, self.host, self.port, self.stop_timeout)

    def bind(self, app: App) -> None:
        """Turn health SERVING when ``app`` is ready, not merely when this server is bound."""
        self._app = app

    async def start(self) -> None:
        """Build the server if given a factory, add the health service, bind, start.

        Returns once grpc accepts calls on the port.

        Raises:
            OSError: ``host:port`` cannot be bound (in use, or not a local address).
            TypeError: the factory did not return a ``grpc.aio.Server``.
            ValueError: ``health=True`` but the server already has a health service.

        """
        server = await self._build()
        if self._health_enabled:
            self.health = await self._add_health(server)
        address = _address(self.host, self.port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's message says only "Failed to bind"
            raise _bind_error(self.host, self.port) from exc
        if port == 0:  # older grpc releases return 0 instead of raising
            raise _bind_error(self.host, self.port)
        self.port = port
        self._server = server
        await server.start()
        self._running = True
        if self.health is None:
            return
        if self._app is None:  # started alone: ready once started
            await self._mark_serving(self.health)
        else:
            # The app is ready once every server is bound and the instance registered.
            self._until_ready = asyncio.create_task(
                self._mark_serving(self.health, self._app.ready), name=f"quiesce {self.name} health"
            )

    async def drain(self) -> None:
        """Report NOT_SERVING for every service at once; calls keep being served."""
        if self.health is not None:
            # Also makes later set() calls no-ops: nothing can flip it back to SERVING.
            await self.health.enter_graceful_shutdown()

    async def stop(self, timeout: float) -> list[str]:
        """Close the listener, let in-flight calls finish within ``timeout``, cancel the rest.

        New calls fail with UNAVAILABLE from here on; health Watch streams end
        first so that they do not hold the grace. Returns a description of
        the cut when calls were still running at the grace (grpc does not say
        how many; with ``timeout <= 0`` it cannot say whether any).
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
            # never reports termination. No grace (the forced end): grpc cancels at once
            # and cannot tell whether anything ran; the app reports the forced stop.
            await server.stop(None)
            return []
        # wait_for_termination() returns True when it times out; armed a moment before
        # stop() arms the grace, it times out exactly when grpc has to cancel calls.
        timed_out = asyncio.ensure_future(server.wait_for_termination(timeout))
        await asyncio.sleep(0)  # let it arm its timer first
        try:
            await server.stop(timeout)
            cut = await timed_out
        finally:
            timed_out.cancel()  # safe: with a timeout, grpc shields its own future
        if not cut:
            return []
        return [f"in-flight calls cancelled at the {timeout:.3g}s grace"]

    async def wait_closed(self) -> None:
        """Return when the grpc server terminates on its own; raise what crashed it."""
        if self._server is not None:
            # Without a timeout grpc awaits its own "shutdown completed" future unshielded:
            # cancelling this wait (the app does, as its stop begins) would cancel that
            # future, and stop() would then fail at once instead of draining.
            await asyncio.shield(self._server.wait_for_termination())

    def endpoints(self) -> list[str]:
        """``grpc://host:port``, with the real port once started."""
        return [f"grpc://{_address(self.host, self.port)}"]

    # -- internals -------------------------------------------------------------

    async def _build(self) -> grpc.aio.Server:
        source = self._source
        if isinstance(source, grpc.aio.Server):
            return source
        made = source()
        if inspect.isawaitable(made):
            made = await made
        if not isinstance(made, grpc.aio.Server):
            raise TypeError(
                f"the factory returned {type(made).__name__}, not a grpc.aio.Server "
                "(build it with grpc.aio.server())"
            )
        return made

    async def _add_health(self, server: grpc.aio.Server) -> _Health:
        found = _service_names(server)
        if HEALTH_SERVICE in found:
            raise ValueError(
                f"the server already has a {HEALTH_SERVICE} service: "
                "pass health=False or remove yours"
            )
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

    ``grpc.aio.Server`` keeps its handlers in its Cython core without an
    accessor; the garbage collector's view of that core lists them. Should a
    grpc release move them, this finds none and health covers only ``""``
    (``tests/servers/test_grpc.py`` pins that it finds them).
    """
    core = getattr(server, "_server", None)
    names: set[str] = set()
    for ref in gc.get_referents(core) if core is not None else ():
        if isinstance(ref, list):  # generic handlers (add_generic_rpc_handlers)
            for handler in ref:
                if isinstance(handler, grpc.ServiceRpcHandler):
                    names.add(handler.service_name())
        elif isinstance(ref, dict):  # registered methods: "/pkg.Service/Method" -> handler
            for method in ref:
                if isinstance(method, str) and method.startswith("/") and method.count("/") == 2:
                    names.add(method[1:].partition("/")[0])
    return sorted(names)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_error(host: str, port: int) -> OSError:
    """Why ``host:port`` cannot be bound, found by trying it (grpc only says that it failed)."""
    cause, code = "grpc could not bind it", 0
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            probe.bind(addr)
    except OSError as exc:
        cause, code = exc.strerror or str(exc), exc.errno or 0
    return OSError(code, f"cannot bind grpc://{_address(host, port)}: {cause}")
