"""An ASGI app (FastAPI, Starlette, Litestar...) served by an embedded uvicorn (or granian).

uvicorn's own ``Server.serve()`` is not used: it captures SIGINT/SIGTERM and
re-raises them when it stops, calls ``sys.exit(3)`` when startup fails, and
polls every 0.1 s in its main loop and its shutdown. Instead its pieces are
driven directly: the listening socket is bound here (so a busy port is our
error, with our message), ``Server.startup()`` serves on it, and the stop
closes the listener, shuts connections down through their protocols and waits
on an event that fires when the last one is gone.

The request path stays nearly free: health and readiness are answered by two
path comparisons; ``Connection: close`` is added only while draining; the
in-flight count is uvicorn's own ``server_state.tasks``.

``engine="granian"`` serves the same app on granian instead
(:mod:`quiesce.servers.granian_engine`): the socket, the probes, the drain
header and the options check stay here; the serving and the stop are its.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import uvicorn

from quiesce.errors import ConfigError, StartError
from quiesce.lifecycle import Lifecycle
from quiesce.servers.gate import ASGIApp, Gate
from quiesce.servers.granian_engine import GranianEngine, check_granian_options
from quiesce.servers.listening import ListeningServer, inherited_socket
from quiesce.servers.uvicorn_parts import (
    ConnectionSet,
    LifespanLog,
    cancel_lifespan,
    check_uvicorn_options,
    describe,
    unsent_bytes,
)

__all__ = ["HTTPServer"]


logger = logging.getLogger("quiesce.http")

#: Seconds of the stop timeout kept for the ASGI lifespan shutdown when requests use up the
#: rest (at most a tenth of it); when they finish early the lifespan gets all that is left.
LIFESPAN_SHUTDOWN_RESERVE = 0.1
#: After cutting requests at the timeout, how long their handlers get to unwind.
CUT_GRACE = 0.1
#: How often the Date header is refreshed (uvicorn does it once a second too).
HEADER_REFRESH = 1.0
#: Bound on uvicorn's listener ``wait_closed()``, which on 3.12+ waits for connections.
WAIT_CLOSED_TIMEOUT = 0.2
#: At the stop, how long a connection that has not sent its first request yet gets to send
#: it (counted from its accept): its client may have sent it already. Go's Shutdown treats
#: new connections the same way (idle only after 5 s); longer ones are closed as idle.
NEW_CONNECTION_GRACE = 0.5


class HTTPServer(ListeningServer):
    """Serve ``asgi_app`` on ``host:port`` with uvicorn, as a :class:`~quiesce.Server`.

    ``health_path`` answers 200 while the process is alive; ``ready_path``
    answers 200 only between "ready" and the start of the stop, then 503; both
    with a small JSON body and before the app sees the request (None turns one
    off). While draining, every response carries ``Connection: close``.
    ``stop(timeout)`` closes the listener and idle keep-alive connections, lets
    in-flight requests finish, then cancels what is left: HTTP requests are
    cut, WebSockets are closed with code 1001; the report names each.
    ``uvicorn_options`` go to :class:`uvicorn.Config` (``log_config``
    defaults to None: the host's logging is left alone); an unknown one, or
    one that makes no sense embedded (``workers``, ``reload``...), is a bad
    configuration (exit code 2). Each request and each new connection (probes
    aside) is an arrival for the app's adaptive drain.

    ``engine="granian"`` (extra ``quiesce[granian]``) serves it on granian's
    Rust HTTP stack instead, with the same probes, drain and stop guarantees
    (docs/granian.md says where they differ); its options are the common
    ones under uvicorn's names (``access_log``, ``backlog``, ``lifespan``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_keyfile_password``) plus
    granian's own (``runtime_threads``, ``backpressure``, ``http``...); an
    unknown one is a bad configuration too.

    Raises (from :meth:`start`):
        StartError: the port cannot be bound, or the ASGI lifespan startup failed.
    """

    #: Whether its requests and connections are traffic for an adaptive drain (an admin
    #: server's scrapes are not, as readiness probes are not).
    counts_arrivals = True

    def __init__(
        self,
        asgi_app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        name: str = "http",
        depends_on: Sequence[str] = (),
        stop_timeout: float | None = None,
        health_path: str | None = "/healthz",
        ready_path: str | None = "/readyz",
        engine: str = "uvicorn",
        **uvicorn_options: Any,
    ) -> None:
        super().__init__(
            host=host, port=port, name=name, depends_on=depends_on, stop_timeout=stop_timeout
        )
        self.app = asgi_app
        #: What serves it: "uvicorn" (the default) or "granian".
        self.engine = engine
        self._granian: GranianEngine | None = None
        self._picked_port: int | None = None  # the port the system chose for port=0
        self.uvicorn_options = {"log_config": None, **uvicorn_options}
        self.scheme = "https" if self.uvicorn_options.get("ssl_certfile") else "http"
        self._gate = Gate(asgi_app, health_path, ready_path)
        self._uvicorn_config: uvicorn.Config | None = None
        self._server: uvicorn.Server | None = None
        self._stopping: uvicorn.Server | None = None
        self._connections = ConnectionSet()
        self._ticker: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self._lifespan_errors: list[str] = []

    # -- the Server protocol ---------------------------------------------------

    def check(self) -> None:
        """Check the options before the app starts anything.

        Raises:
            ConfigError: not an ASGI app, a bad address, stop timeout, probe path or
                uvicorn option, or this server is serving another App right now.

        """
        super().check()
        where = self.where
        if not callable(self.app):
            raise ConfigError(f"{where}: {self.app!r} is not an ASGI app (not callable)")
        if self.engine == "granian":
            _granian_installed(where)
            check_granian_options(where, self.uvicorn_options)
        elif self.engine != "uvicorn":
            must = "must be 'uvicorn' or 'granian'"
            raise ConfigError(f"{where}: engine={self.engine!r}: {must}")
        else:
            check_uvicorn_options(where, self.uvicorn_options)
            try:
                self._config()
            except TypeError as exc:  # an unknown keyword: a typo of a uvicorn option
                raise ConfigError(f"{where}: uvicorn options: {exc}") from None
        gate = self._gate
        for option, path in (("health_path", gate.health_path), ("ready_path", gate.ready_path)):
            if path is not None and not str(path).startswith("/"):
                must = "must be a path starting with /, or None"
                raise ConfigError(f"{where}: {option}={path!r}: {must}")

    def attach(self, lifecycle: Lifecycle) -> None:
        """Answer readiness from the app's lifecycle, and report arrivals to it.

        Raises:
            ConfigError: another App is running this server (one App at a time; a
                server whose App has stopped can serve the next one).

        """
        super().attach(lifecycle)
        if self._server is not None or self._granian is not None:
            raise ConfigError(f"{self.where} is in use: one App at a time")
        self._gate.lifecycle = lifecycle
        self._gate.arrived = lifecycle.arrived if self.counts_arrivals else None

    def _config(self) -> uvicorn.Config:
        # Built once a run: check() builds it to catch typos, and building it configures
        # logging; a loaded one (a previous run's) cannot be loaded again.
        if self._uvicorn_config is None or self._uvicorn_config.loaded:
            self._uvicorn_config = uvicorn.Config(
                self._gate, host=self.host, port=self.port, **self.uvicorn_options
            )
        return self._uvicorn_config

    async def start(self) -> None:
        """Bind, run the ASGI lifespan startup, and serve; return once accepting."""
        # A server that served an App before starts afresh (uvicorn's pieces are per run).
        self._connections = ConnectionSet(self._gate.arrived)
        self._exited = asyncio.Event()
        self._lifespan_errors = []
        self._gate.reset()
        sock = self._bind()
        if self.engine == "granian":
            engine = GranianEngine(self.where, self.name, self._gate, self.uvicorn_options)
            try:
                await engine.start(sock)
            except BaseException:
                sock.close()
                raise
            self._granian = engine
            return
        config = self._config()
        server = uvicorn.Server(config)
        # Track connections in a set that says when it empties: the stop waits on that.
        # uvicorn only adds, removes, iterates and counts: a MutableSet does all of that.
        server.server_state.connections = self._connections  # type: ignore[assignment]
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
                error = self._gate.lifespan_error
                logger.debug("server %r: ASGI lifespan startup failed", self.name, exc_info=error)
                raise StartError(self.where, f"ASGI lifespan: {detail}") from None
        except BaseException:
            sock.close()
            for listener in getattr(server, "servers", ()):
                listener.close()
            cancel_lifespan(server.lifespan)  # a startup cut by the start's budget
            raise
        self._server = server
        self._ticker = asyncio.create_task(
            self._refresh_headers(), name=f"quiesce {self.name} tick"
        )

    async def drain(self) -> None:
        """Go not-ready and make every response from now on close its connection."""
        self._gate.draining = True
        for connection in list(self._connections):  # none on granian: its responses say it
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_started:
                cycle.keep_alive = False

    async def stop(self, timeout: float) -> list[str]:
        """Close the listener, finish in-flight requests within ``timeout``, then cut them.

        Returns one line per request or WebSocket that had to be cut.
        """
        if (granian := self._granian) is not None:
            try:
                return await granian.stop(timeout)
            finally:
                self._granian = None
                self._exited.set()
        server, self._server = self._server, None
        if server is None:
            return []
        self._stopping = server  # what in_flight counts until the stop is over
        try:
            return await self._stop(server, timeout)
        finally:
            self._stopping = None

    async def _stop(self, server: uvicorn.Server, timeout: float) -> list[str]:
        if self._ticker is not None:
            self._ticker.cancel()
        began = time.monotonic()
        has_lifespan = not getattr(server.lifespan, "error_occurred", True)
        reserve = min(LIFESPAN_SHUTDOWN_RESERVE, timeout / 10) if has_lifespan else 0.0
        self._gate.draining = True
        for listener in server.servers:
            listener.close()
        # Idle keep-alive connections close now; busy ones after their current response;
        # new ones once they answered their first request, or are NEW_CONNECTION_GRACE old.
        # WebSockets are left to their handlers, which watch app.stopping, until the timeout.
        loop = asyncio.get_running_loop()
        for connection in list(self._connections):
            if not hasattr(connection, "cycle"):
                continue
            young = NEW_CONNECTION_GRACE - self._connections.age(connection)
            if connection.cycle is None and young > 0:
                loop.call_later(young, self._shut_if_open, connection)
            else:
                connection.shutdown()
        cut: list[str] = []
        try:
            async with asyncio.timeout(max(0.0, timeout - reserve)):
                await self._connections.wait_empty()
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
                error = self._gate.lifespan_error
                logger.debug("server %r: ASGI lifespan shutdown failed", self.name, exc_info=error)
        for listener in server.servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_CLOSED_TIMEOUT):
                    await listener.wait_closed()
        self._exited.set()
        return cut

    async def wait_closed(self) -> None:
        """Return when the server stopped serving.

        After a stop, uvicorn's request limit, or granian's worker ending on its own.
        """
        if (granian := self._granian) is not None:
            waits = {asyncio.ensure_future(e.wait()) for e in (self._exited, granian.exited)}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            return
        await self._exited.wait()

    @property
    def in_flight(self) -> int:
        """Requests (and WebSockets) being handled right now, during the stop too."""
        if self._granian is not None:
            return self._granian.in_flight
        server = self._server or self._stopping
        return len(server.server_state.tasks) if server is not None else 0

    # -- internals -------------------------------------------------------------

    def _bind(self) -> socket.socket:
        if (inherited := inherited_socket(self.address)) is not None:
            inherited.setblocking(False)  # a supervisor's, shared by its workers
            return inherited
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
        # when the listener says it is TCP; without it every response waits for a
        # delayed ACK (~40 ms) on asyncio's default loop.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Asked for any port (0): ask again on a later run rather than reuse the last one.
            sock.bind((self.host, 0 if self.port == self._picked_port else self.port))
            sock.listen(self.uvicorn_options.get("backlog") or 2048)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise self.cannot_listen(exc) from exc
        if self.port in (0, self._picked_port):
            self._picked_port = self.port = sock.getsockname()[1]
        return sock

    def _shut_if_open(self, connection: Any) -> None:
        """Close a connection that had its grace (idle), or end it after its answer."""
        if connection in self._connections:
            connection.shutdown()

    async def _cut(self, server: uvicorn.Server) -> list[str]:
        cut: list[str] = []
        for connection in list(self._connections):
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
        self._gate.cutting = True
        tasks = set(server.server_state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CUT_GRACE)
        for connection in list(self._connections):
            connection.transport.abort()
        return cut

    async def _refresh_headers(self) -> None:
        assert self._server is not None
        server = self._server
        while True:
            # on_tick(0) refreshes the Date header and checks uvicorn's request limit.
            if await server.on_tick(0):
                logger.info("server %s reached its request limit", self.name)
                self._exited.set()
                return
            await asyncio.sleep(HEADER_REFRESH)


def _granian_installed(where: str) -> None:
    try:
        import granian  # noqa: F401
    except ImportError:
        extra = "pip install 'quiesce[granian]'"
        raise ConfigError(f"{where}: engine='granian' needs granian installed: {extra}") from None
