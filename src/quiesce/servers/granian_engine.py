"""``HTTPServer(app, engine="granian")``: the ASGI app served by granian's Rust HTTP stack.

granian's embedded ``Server`` is not used: it binds its own socket (a busy port
would be its error, and a supervisor's shared socket could not be served), runs
the ASGI lifespan where a failure is a traceback on its own logger, and its
stop waits for every connection without a bound. Its worker is driven directly
instead, as that ``Server`` drives it: on the socket bound here, with its
callbacks scheduled on the App's loop, and the lifespan run by quiesce.

What granian does at the stop, and what quiesce adds:

- granian, once signalled, stops accepting and shuts every connection down
  gracefully (hyper's ``graceful_shutdown``): idle keep-alive connections close
  at once, busy ones after their response; then it says it is done.
- Once signalled, granian's WebSockets can no longer send, not even a close
  frame: so the signal waits until the WebSockets have ended (their handlers
  watch ``app.stopping``) or the timeout cut them with 1001, while HTTP
  responses meanwhile say ``Connection: close``.
- quiesce tracks each request's task on its loop, so it counts and names what
  is in flight and, at the timeout, cancels what is left: a cut request gets
  granian's 500 with ``Connection: close``, a WebSocket is closed with 1001,
  and each is named in the report.
- What granian still holds after that (a response written to a client that
  does not read it) cannot be aborted from Python: it is named as a cut, as
  connections granian still had open, and the stop goes on without it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quiesce.errors import ConfigError, StartError
from quiesce.servers.gate import CUT_GRACE, Gate, Scope, lifespan_reserve
from quiesce.servers.lifespan import Lifespan, LifespanFailed
from quiesce.servers.uvicorn_parts import describe

__all__ = ["COMMON_OPTIONS", "GRANIAN_OPTIONS", "GranianEngine", "check_granian_options"]

logger = logging.getLogger("quiesce.http")

#: Options both engines take, under uvicorn's names (granian's own name in the comment).
COMMON_OPTIONS = frozenset(
    {
        "access_log",  # log_access
        "backlog",
        "lifespan",  # interface asgi / asginl
        "log_config",  # quiesce leaves logging to the host: ignored
        "ssl_certfile",  # ssl_cert
        "ssl_keyfile",  # ssl_key
        "ssl_keyfile_password",  # ssl_key_password
    }
)
#: granian's own options, as its embedded ``Server`` names them.
GRANIAN_OPTIONS = frozenset(
    {
        "backpressure",
        "blocking_threads_idle_timeout",
        "http",
        "http1_settings",
        "http2_settings",
        "runtime_blocking_threads",
        "runtime_threads",
        "ssl_ca",
        "ssl_client_verify",
        "ssl_protocol_min",
        "url_path_prefix",
        "websockets",
    }
)
#: How many connections granian serves at once unless ``backpressure`` says otherwise.
#: granian's own default (its backlog) leaves the connections past it in the accept queue,
#: where closing the listener at the stop would drop them; uvicorn sets no such limit.
DEFAULT_BACKPRESSURE = 1_000_000
#: The access log's lines: granian's own format, on its ``granian.access`` logger.
ACCESS_LOG_FORMAT = (
    '[%(time)s] %(addr)s - "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).3f'
)
#: After the cut, how long granian gets to write what it has and say it is done.
RELEASE_GRACE = 0.2


def check_granian_options(where: str, options: Mapping[str, Any]) -> None:
    """Refuse options granian does not have, and values it cannot take.

    Raises:
        ConfigError: an unknown option (a uvicorn-only one says so), or a bad value.

    """
    for name, value in options.items():
        if name not in COMMON_OPTIONS | GRANIAN_OPTIONS:
            raise ConfigError(
                f"{where}: option {name}={value!r} is not one of the granian engine's: "
                f"{', '.join(sorted(COMMON_OPTIONS | GRANIAN_OPTIONS))}"
            )
    lifespan = options.get("lifespan", "auto")
    if lifespan not in ("auto", "on", "off"):
        raise ConfigError(f"{where}: option lifespan={lifespan!r}: must be one of auto, on, off")
    http = str(options.get("http", "auto"))
    if http not in ("auto", "1", "2"):
        raise ConfigError(f"{where}: option http={http!r}: must be one of auto, 1, 2")
    for name in ("backpressure", "runtime_threads", "backlog"):
        value = options.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ConfigError(f"{where}: option {name}={value!r}: must be a positive integer")
    for name in ("ssl_certfile", "ssl_keyfile", "ssl_ca"):
        value = options.get(name)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{where}: option {name}={value!r}: no such file")
    if bool(options.get("ssl_certfile")) != bool(options.get("ssl_keyfile")):
        raise ConfigError(f"{where}: TLS needs both ssl_certfile and ssl_keyfile")
    settings: Any = importlib.import_module("granian.http")
    for name, kind in (("http1_settings", "HTTP1Settings"), ("http2_settings", "HTTP2Settings")):
        value = options.get(name)
        if value is not None and not isinstance(value, getattr(settings, kind)):
            must = f"must be a granian.http.{kind}(...) or None"
            raise ConfigError(f"{where}: option {name}={value!r}: {must}")


class GranianEngine:
    """One run of granian's worker for an :class:`~quiesce.HTTPServer`."""

    def __init__(self, where: str, name: str, gate: Gate, options: Mapping[str, Any]) -> None:
        self.where = where
        self.name = name
        self.gate = gate
        self.options = dict(options)
        self.lifespan = Lifespan(gate, str(options.get("lifespan", "auto")))
        #: Each request (or WebSocket) being handled: its task and its scope.
        self.requests: dict[asyncio.Task[Any], Scope] = {}
        # Set by the last request to end once the stop waits (not on every request: cheaper).
        self._idle = asyncio.Event()
        self._stopping = False
        self._sockets = 0  # WebSockets among the requests
        self._no_sockets = asyncio.Event()
        self._no_sockets.set()
        self.exited = asyncio.Event()
        self._signal: Any = None
        self._sock: socket.socket | None = None
        self._root_path = str(self.options.get("url_path_prefix") or "")
        self._access: Any = None  # granian's access logger, when the access log is on

    async def start(self, sock: socket.socket) -> None:
        """Run the lifespan startup, then serve on ``sock`` (already bound and listening).

        Raises:
            StartError: the ASGI lifespan startup failed.

        """
        # The pieces granian's embedded Server is made of (granian.server.embed), untyped.
        futures: Any = importlib.import_module("granian._futures")
        native: Any = importlib.import_module("granian._granian")
        asgi: Any = importlib.import_module("granian.asgi")
        try:
            await self.lifespan.startup()
        except LifespanFailed as exc:
            error = self.lifespan.error
            logger.debug("server %r: ASGI lifespan startup failed", self.name, exc_info=error)
            raise StartError(self.where, f"ASGI lifespan: {exc}") from None
        loop = asyncio.get_running_loop()
        self._sock = sock
        options = self.options
        backlog = int(options.get("backlog") or 2048)
        # granian's listener owns its descriptor (it closes it when it stops): give it a copy.
        copy = os.dup(sock.fileno())
        holder = native.SocketHolder(copy, False, backlog)
        self._signal = signal = native.WorkerSignal()
        signal.add_cb(lambda: loop.call_soon_threadsafe(self.exited.set))
        try:
            worker = self._worker(native, holder)
        except BaseException:
            os.close(copy)
            raise
        if options.get("access_log", True):
            self._access = asgi._build_access_logger(ACCESS_LOG_FORMAT)
        scheduler = futures._new_cbscheduler(loop, self._serve, impl_asyncio=True)
        worker.serve_async(scheduler, loop, signal)

    def _worker(self, native: Any, holder: Any) -> Any:
        """The ASGI worker of granian on ``holder``'s socket, with this server's options."""
        options = self.options
        return native.ASGIWorker(
            1,
            (None, holder),
            None,
            threads=int(options.get("runtime_threads", 1)),
            blocking_threads=options.get("runtime_blocking_threads") or 512,
            py_threads=1,
            py_threads_idle_timeout=int(options.get("blocking_threads_idle_timeout", 30)),
            backpressure=int(options.get("backpressure") or DEFAULT_BACKPRESSURE),
            http_mode=str(options.get("http", "auto")),
            http1_opts=options.get("http1_settings"),
            http2_opts=options.get("http2_settings"),
            websockets_enabled=bool(options.get("websockets", True)),
            **_tls(options),
            metrics=(None, None),
        )

    async def _serve(self, watcher: Any) -> None:
        """One request from granian, routed by the Gate, tracked.

        It does in one coroutine what granian's own two wrappers around the app
        do (its future watcher and its scope and access-log wrapper) and what the
        Gate's ``__call__`` does: each layer is a coroutine per request, and the
        three cost ~5% of granian's requests/s.
        """
        scope: Scope = watcher.scope
        proto = watcher.proto
        scope["root_path"] = self._root_path
        scope["state"] = self.lifespan.state.copy()
        task = asyncio.current_task()
        assert task is not None  # granian runs each request as a task of the loop
        requests = self.requests
        requests[task] = scope
        socket = scope["type"] == "websocket"
        if socket:
            self._sockets += 1
            self._no_sockets.clear()
        access = self._access
        began = (time.time(), time.perf_counter()) if access is not None else None
        gate = self.gate
        try:
            await gate.route(scope, proto.receive, proto.send)
        except asyncio.CancelledError as exc:
            if not gate.cutting:
                watcher.err(exc)
            else:
                await gate.end_cut(scope, proto.send)
                watcher.done()
        except BaseException as exc:  # as granian's watcher: it answers 500, or drops
            watcher.err(exc)
        else:
            watcher.done()
        finally:
            del requests[task]
            if self._stopping and not requests:
                self._idle.set()
            if socket:
                self._sockets -= 1
                if not self._sockets:
                    self._no_sockets.set()
            elif began is not None:
                access(*began, scope, proto.sent_response_code)

    def drain(self) -> None:
        """Nothing of its own: the Gate's ``Connection: close`` is what granian's hyper obeys."""

    async def stop(self, timeout: float) -> list[str]:
        """Stop accepting, let what is in flight finish within ``timeout``, then cut it."""
        began = time.monotonic()
        self.gate.draining = True
        self._stopping = True
        if not self.requests:
            self._idle.set()
        if self._sock is not None:
            self._sock.close()  # granian's copy is the listener now: it closes at the signal
        reserve = lifespan_reserve(timeout, self.lifespan.running)
        cut: list[str] = []
        try:
            async with asyncio.timeout(max(0.0, timeout - reserve)):
                # Once signalled, granian's WebSockets can no longer send (a close frame
                # included): they end first, HTTP requests meanwhile close their connections.
                await self._no_sockets.wait()
                self._signal.set()
                await self._idle.wait()
                await self.exited.wait()
        except TimeoutError:
            cut = await self._cut()
        left = max(0.0, timeout - (time.monotonic() - began))
        if self.lifespan.running:
            try:
                async with asyncio.timeout(max(left, 0.01)):
                    await self.lifespan.shutdown()
            except TimeoutError:
                cut.append(f"ASGI lifespan shutdown (timeout {left:.3g}s)")
            except LifespanFailed as exc:
                logger.warning("server %r: ASGI lifespan shutdown failed: %s", self.name, exc)
                error = self.lifespan.error
                logger.debug("server %r: ASGI lifespan shutdown failed", self.name, exc_info=error)
        return cut

    async def _cut(self) -> list[str]:
        cut = [describe(scope) for scope in self.requests.values()]
        self.gate.cutting = True
        tasks = set(self.requests)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CUT_GRACE)
        self._signal.set()
        try:
            async with asyncio.timeout(RELEASE_GRACE):
                await self.exited.wait()
        except TimeoutError:
            # Responses granian is still writing (a client that does not read): no Python
            # handle reaches its connections, so they are named as a whole.
            cut.append("connections granian still had open at the timeout [abandoned]")
        return cut

    @property
    def in_flight(self) -> int:
        """Requests (and WebSockets) being handled right now."""
        return len(self.requests)


def _tls(options: Mapping[str, Any]) -> dict[str, Any]:
    cert, key = options.get("ssl_certfile"), options.get("ssl_keyfile")
    if not (cert and key):
        return {"ssl_enabled": False}
    ca = options.get("ssl_ca")
    return {
        "ssl_enabled": True,
        "ssl_cert": str(Path(cert).resolve()),
        "ssl_key": str(Path(key).resolve()),
        "ssl_key_password": options.get("ssl_keyfile_password"),
        "ssl_protocol_min": str(options.get("ssl_protocol_min", "tls1.3")),
        "ssl_ca": str(Path(ca).resolve()) if ca else None,
        "ssl_crl": [],
        "ssl_client_verify": bool(options.get("ssl_client_verify", False)),
    }
