"""The app's Prometheus metrics: scraped from a real AdminServer during a run, and after it."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import prometheus_client

from quiesce import AdminServer, App, ExitCode, Lifecycle, PhaseRecord, State
from quiesce.metrics import CONTENT_TYPE, Metrics
from quiesce.observe import Observer

from .support import Held, Watch, serve_while


def lines(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    assert CONTENT_TYPE.startswith("text/plain; version=")
    return response.text.splitlines()


async def test_metrics_scraped_during_the_drain_show_stopping_and_the_http_in_flight() -> None:
    held = Held()
    http = held.server()
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[http, admin], drain_delay=1.0, stop_timeout=5)
    watch = app.lifecycle.observers.add(Watch())
    assert isinstance(watch, Watch)
    scraped: list[tuple[float, list[str]]] = []

    async def drive() -> None:
        async with httpx.AsyncClient() as client:
            request = await held.stop_with_one_in_flight(app, http, client)
            await watch.until("step_began stop drain")
            response = await client.get(admin.endpoints()[0] + "/metrics")
            scraped.append((time.monotonic(), lines(response)))
            held.release.set()
            assert (await request).text == "done"

    report = await serve_while(app, drive)
    assert report.exit_code == ExitCode.OK
    (at, metrics), drain = scraped[0], report.step("drain")
    assert report.stop_began is not None
    assert at < report.stop_began + drain.offset + drain.duration  # answered within the drain
    assert 'quiesce_lifecycle_state{state="stopping"} 1.0' in metrics
    for state in ("created", "starting", "running", "stopped"):
        assert f'quiesce_lifecycle_state{{state="{state}"}} 0.0' in metrics
    assert 'quiesce_in_flight{server="http"} 1.0' in metrics
    assert 'quiesce_in_flight{server="admin"} 1.0' in metrics  # the scrape itself


async def test_metrics_while_running_show_the_registration_and_the_tracked_tasks(
    tmp_path: Path,
) -> None:
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[admin], registry=f"file://{tmp_path}/registry")
    release = asyncio.Event()
    scraped: list[list[str]] = []

    @app.after_start
    async def scrape() -> None:
        _ = app.spawn(release.wait(), name="waiting")
        async with httpx.AsyncClient() as client:
            scraped.append(lines(await client.get(admin.endpoints()[0] + "/metrics")))
        release.set()
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    (metrics,) = scraped
    assert 'quiesce_lifecycle_state{state="running"} 1.0' in metrics
    assert "quiesce_registered 1.0" in metrics
    assert "quiesce_tracked_tasks 1.0" in metrics
    # After the run: withdrawn, nothing tracked (read at scrape time, never kept).
    assert admin.metrics is not None
    value = admin.metrics.registry.get_sample_value
    assert value("quiesce_registered") == 0.0
    assert value("quiesce_tracked_tasks") == 0.0


async def test_metrics_after_a_run_have_every_phase_duration_and_one_clean_stop() -> None:
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[admin], drain_delay=0.2)
    app.after_start(app.stop)
    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert admin.metrics is not None
    value = admin.metrics.registry.get_sample_value
    assert value("quiesce_stops_total", {"outcome": "clean"}) == 1.0
    assert value("quiesce_stops_total", {"outcome": "incomplete"}) == 0.0
    assert value("quiesce_stops_total", {"outcome": "failed"}) == 0.0
    assert value("quiesce_lifecycle_state", {"state": "stopped"}) == 1.0
    assert value("quiesce_lifecycle_state", {"state": "stopping"}) == 0.0
    for kind, records in (("start", report.start), ("stop", report.stop)):
        assert records
        for record in records:
            labels = {"sequence": kind, "phase": record.name}
            assert value("quiesce_phase_duration_seconds", labels) == record.duration
    drain = value("quiesce_phase_duration_seconds", {"sequence": "stop", "phase": "drain"})
    assert drain is not None
    assert drain >= 0.2


async def test_metrics_count_an_incomplete_stop_as_incomplete() -> None:
    held = Held()
    http = held.server(stop_timeout=0.2)
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[http, admin])

    async def drive() -> None:
        async with httpx.AsyncClient() as client:
            request = await held.stop_with_one_in_flight(app, http, client)
            with contextlib.suppress(httpx.TransportError):  # cut at the stop timeout: the point
                await request

    report = await serve_while(app, drive)
    assert report.exit_code == ExitCode.INCOMPLETE
    assert admin.metrics is not None
    value = admin.metrics.registry.get_sample_value
    assert value("quiesce_stops_total", {"outcome": "incomplete"}) == 1.0
    assert value("quiesce_stops_total", {"outcome": "clean"}) == 0.0


def test_two_apps_in_one_process_keep_their_metrics_apart() -> None:
    first, second = Lifecycle("first"), Lifecycle("second")
    first.state, second.state = State.RUNNING, State.STOPPING
    one, two = Metrics(first), Metrics(second)
    one.sequence_ended("stop", "clean")
    assert one.registry.get_sample_value("quiesce_lifecycle_state", {"state": "running"}) == 1.0
    assert two.registry.get_sample_value("quiesce_lifecycle_state", {"state": "stopping"}) == 1.0
    assert one.registry.get_sample_value("quiesce_stops_total", {"outcome": "clean"}) == 1.0
    assert two.registry.get_sample_value("quiesce_stops_total", {"outcome": "clean"}) == 0.0
    # prometheus_client's global registry is never touched.
    global_registry = prometheus_client.REGISTRY
    assert global_registry.get_sample_value("quiesce_stops_total", {"outcome": "clean"}) is None


class Failing(Observer):
    """An observer that raises at every call, its flush included."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")

    def sequence_began(self, kind: str) -> None:
        self._fail()

    def step_began(self, kind: str, step: str) -> None:
        self._fail()

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        self._fail()

    def server_stop_began(self, server: str, in_flight: int | None) -> None:
        self._fail()

    def server_stop_ended(self, server: str, in_flight: int | None, cut: Sequence[str]) -> None:
        self._fail()

    def sequence_ended(self, kind: str, outcome: str) -> None:
        self._fail()

    async def flush(self, timeout: float) -> None:
        self._fail()


async def test_a_failing_observer_never_changes_the_run_nor_the_metrics() -> None:
    admin = AdminServer(port=0)
    app = App(name="svc", servers=[admin])
    failing = Failing()
    app.lifecycle.observers.add(failing)  # first: the metrics come after it
    app.after_start(app.stop)
    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert not report.incomplete()
    # What a flush that raised may have held is lost, and the report says so.
    assert report.observers_cut == [
        f"observer {failing!r}: flush failed: RuntimeError('observer bug')"
    ]
    assert failing.calls > 10  # it was called all along, and raised each time
    assert admin.metrics is not None
    value = admin.metrics.registry.get_sample_value
    assert value("quiesce_stops_total", {"outcome": "clean"}) == 1.0
    labels = {"sequence": "stop", "phase": "stop_servers"}
    assert value("quiesce_phase_duration_seconds", labels) is not None


def test_import_quiesce_imports_neither_prometheus_client_nor_opentelemetry() -> None:
    code = (
        "import sys, quiesce; "
        "assert 'prometheus_client' not in sys.modules; "
        "assert not any(m.startswith('opentelemetry') for m in sys.modules); "
        "quiesce.AdminServer; "
        "assert 'prometheus_client' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
