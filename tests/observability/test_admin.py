"""AdminServer on a real uvicorn: its endpoints, its defaults, and that it stops last."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from quiesce import AdminServer, App, ExitCode
from quiesce.metrics import CONTENT_TYPE

from .support import Held, Watch, serve_while


def test_admin_server_defaults_are_loopback_9090_admin_and_stopping_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = AdminServer()
    assert (admin.host, admin.port, admin.name) == ("127.0.0.1", 9090, "admin")
    assert (tuple(admin.depends_on), admin.stop_timeout) == ((), None)
    assert admin.endpoints() == ["http://127.0.0.1:9090"]
    assert admin.stops_last is True
    assert admin.metrics is None  # until an App attaches it
    with caplog.at_level(logging.WARNING):
        admin.check()
    assert caplog.records == []


async def test_admin_endpoints_answer_get_and_404_anything_else() -> None:
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[admin])
    got: dict[str, httpx.Response] = {}

    @app.after_start
    async def probe() -> None:
        base = admin.endpoints()[0]
        async with httpx.AsyncClient() as client:
            for path in ("/metrics", "/healthz", "/readyz", "/", "/metrics/x"):
                got[path] = await client.get(base + path)
            got["POST /metrics"] = await client.post(base + "/metrics")
            got["DELETE /debug/tasks"] = await client.delete(base + "/debug/tasks")
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert got["/metrics"].status_code == 200
    assert got["/metrics"].headers["content-type"] == CONTENT_TYPE
    assert got["/healthz"].json() == {"status": "alive", "state": "running"}
    assert got["/readyz"].json() == {"status": "ready", "state": "running"}  # ready with the app
    assert got["/"].status_code == got["/metrics/x"].status_code == 404
    for method in ("POST /metrics", "DELETE /debug/tasks"):
        assert got[method].status_code == 405
        assert got[method].headers["allow"] == "GET"
    assert app.state.value == "stopped"  # no endpoint stopped it: the hook did


async def test_debug_tasks_lists_a_tracked_task_by_name() -> None:
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[admin])
    release = asyncio.Event()
    got: list[httpx.Response] = []

    @app.after_start
    async def dump() -> None:
        _ = app.spawn(release.wait(), name="send-receipt")
        async with httpx.AsyncClient() as client:
            got.append(await client.get(admin.endpoints()[0] + "/debug/tasks"))
        release.set()
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    (response,) = got
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("task dump: ")
    (line,) = [x for x in response.text.splitlines() if "'send-receipt'" in x]
    assert "spawned at" in line
    assert "test_admin.py" in line


@pytest.mark.parametrize("depends_on", [(), ("http",)], ids=["independent", "depends-on-http"])
async def test_admin_stops_after_every_other_server_and_answers_during_their_stop(
    depends_on: tuple[str, ...],
) -> None:
    held = Held()
    http = held.server()
    # Listed first, and in one case depending on http: either way it would stop first or
    # together with http if it did not stop last.
    admin = AdminServer(port=0, depends_on=depends_on)
    app = App(name="svc", servers=[admin, http], stop_timeout=5)
    watch = Watch()
    app.lifecycle.observers.add(watch)
    during: list[httpx.Response] = []

    async def drive() -> None:
        async with httpx.AsyncClient() as client:
            request = await held.stop_with_one_in_flight(app, http, client)
            await watch.until("server_stop_began http")
            during.append(await client.get(admin.endpoints()[0] + "/metrics"))
            during.append(await client.get(admin.endpoints()[0] + "/readyz"))
            held.release.set()
            assert (await request).text == "done"

    report = await serve_while(app, drive)
    assert report.exit_code == ExitCode.OK
    stops = [e for e in watch.events if e.startswith("server_stop")]
    assert stops == [
        "server_stop_began http",
        "server_stop_ended http",
        "server_stop_began admin",
        "server_stop_ended admin",
    ]
    waited = report.step("stop_servers").waited_for
    assert [w.split(" (")[0] for w in waited] == ["server http", "server admin"]
    metrics, ready = during
    assert metrics.status_code == 200
    assert 'quiesce_lifecycle_state{state="stopping"} 1.0' in metrics.text.splitlines()
    assert ready.status_code == 503  # not ready with the app, still answering


async def test_admin_requests_are_not_arrivals_for_the_drain() -> None:
    http = Held().server()
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[http, admin])
    arrivals: list[int] = []

    @app.after_start
    async def scrape() -> None:
        async with httpx.AsyncClient() as client:
            base = admin.endpoints()[0]
            for path in ("/metrics", "/debug/tasks", "/nothing", "/readyz"):
                await client.get(base + path)
            arrivals.append(app.lifecycle.arrivals)
            await client.get(http.endpoints()[0] + "/readyz")
            await client.get(http.endpoints()[0] + "/nothing")  # traffic: counted
            arrivals.append(app.lifecycle.arrivals)
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    before, after = arrivals
    assert before == 0
    assert after > 0


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.7", "admin.internal"])
def test_a_non_loopback_host_warns_once_and_is_allowed(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        AdminServer(host=host).check()
    (record,) = caplog.records
    assert (record.name, record.levelname) == ("quiesce.admin", "WARNING")
    assert f"server 'admin' listens on {host}:9090, not a loopback address" in record.message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_host_does_not_warn(host: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        AdminServer(host=host).check()
    assert caplog.records == []


async def test_admin_server_outside_an_app_says_it_serves_none() -> None:
    admin = AdminServer(port=0)
    await admin.start()
    try:
        async with httpx.AsyncClient() as client:
            metrics = await client.get(admin.endpoints()[0] + "/metrics")
            tasks = await client.get(admin.endpoints()[0] + "/debug/tasks")
    finally:
        assert await admin.stop(1) == []
    assert (metrics.status_code, metrics.text) == (503, "not serving an App\n")
    assert tasks.status_code == 503
