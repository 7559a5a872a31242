"""The uvicorn engine of :class:`~quiesce.HTTPServer` (its default): uvicorn's pieces, driven.

uvicorn's own ``Server.serve()`` is not used: it captures SIGINT/SIGTERM and
re-raises them when it stops, calls ``sys.exit(3)`` when startup fails, and
polls every 0.1 s in its main loop and its shutdown. Instead its pieces are
driven directly: ``Server.startup()`` serves on the socket ``HTTPServer``
bound, and the stop closes the listener, shuts connections down through their
protocols and waits on an event that fires when the last one is gone. The
in-flight count is uvicorn's own ``server_state.tasks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

import uvicorn

from quiesce.errors import StartError
from quiesce.servers.gate import CUT_GRACE, Gate, lifespan_reserve
from quiesce.servers.uvicorn_parts import (
    ConnectionSet,
    LifespanLog,
    cancel_lifespan,
    describe,
    unsent_bytes,
)

__all__ = ["NEW_CONNECTION_GRACE", "UvicornEngine"]

logger = logging.getLogger("quiesce.http")

#: How often the Date header is refreshed (uvicorn does it once a second too).
HEADER_REFRESH = 1.0
#: Bound on uvicorn's listener ``wait_closed()``, which on 3.12+ waits for connections.
WAIT_CLOSED_TIMEOUT = 0.2
#: At the stop, how long a connection that has not sent its first request yet gets to send
#: it (counted from its accept): its client may have sent it already. Go's Shutdown treats
#: new connections the same way (idle only after 5 s); longer ones are closed as idle.
NEW_CONNECTION_GRACE = 0.5


class UvicornEngine:
    """One run of uvicorn for an :class:`~quiesce.HTTPServer`."""

    def __init__(self, where: str, name: str, gate: Gate) -> None:
        self.where = where
        self.name = name
        self.gate = gate
        #: Its connections, in a set that says when it empties: the stop waits on that.
        self.connections = ConnectionSet(gate.arrived)
        #: Set once it stopped serving: after a stop, or at uvicorn's request limit.
        self.exited = asyncio.Event()
        self.server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._lifespan_errors: list[str] = []

    async def start(self, sock: socket.socket, config: uvicorn.Config) -> None:
        """Run the ASGI lifespan startup and serve on ``sock``.

        Raises:
            StartError: the ASGI lifespan startup failed.

        """
        server = uvicorn.Server(config)
        # Track connections in a set that says when it empties: the stop waits on that.
        # uvicorn only adds, removes, iterates and counts: a MutableSet does all of that.
        server.server_state.connections = self.connections  # type: ignore[assignment]
        try:
            config.load()
            server.lifespan = lifespan = config.lifespan_class(config)
            # uvicorn logs a lifespan failure (Starlette's as text): keep it quiet, say it once.
            lifespan.logger = LifespanLog(self._lifespan_errors)
            try:
                await server.startup(sockets=[sock])
            except SystemExit as exc:  # uvicorn's way of failing a startup
                detail = "; ".join(self._lifespan_errors) or f"uvicorn exited with {exc.code}"
                # The user gets the one line; the traceback goes to DEBUG, once, with the
                # exception itself (not uvicorn's text of it) for handlers that want it.
                error = self.gate.lifespan_error
                logger.debug("server %r: ASGI lifespan startup failed", self.name, exc_info=error)
                raise StartError(self.where, f"ASGI lifespan: {detail}") from None
        except BaseException:
            sock.close()
            for listener in getattr(server, "servers", ()):
                listener.close()
            cancel_lifespan(server.lifespan)  # a startup cut by the start's budget
            raise
        self.server = server
        self._ticker = asyncio.create_task(
            self._refresh_headers(), name=f"quiesce {self.name} tick"
        )

    def drain(self) -> None:
        """Make the responses not started yet close their connections (the Gate does the rest)."""
        for connection in list(self.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_started:
                cycle.keep_alive = False

    async def stop(self, timeout: float) -> list[str]:
        """Close the listener, finish in-flight requests within ``timeout``, then cut them."""
        server = self.server
        if server is None:
            return []
        if self._ticker is not None:
            self._ticker.cancel()
        began = time.monotonic()
        has_lifespan = not getattr(server.lifespan, "error_occurred", True)
        reserve = lifespan_reserve(timeout, has_lifespan)
        self.gate.draining = True
        for listener in server.servers:
            listener.close()
        # Idle keep-alive connections close now; busy ones after their current response;
        # new ones once they answered their first request, or are NEW_CONNECTION_GRACE old.
        # WebSockets are left to their handlers, which watch app.stopping, until the timeout.
        loop = asyncio.get_running_loop()
        for connection in list(self.connections):
            if not hasattr(connection, "cycle"):
                continue
            young = NEW_CONNECTION_GRACE - self.connections.age(connection)
            if connection.cycle is None and young > 0:
                loop.call_later(young, self._shut_if_open, connection)
            else:
                connection.shutdown()
        cut: list[str] = []
        try:
            async with asyncio.timeout(max(0.0, timeout - reserve)):
                await self.connections.wait_empty()
                if server.server_state.tasks:
                    await asyncio.wait(set(server.server_state.tasks))
        except TimeoutError:
            cut = await self._cut(server)
        left = max(0.0, timeout - (time.monotonic() - began))
        if has_lifespan:
            try:
                async with asyncio.timeout(max(left, 0.01)):
                    await server.lifespan.shutdown()
            except TimeoutError:
                cut.append(f"ASGI lifespan shutdown (timeout {left:.3g}s)")
            # A failed lifespan shutdown: one line for the user, the traceback at DEBUG.
            if getattr(server.lifespan, "error_occurred", False):
                detail = (self._lifespan_errors or ["failed"])[-1]
                logger.warning("server %r: ASGI lifespan shutdown failed: %s", self.name, detail)
                error = self.gate.lifespan_error
                logger.debug("server %r: ASGI lifespan shutdown failed", self.name, exc_info=error)
        for listener in server.servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_CLOSED_TIMEOUT):
                    await listener.wait_closed()
        self.exited.set()
        return cut

    @property
    def in_flight(self) -> int:
        """Requests (and WebSockets) being handled right now, during the stop too."""
        return len(self.server.server_state.tasks) if self.server is not None else 0

    def _shut_if_open(self, connection: Any) -> None:
        """Close a connection that had its grace (idle), or end it after its answer."""
        if connection in self.connections:
            connection.shutdown()

    async def _cut(self, server: uvicorn.Server) -> list[str]:
        cut: list[str] = []
        for connection in list(self.connections):
            cycle = getattr(connection, "cycle", None)
            scope = cycle.scope if cycle is not None else getattr(connection, "scope", None)
            if scope is not None and (cycle is None or not cycle.response_complete):
                cut.append(describe(scope))
            elif scope is not None and (unsent := unsent_bytes(connection.transport)):
                # The app finished, the client did not read it all: the abort loses the rest.
                cut.append(describe(scope, unsent))
            if cycle is not None:
                # Abort first: the cancelled handler then finds its client gone and
                # uvicorn stays quiet instead of logging a traceback per request.
                connection.transport.abort()
        self.gate.cutting = True
        tasks = set(server.server_state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CUT_GRACE)
        for connection in list(self.connections):
            connection.transport.abort()
        return cut

    async def _refresh_headers(self) -> None:
        assert self.server is not None
        server = self.server
        while True:
            # on_tick(0) refreshes the Date header and checks uvicorn's request limit.
            if await server.on_tick(0):
                logger.info("server %s reached its request limit", self.name)
                self.exited.set()
                return
            await asyncio.sleep(HEADER_REFRESH)
