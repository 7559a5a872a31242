"""An ASGI app (FastAPI, Starlette, Litestar...) served by an embedded uvicorn (or granian).

:class:`HTTPServer` is what both engines share: the socket (bound here, so a
busy port is our error, with our message; or a supervisor's, inherited), the
probes and the drain header (the :class:`~quiesce.servers.gate.Gate`), the
options check. The serving and the stop are the engine's:
:mod:`quiesce.servers.uvicorn_engine` (the default) or
:mod:`quiesce.servers.granian_engine`.

The request path stays nearly free: health and readiness are answered by two
path comparisons; ``Connection: close`` is added only while draining.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Any

import uvicorn

from quiesce.errors import ConfigError
from quiesce.lifecycle import Lifecycle
from quiesce.servers.gate import ASGIApp, Gate
from quiesce.servers.granian_engine import GranianEngine, check_granian_options
from quiesce.servers.listening import ListeningServer, inherited_socket
from quiesce.servers.uvicorn_engine import UvicornEngine
from quiesce.servers.uvicorn_parts import ConnectionSet, check_uvicorn_options

__all__ = ["HTTPServer"]


logger = logging.getLogger("quiesce.http")


class HTTPServer(ListeningServer):
    """Serve ``asgi_app`` on ``host:port`` with uvicorn (or granian), as a :class:`~quiesce.Server`.

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
        self._engine: UvicornEngine | GranianEngine | None = None
        self._picked_port: int | None = None  # the port the system chose for port=0
        self.uvicorn_options = {"log_config": None, **uvicorn_options}
        self.scheme = "https" if self.uvicorn_options.get("ssl_certfile") else "http"
        self._gate = Gate(asgi_app, health_path, ready_path)
        self._uvicorn_config: uvicorn.Config | None = None
        self._exited = asyncio.Event()

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
        if self._engine is not None:
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
        # A server that served an App before starts afresh (the engines' pieces are per run).
        self._exited = asyncio.Event()
        self._gate.reset()
        sock = self._bind()
        engine: UvicornEngine | GranianEngine
        try:
            if self.engine == "granian":
                engine = GranianEngine(self.where, self.name, self._gate, self.uvicorn_options)
                await engine.start(sock)
            else:
                engine = UvicornEngine(self.where, self.name, self._gate)
                await engine.start(sock, self._config())
        except BaseException:
            sock.close()
            raise
        self._engine = engine

    async def drain(self) -> None:
        """Go not-ready and make every response from now on close its connection."""
        self._gate.draining = True
        if self._engine is not None:
            self._engine.drain()

    async def stop(self, timeout: float) -> list[str]:
        """Close the listener, finish in-flight requests within ``timeout``, then cut them.

        Returns one line per request or WebSocket that had to be cut.
        """
        engine = self._engine
        if engine is None:
            return []
        try:
            return await engine.stop(timeout)
        finally:
            self._engine = None  # in_flight counts its requests until the stop is over
            self._exited.set()

    async def wait_closed(self) -> None:
        """Return when the server stopped serving.

        After a stop, uvicorn's request limit, or granian's worker ending on its own.
        """
        if (engine := self._engine) is not None:
            waits = {asyncio.ensure_future(e.wait()) for e in (self._exited, engine.exited)}
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
        return self._engine.in_flight if self._engine is not None else 0

    @property
    def _connections(self) -> ConnectionSet:
        """The uvicorn engine's connections (empty on granian, or when not serving)."""
        engine = self._engine
        return engine.connections if isinstance(engine, UvicornEngine) else ConnectionSet()

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


def _granian_installed(where: str) -> None:
    try:
        import granian  # noqa: F401
    except ImportError:
        extra = "pip install 'quiesce[granian]'"
        raise ConfigError(f"{where}: engine='granian' needs granian installed: {extra}") from None
