"""Small servers whose stop (and throughput) the benchmarks compare.

``python bench/stop_targets.py KIND [OPTION] PORT`` where KIND is one of
:data:`KINDS`; the port comes last so that :func:`stoptime.stop_once` can
append it (``quiesce-http+grpc`` takes the gRPC port before it). The HTTP
kinds serve the same two routes: ``/`` answers ``ok``,
``/sleep?ms=N`` answers ``ok`` after N milliseconds. Their OPTION is a stop
timeout in seconds: ``HTTPServer(stop_timeout=...)`` for quiesce,
``shutdown_timeout`` for aiohttp, ``--timeout-graceful-shutdown`` for uvicorn,
``--workers-kill-timeout`` for the granian CLI (its only bound on a stop).

``quiesce-granian`` is ``quiesce-http`` on ``engine="granian"``; ``granian-cli``
is the bare granian CLI with the options it can share (``--interface asgi
--loop uvloop --workers 1``, no access log). That CLI forks its one worker: the
process that serves is the kind's child, not the kind itself.

The ``-log`` kinds are the same servers with the access log on, logging as
each does by default: ``quiesce-http-log`` leaves logging to ``App.run()``
(INFO to stderr, through its log queue), ``uvicorn-cli-log`` is the CLI
without ``--no-access-log`` at ``--log-level info`` (its access lines go to
stdout, the rest to stderr).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BENCH = Path(__file__).resolve().parent

_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}
_BODY = {"type": "http.response.body", "body": b"ok"}


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A trivial ASGI app with a lifespan; ``/sleep?ms=N`` waits N ms before answering."""
    if scope["type"] == "http":
        if scope["path"] == "/sleep":
            ms = int(scope["query_string"].partition(b"=")[2] or b"300")
            await asyncio.sleep(ms / 1000)
        await send(_START)
        await send(_BODY)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)


async def lifespan(receive: Receive, send: Send) -> None:
    """An ASGI lifespan that does nothing, as a real app's would: startup, then shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def quiesce_stream(port: int) -> None:
    from quiesce import App
    from quiesce.servers.stream import StreamServer

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)

    App(name="bench", servers=[StreamServer(echo, port=port)]).run()


def quiesce_http(
    port: int, stop_timeout: str | None = None, *, access_log: bool = False, **engine: Any
) -> None:
    """:data:`asgi_app` through ``HTTPServer`` in an ``App`` (uvloop, httptools, no access log).

    ``engine`` replaces the engine options (``engine="granian"``).
    """
    from quiesce import App
    from quiesce.servers.asgi import HTTPServer

    server = HTTPServer(
        asgi_app,
        port=port,
        stop_timeout=None if stop_timeout is None else float(stop_timeout),
        access_log=access_log,
        **(engine or {"http": "httptools"}),
    )
    App(name="bench", servers=[server]).run()


def quiesce_http_log(port: int, stop_timeout: str | None = None) -> None:
    """:func:`quiesce_http` with the access log on; ``App.run()`` sets up logging (stderr, INFO)."""
    quiesce_http(port, stop_timeout, access_log=True)


def quiesce_granian(port: int, stop_timeout: str | None = None) -> None:
    """:data:`asgi_app` through ``HTTPServer(engine="granian")`` in an ``App``, no access log."""
    quiesce_http(port, stop_timeout, engine="granian")


def granian_cli(port: int, kill_timeout: str | None = None) -> None:
    """Become the granian CLI serving :data:`asgi_app` (same pid: the signals are its own).

    ``kill_timeout``: ``--workers-kill-timeout`` (whole seconds, at least 1), after
    which the CLI kills a worker still finishing its requests; without it, it waits.
    """
    argv = [
        *(sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop"),
        *("--workers", "1", "--no-access-log", "--log-level", "warning"),
        *("--host", "127.0.0.1", "--port", str(port), "--working-dir", str(BENCH)),
        *(() if kill_timeout is None else ("--workers-kill-timeout", kill_timeout)),
        "stop_targets:asgi_app",
    ]
    os.execv(argv[0], argv)


def grpc_echo_server() -> grpc.aio.Server:
    """A grpc.aio server with one unary method, ``/bench.Echo/Echo``, that echoes its bytes."""
    import grpc

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
    )
    return server


def quiesce_grpc(port: int) -> None:
    """:func:`grpc_echo_server` through ``GRPCServer`` in an ``App``."""
    from quiesce import App
    from quiesce.servers.grpc import GRPCServer

    App(name="bench", servers=[GRPCServer(grpc_echo_server, port=port)]).run()


def quiesce_http_grpc(port: int, grpc_port: str) -> None:
    """Both in one ``App``: ``quiesce-http+grpc GRPC_PORT HTTP_PORT``."""
    from quiesce import App
    from quiesce.servers.asgi import HTTPServer
    from quiesce.servers.grpc import GRPCServer

    http = HTTPServer(asgi_app, port=port, http="httptools", access_log=False)
    grpc_server = GRPCServer(grpc_echo_server, port=int(grpc_port))
    App(name="bench", servers=[http, grpc_server]).run()


def uvicorn_cli_argv(port: int, *options: str, access_log: bool = False) -> list[str]:
    """The bare uvicorn CLI serving :data:`asgi_app` with the options ``quiesce_http`` uses.

    ``access_log``: drop ``--no-access-log`` and log at INFO (``--log-level warning``
    would silence the access logger too), with uvicorn's default log config.
    """
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "stop_targets:asgi_app",
        "--app-dir",
        str(BENCH),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        *(() if access_log else ("--no-access-log",)),
        "--log-level",
        "info" if access_log else "warning",
        *options,
    ]


def uvicorn_cli(
    port: int, graceful_timeout: str | None = None, *, access_log: bool = False
) -> None:
    """Become the uvicorn CLI (same pid, so signals and exit times are the CLI's own)."""
    options = [] if graceful_timeout is None else ["--timeout-graceful-shutdown", graceful_timeout]
    argv = uvicorn_cli_argv(port, *options, access_log=access_log)
    os.execv(argv[0], argv)


def quiesce_run(port: int) -> None:
    """Become ``quiesce run`` serving :data:`asgi_app`, access log off, as the uvicorn CLI kind."""
    argv = [
        *(sys.executable, "-m", "quiesce", "run", "stop_targets:asgi_app"),
        *("--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(port)),
        *("--no-access-log", "--log-level", "warning"),
    ]
    os.execv(argv[0], argv)


def uvicorn_cli_log(port: int, graceful_timeout: str | None = None) -> None:
    """:func:`uvicorn_cli` with the access log on (stdout) at ``--log-level info``."""
    uvicorn_cli(port, graceful_timeout, access_log=True)


def aiohttp_app(port: int, shutdown_timeout: str | None = None) -> None:
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def sleep(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.query.get("ms", "300")) / 1000)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/sleep", sleep)
    options: dict[str, Any] = {}
    if shutdown_timeout is not None:
        options["shutdown_timeout"] = float(shutdown_timeout)
    web.run_app(app, host="127.0.0.1", port=port, print=None, **options)


#: Kinds that set up logging themselves (``App.run()``, uvicorn's log config): left alone here.
OWN_LOGGING = {"quiesce-http-log", "uvicorn-cli-log", "quiesce-run"}

KINDS: dict[str, Callable[..., None]] = {
    "quiesce-stream": quiesce_stream,
    "quiesce-http": quiesce_http,
    "quiesce-http-log": quiesce_http_log,
    "quiesce-grpc": quiesce_grpc,
    "quiesce-http+grpc": quiesce_http_grpc,
    "uvicorn-cli": uvicorn_cli,
    "uvicorn-cli-log": uvicorn_cli_log,
    "quiesce-run": quiesce_run,
    "aiohttp": aiohttp_app,
    "quiesce-granian": quiesce_granian,
    "granian-cli": granian_cli,
}

if __name__ == "__main__":
    import logging

    if sys.argv[1] not in OWN_LOGGING:
        logging.basicConfig(level=logging.WARNING)
    KINDS[sys.argv[1]](int(sys.argv[-1]), *sys.argv[2:-1])
