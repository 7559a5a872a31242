"""HTTPServer in-process on a real uvicorn: probes, endpoints, drain headers, bounded stop."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from quiesce import App, ExitCode, HTTPServer, Outcome, Report, Server


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {request.url.path}")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("s", "5")))
    return PlainTextResponse("slow done")


api = Starlette(routes=[Route("/", hello), Route("/healthz-app", hello), Route("/slow", slow)])


def test_http_server_implements_the_server_protocol() -> None:
    server: Server = HTTPServer(api)
    assert isinstance(server, Server)


async def test_probes_follow_the_lifecycle_and_endpoint_is_the_real_port(engine: str) -> None:
    server = HTTPServer(api, port=0, access_log=False, engine=engine)
    app = App(name="svc", servers=[server], drain_delay=0.5)
    seen: dict[str, tuple[int, str, str | None]] = {}

    async def get(client: httpx.AsyncClient, label: str, path: str) -> None:
        response = await client.get(server.endpoints()[0] + path)
        seen[label] = (response.status_code, response.text, response.headers.get("connection"))

    async def drive() -> None:
        await app.ready
        async with httpx.AsyncClient() as client:
            await get(client, "ready", "/readyz")
            await get(client, "health", "/healthz")
            await get(client, "app", "/")
            app.stop()
            await app.stopping
            await get(client, "ready-draining", "/readyz")
            await get(client, "health-draining", "/healthz")
            await get(client, "app-draining", "/")

    driver = asyncio.create_task(drive())
    report = await app.serve()
    await driver
    assert report.exit_code == ExitCode.OK
    (endpoint,) = server.endpoints()
    assert endpoint.startswith("http://127.0.0.1:")
    assert not endpoint.endswith(":0")
    assert seen["ready"][:2] == (200, '{"status": "ready", "state": "running"}')
    assert seen["health"][:2] == (200, '{"status": "alive", "state": "running"}')
    assert seen["app"][:2] == (200, "hello /")
    assert seen["ready-draining"][:2] == (503, '{"status": "not ready", "state": "stopping"}')
    assert seen["health-draining"][0] == 200
    assert seen["app-draining"] == (200, "hello /", "close")


async def test_probes_can_be_turned_off_and_then_reach_the_app(engine: str) -> None:
    server = HTTPServer(
        api, port=0, health_path=None, ready_path="/ready", access_log=False, engine=engine
    )
    app = App(name="svc", servers=[server])
    codes: list[tuple[int, str]] = []

    @app.after_start
    async def probe() -> None:
        async with httpx.AsyncClient() as client:
            for path in ("/ready", "/healthz", "/healthz-app"):
                response = await client.get(server.endpoints()[0] + path)
                codes.append((response.status_code, response.text[:20]))
        app.stop()

    await app.serve()
    assert codes == [(200, '{"status": "ready", '), (404, "Not Found"), (200, "hello /healthz-app")]


async def test_request_past_the_stop_timeout_is_cut_and_named(engine: str) -> None:
    entered = asyncio.Event()

    async def stuck(request: Request) -> PlainTextResponse:
        entered.set()
        await asyncio.sleep(5)
        return PlainTextResponse("too late")

    stuck_api = Starlette(routes=[Route("/slow", stuck)])
    server = HTTPServer(stuck_api, port=0, stop_timeout=0.5, engine=engine)
    app = App(name="svc", servers=[server])
    outcome: list[str] = []

    async def client() -> None:
        await app.ready
        async with httpx.AsyncClient() as http:
            request = asyncio.create_task(http.get(server.endpoints()[0] + "/slow"))
            await entered.wait()
            assert server.in_flight == 1
            app.stop()
            try:
                outcome.append(str((await request).status_code))
            except httpx.TransportError as exc:
                outcome.append(type(exc).__name__)

    driver = asyncio.create_task(client())
    began = time.monotonic()
    async with asyncio.timeout(5):
        report = await app.serve()
    await driver
    assert time.monotonic() - began < 0.5 + 0.5
    # uvicorn's connection is aborted; granian answers its own 500 (Connection: close).
    assert outcome == ["RemoteProtocolError" if engine == "uvicorn" else "500"]
    (phase,) = [r for r in report.stop if r.name == "stop_servers"]
    assert phase.outcome is Outcome.TIMEOUT
    (cut,) = phase.cut
    assert cut.startswith("server http: request GET /slow from 127.0.0.1:")
    assert report.exit_code == ExitCode.INCOMPLETE


async def test_accepted_connections_do_not_wait_for_delayed_acks() -> None:
    server = HTTPServer(api, port=0, access_log=False)
    app = App(name="svc", servers=[server])
    nodelay: list[int] = []

    @app.after_start
    async def probe() -> None:
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.endpoints()[0] + "/")).status_code == 200
            for connection in server._connections:  # the keep-alive connection just used
                sock = connection.transport.get_extra_info("socket")
                nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        app.stop()

    await app.serve()
    assert nodelay
    assert all(nodelay)


def test_endpoint_scheme_follows_tls_options() -> None:
    assert HTTPServer(api, port=8443, ssl_certfile="cert.pem").endpoints() == [
        "https://127.0.0.1:8443"
    ]
    assert HTTPServer(api, host="::1", port=80).endpoints() == ["http://[::1]:80"]


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (HTTPServer(42, port=0), "server 'http': 42 is not an ASGI app (not callable)"),  # type: ignore[arg-type]
        (
            HTTPServer(api, port=70000),
            "server 'http': port=70000: must be an integer from 0 to 65535",
        ),
        (HTTPServer(api, port="80"), "server 'http': port='80': must be an integer"),  # type: ignore[arg-type]
        (HTTPServer(api, host=""), "server 'http': host='': must be a host name or address"),
        (HTTPServer(api, stop_timeout=-1), "server 'http': stop_timeout=-1: must be a positive"),
        (
            HTTPServer(api, timeout_keep_aliv=5),
            "server 'http': uvicorn options: Config.__init__() got an unexpected keyword argument",
        ),
        (HTTPServer(api, workers=4), "uvicorn option workers=4: run more instances instead"),
        (
            HTTPServer(api, timeout_graceful_shutdown=5),
            "uvicorn option timeout_graceful_shutdown=5: use stop_timeout",
        ),
        (
            HTTPServer(api, ready_path="readyz"),
            "ready_path='readyz': must be a path starting with /",
        ),
        (HTTPServer(api, backlog="x"), "uvicorn option backlog='x': must be a positive integer"),
        (
            HTTPServer(api, limit_concurrency="x"),
            "uvicorn option limit_concurrency='x': must be a positive integer or None",
        ),
        (
            HTTPServer(api, timeout_keep_alive="x"),
            "uvicorn option timeout_keep_alive='x': must be a number of seconds",
        ),
        (HTTPServer(api, ws="bogus"), "uvicorn option ws='bogus': must be one of 'auto', "),
        (HTTPServer(api, http="nope"), "uvicorn option http='nope': must be one of 'auto', "),
        (
            HTTPServer(api, http="no_such_module:Protocol"),
            "uvicorn option http='no_such_module:Protocol': must be one of",
        ),
        (HTTPServer(api, lifespan="maybe"), "uvicorn option lifespan='maybe': must be one of"),
        (HTTPServer(api, log_level="loud"), "uvicorn option log_level='loud': must be one of"),
        (HTTPServer(api, access_log="no"), "uvicorn option access_log='no': must be True or"),
        (HTTPServer(api, loop="bogus"), "uvicorn option loop='bogus': the App runs on its own"),
        (HTTPServer(api, loop="asyncio"), "uvicorn option loop='asyncio': the App runs on its"),
    ],
)
async def test_bad_http_options_exit_2_naming_server_and_option(
    server: HTTPServer, message: str
) -> None:
    report = await App(name="svc", servers=[server]).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert message in (report.error or "")
    assert report.start == [], "checked before anything started"


async def failing_lifespan_context(api: Starlette) -> AsyncIterator[None]:
    raise RuntimeError("database is unreachable")
    yield  # pragma: no cover - never reached


async def raw_failing_lifespan(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("database is unreachable")


@pytest.mark.parametrize(
    ("asgi_app", "options"),
    [
        (Starlette(lifespan=asynccontextmanager(failing_lifespan_context)), {}),
        (raw_failing_lifespan, {"lifespan": "on"}),
    ],
    ids=["starlette", "raw-lifespan-on"],
)
async def test_lifespan_startup_failure_one_line_and_its_traceback_at_debug_once(
    caplog: pytest.LogCaptureFixture, asgi_app: Any, options: dict[str, Any], engine: str
) -> None:
    caplog.set_level(logging.DEBUG)
    server = HTTPServer(asgi_app, port=0, engine=engine, **options)
    report = await App(name="svc", servers=[server]).serve()
    assert report.exit_code == ExitCode.FAILED
    line = "server 'http' failed to start: ASGI lifespan: RuntimeError: database is unreachable"
    assert report.error == line
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"start failed: {line}"]
    # The user's frames appear in one record, as its exception, at DEBUG on quiesce.http.
    formatter = logging.Formatter()
    shown = [r for r in caplog.records if 'database is unreachable")' in formatter.format(r)]
    assert len(shown) == 1, [formatter.format(r) for r in shown]
    (record,) = shown
    assert (record.name, record.levelno) == ("quiesce.http", logging.DEBUG)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_http_server_serves_a_second_app_once_the_first_has_stopped(engine: str) -> None:
    server = HTTPServer(api, port=0, access_log=False, engine=engine)
    answers: list[tuple[str, int, str]] = []

    async def run_once(name: str) -> Report:
        app = App(name=name, servers=[server])

        @app.after_start
        async def probe() -> None:
            async with httpx.AsyncClient() as client:
                response = await client.get(server.endpoints()[0] + "/")
                answers.append((name, response.status_code, response.text))
            app.stop()

        return await app.serve()

    # Each in its own loop, as two App.run() would be.
    first = asyncio.run(run_once("first"))
    second = asyncio.run(run_once("second"))
    assert (first.exit_code, second.exit_code) == (ExitCode.OK, ExitCode.OK), second.error
    assert answers == [("first", 200, "hello /"), ("second", 200, "hello /")]


async def test_http_server_serving_one_app_is_refused_to_a_second(engine: str) -> None:
    server = HTTPServer(api, port=0, access_log=False, engine=engine)
    first = App(name="first", servers=[server])
    second_reports: list[Report] = []

    @first.after_start
    async def try_a_second_app() -> None:
        second_reports.append(await App(name="second", servers=[server]).serve())
        async with httpx.AsyncClient() as client:  # the first still serves, unharmed
            assert (await client.get(server.endpoints()[0] + "/")).status_code == 200
        first.stop()

    report = await first.serve()
    assert report.exit_code == ExitCode.OK
    (second,) = second_reports
    assert second.exit_code == ExitCode.CONFIG
    assert second.error == "server 'http' is in use by App 'first': one App at a time"
    assert second.start == []


async def test_lifespan_shutdown_failure_one_warning_and_its_traceback_at_debug(
    caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    @asynccontextmanager
    async def fails_at_shutdown(api: Starlette) -> AsyncIterator[None]:
        yield
        raise RuntimeError("cannot flush the cache")

    caplog.set_level(logging.DEBUG)
    server = HTTPServer(Starlette(lifespan=fails_at_shutdown), port=0, engine=engine)
    server.check()
    await server.start()
    assert await server.stop(2.0) == []
    line = "server 'http': ASGI lifespan shutdown failed: RuntimeError: cannot flush the cache"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [line]
    formatter = logging.Formatter()
    shown = [r for r in caplog.records if 'flush the cache")' in formatter.format(r)]
    assert [(r.name, r.levelno) for r in shown] == [("quiesce.http", logging.DEBUG)]
    assert shown[0].exc_info is not None
