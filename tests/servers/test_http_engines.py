"""HTTPServer on either engine: options, lifespans, signals, the access log, TLS (issue 14)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from quiesce import App, ExitCode, HTTPServer


async def api(scope: Any, receive: Any, send: Any) -> None:
    """The plainest ASGI app: 404 for every request (no lifespan of its own)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"engine": "hypercorn"}, "engine='hypercorn': must be 'uvicorn' or 'granian'"),
        ({"http": "httptools"}, "option http='httptools': must be one of auto, 1, 2"),
        ({"ws": "websockets"}, "option ws='websockets' is not one of the granian engine's:"),
        ({"workers": 2}, "option workers=2 is not one of the granian engine's:"),
        ({"lifespan": "maybe"}, "option lifespan='maybe': must be one of auto, on, off"),
        ({"backpressure": 0}, "option backpressure=0: must be a positive integer"),
        ({"runtime_threads": "2"}, "option runtime_threads='2': must be a positive integer"),
        ({"ssl_certfile": "/no/such/cert.pem"}, "option ssl_certfile='/no/such/cert.pem': no such"),
        ({"http1_settings": {"keep_alive": False}}, "must be a granian.http.HTTP1Settings(...)"),
    ],
)
async def test_bad_granian_options_exit_2_naming_server_and_option(
    options: dict[str, Any], message: str
) -> None:
    options = {"engine": "granian", **options}
    report = await App(name="svc", servers=[HTTPServer(api, port=0, **options)]).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert (report.error or "").startswith("server 'http': ")
    assert message in (report.error or "")
    assert report.start == [], "checked before anything started"


async def ignores_lifespan(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})


@pytest.mark.parametrize("lifespan", ["auto", "on"])
async def test_an_app_that_ignores_the_lifespan_scope_serves(engine: str, lifespan: str) -> None:
    # The plainest ASGI app returns at once for a scope it does not know: not a failure.
    server = HTTPServer(
        ignores_lifespan, port=0, access_log=False, engine=engine, lifespan=lifespan
    )
    app = App(name="svc", servers=[server])
    answers: list[str] = []

    @app.after_start
    async def probe() -> None:
        async with httpx.AsyncClient() as client:
            answers.append((await client.get(server.endpoints()[0] + "/")).text)
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.error
    assert answers == ["plain"]


async def test_granian_engine_without_granian_installed_exits_2_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "granian", None)  # as if not installed: import fails
    server = HTTPServer(api, port=0, engine="granian")
    report = await App(name="svc", servers=[server]).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == (
        "server 'http': engine='granian' needs granian installed: pip install 'quiesce[granian]'"
    )


async def test_serving_installs_no_signal_handler(engine: str) -> None:
    # The App owns the signals: neither engine may take one behind its back (uvicorn's
    # Server.serve() and granian's Server.serve() each would).
    watched = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1]
    loop = asyncio.get_running_loop()

    def handlers() -> tuple[list[object], set[int]]:
        return [signal.getsignal(s) for s in watched], set(getattr(loop, "_signal_handlers", {}))

    before = handlers()
    server = HTTPServer(api, port=0, access_log=False, engine=engine)
    server.check()
    await server.start()
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.endpoints()[0] + "/")).status_code == 404
        serving = handlers()
    finally:
        assert await server.stop(5.0) == []
    assert serving == before
    assert handlers() == before


@pytest.mark.parametrize("access_log", [None, False])
async def test_the_access_log_is_on_by_default_and_off_when_asked(
    engine: str, access_log: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    options: dict[str, Any] = {} if access_log is None else {"access_log": access_log}
    server = HTTPServer(api, port=0, engine=engine, **options)
    app = App(name="svc", servers=[server])

    @app.after_start
    async def probe() -> None:
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.endpoints()[0] + "/logged")).status_code == 404
        app.stop()

    assert (await app.serve()).exit_code == ExitCode.OK
    lines = [r for r in caplog.records if r.name == f"{engine}.access"]
    assert [("/logged" in r.getMessage()) for r in lines] == ([True] if access_log is None else [])


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl, as an operator makes one)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


async def tls_scheme(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["scheme"].encode()})


async def test_tls_with_the_common_options_on_either_engine(
    engine: str, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    server = HTTPServer(
        tls_scheme, port=0, engine=engine, ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    app = App(name="svc", servers=[server])
    answers: list[tuple[int, str]] = []

    @app.after_start
    async def probe() -> None:
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trusted) as client:
            response = await client.get(server.endpoints()[0] + "/")
            answers.append((response.status_code, response.text))
        app.stop()

    assert (await app.serve()).exit_code == ExitCode.OK
    assert server.endpoints()[0].startswith("https://127.0.0.1:")
    assert answers == [(200, "https")]


async def test_a_lifespan_startup_that_hangs_is_bounded_by_the_start_budget(engine: str) -> None:
    ended = asyncio.Event()

    async def hangs(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            try:
                await asyncio.Event().wait()  # never answers the startup
            finally:
                ended.set()

    server = HTTPServer(hangs, port=0, engine=engine, lifespan="on")
    async with asyncio.timeout(5):
        report = await App(name="svc", servers=[server], start_timeout=0.5).serve()
    assert report.exit_code == ExitCode.FAILED
    assert report.error == "servers timed out: server http (not ready within 0.5s, starting)"
    await asyncio.wait_for(ended.wait(), 1)  # the app's lifespan was not left running


GRANIAN_DOCS = Path(__file__).resolve().parents[2] / "docs" / "granian.md"


async def test_the_granian_docs_example_serves_on_granian_and_stops_clean() -> None:
    text = GRANIAN_DOCS.read_text()  # a small local file, before serving
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert block.rstrip().endswith("app.run()")
    scope: dict[str, Any] = {"api": api}  # the user's ASGI app
    exec(block.rstrip().removesuffix("app.run()"), scope)  # as pasted, served below instead
    app: App = scope["app"]
    (server,) = app.servers
    assert isinstance(server, HTTPServer)
    assert (server.engine, server.port) == ("granian", 8000)
    server.port = 0  # 8000 may be taken on a test machine
    answers: list[tuple[int, str | None]] = []

    @app.after_start
    async def probe() -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(server.endpoints()[0] + "/readyz")
            answers.append((response.status_code, response.headers.get("server")))
        app.stop()

    app.drain_delay = 0.0  # the example's 5 s drain: the stop is the same, only shorter
    report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.error
    assert answers == [(200, "granian")]


async def test_granian_own_settings_reach_granian() -> None:
    from granian.http import HTTP1Settings

    server = HTTPServer(
        api, port=0, engine="granian", http1_settings=HTTP1Settings(keep_alive=False)
    )
    app = App(name="svc", servers=[server])
    closing: list[str | None] = []

    @app.after_start
    async def probe() -> None:
        async with httpx.AsyncClient() as client:
            closing.append(
                (await client.get(server.endpoints()[0] + "/")).headers.get("connection")
            )
        app.stop()

    assert (await app.serve()).exit_code == ExitCode.OK
    assert closing == ["close"]  # hyper's keep_alive=False: not the drain's (it had not begun)
