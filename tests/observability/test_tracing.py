"""Traces of the start and the stop, exported through the OpenTelemetry SDK.

Most tests hand :func:`quiesce.tracing.attach` a tracer provider of their own
(OpenTelemetry's global one can be set once per process); the global path,
and a process without OpenTelemetry, run in subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from quiesce import App, ExitCode, Report
from quiesce.tracing import Tracing, attach

from .support import Held, Watch, serve_while


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider that exports each span as it ends, to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def under(parent: ReadableSpan | None, spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    """The spans whose parent is ``parent`` (None: the roots), by name, in the order they began."""
    parent_id = None if parent is None or parent.context is None else parent.context.span_id
    mine = [s for s in spans if (s.parent.span_id if s.parent is not None else None) == parent_id]
    found = {s.name: s for s in sorted(mine, key=lambda s: s.start_time or 0)}
    assert len(found) == len(mine), [s.name for s in mine]  # one span per name
    return found


def attr(span: ReadableSpan, key: str) -> object:
    return (span.attributes or {})[key]


def strings(span: ReadableSpan, key: str) -> list[str]:
    """A list attribute (OpenTelemetry keeps it as a tuple)."""
    value = attr(span, key)
    assert isinstance(value, tuple), value
    return [str(v) for v in value]


def phases(records: Report, of: str) -> list[str]:
    return [f"quiesce.phase {r.name}" for r in (records.start if of == "start" else records.stop)]


async def run_with_a_request_in_flight(
    provider: TracerProvider, *, stop_timeout: float | None = None
) -> Report:
    """Serve an HTTP app and stop it with one request in flight (released as its stop begins,
    unless ``stop_timeout`` cuts it)."""
    held = Held()
    http = held.server(stop_timeout=stop_timeout)
    app = App(name="svc", servers=[http], drain_delay=0.1, stop_timeout=5)
    attach(app.lifecycle, provider)
    watch = Watch()
    app.lifecycle.observers.add(watch)

    async def drive() -> None:
        async with httpx.AsyncClient() as client:
            request = await held.stop_with_one_in_flight(app, http, client)
            await watch.until("server_stop_began http")
            if stop_timeout is None:
                held.release.set()
            try:
                await request
            except httpx.TransportError:
                assert stop_timeout is not None  # cut, as asked

    return await serve_while(app, drive)


async def test_traces_have_a_span_per_phase_under_the_start_and_the_stop(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    report = await run_with_a_request_in_flight(provider)
    assert report.exit_code == ExitCode.OK
    spans = exporter.get_finished_spans()
    roots = under(None, spans)
    assert list(roots) == ["quiesce.start", "quiesce.stop"]
    start, stop = roots["quiesce.start"], roots["quiesce.stop"]
    assert list(under(start, spans)) == phases(report, "start")
    named = under(stop, spans)
    assert list(named) == phases(report, "stop")
    assert "quiesce.phase drain" in named
    server_stops = under(named["quiesce.phase stop_servers"], spans)
    assert list(server_stops) == ["quiesce.server_stop http"]
    assert len(spans) == 2 + len(report.start) + len(report.stop) + 1  # nothing else
    assert attr(start, "quiesce.outcome") == attr(stop, "quiesce.outcome") == "clean"
    assert stop.status.status_code is StatusCode.UNSET
    # Each phase span says what its record says.
    for record in report.stop:
        span = named[f"quiesce.phase {record.name}"]
        assert attr(span, "quiesce.outcome") == record.outcome.value
        assert strings(span, "quiesce.waited_for") == record.waited_for
        assert strings(span, "quiesce.cut") == record.cut == []
        assert attr(span, "quiesce.note") == record.note
    assert attr(named["quiesce.phase drain"], "quiesce.note") == "fixed"
    assert strings(named["quiesce.phase stop_servers"], "quiesce.waited_for") == [
        "server http (1 in flight)"
    ]
    # A skipped step has its span too.
    deregister = named["quiesce.phase deregister"]
    assert attr(deregister, "quiesce.outcome") == "skipped"
    assert attr(deregister, "quiesce.note") == "not registered"
    server_stop = server_stops["quiesce.server_stop http"]
    assert attr(server_stop, "quiesce.in_flight.begin") == 1
    assert attr(server_stop, "quiesce.in_flight.end") == 0
    assert strings(server_stop, "quiesce.cut") == []


async def test_traces_name_what_a_stop_cut_with_an_error_status(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = exported
    report = await run_with_a_request_in_flight(provider, stop_timeout=0.2)
    assert report.exit_code == ExitCode.INCOMPLETE
    (cut,) = report.step("stop_servers").cut
    spans = exporter.get_finished_spans()
    stop = under(None, spans)["quiesce.stop"]
    phase = under(stop, spans)["quiesce.phase stop_servers"]
    assert attr(phase, "quiesce.outcome") == "timeout"
    assert strings(phase, "quiesce.cut") == [cut]
    assert phase.status.status_code is StatusCode.ERROR
    server_stop = under(phase, spans)["quiesce.server_stop http"]
    (what,) = strings(server_stop, "quiesce.cut")
    assert cut == f"server http: {what}"
    assert what.startswith("request GET /held from 127.0.0.1:")
    assert server_stop.status.status_code is StatusCode.ERROR
    assert attr(stop, "quiesce.outcome") == "incomplete"
    assert stop.status.status_code is StatusCode.ERROR


async def test_the_stops_spans_are_flushed_before_serve_returns() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    # A batch that would wait a minute: only the App's flush at the end sends it.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    try:
        app = App(name="svc")
        attach(app.lifecycle, provider)
        app.after_start(app.stop)
        report = await app.serve()
        names = {span.name for span in exporter.get_finished_spans()}
    finally:
        provider.shutdown()
    assert report.exit_code == ExitCode.OK
    assert report.observers_cut == []
    assert {"quiesce.start", "quiesce.stop", "quiesce.phase resources"} <= names


class Stuck(SpanExporter):
    """An exporter whose export blocks until released (a collector that does not answer)."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.released.wait(10)
        return SpanExportResult.SUCCESS


async def test_a_flush_that_outlasts_the_stop_budget_is_named_in_the_report() -> None:
    exporter = Stuck()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    try:
        app = App(name="svc", stop_timeout=0.5, cleanup_reserve=0.1)
        attach(app.lifecycle, provider)
        app.after_start(app.stop)
        report = await app.serve()
    finally:
        exporter.released.set()
        provider.shutdown()
    (cut,) = report.observers_cut
    assert cut.startswith("observer <quiesce.tracing.Tracing object at ")
    assert ": flush cut at " in cut


class Broken(TracerProvider):
    """A tracer provider whose flush raises (an exporter bug)."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        raise RuntimeError("exporter bug")


async def test_a_tracer_provider_whose_flush_fails_never_changes_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = Broken()
    try:
        app = App(name="svc")
        attach(app.lifecycle, provider)
        app.after_start(app.stop)
        report = await app.serve()
    finally:
        provider.shutdown()
    assert report.exit_code == ExitCode.OK
    assert not report.incomplete()
    (warning,) = [r for r in caplog.records if "observer" in r.message]
    assert "exporter bug" in warning.message


def test_attach_adds_one_tracing_observer() -> None:
    app = App(name="svc")
    attach(app.lifecycle, TracerProvider())
    attach(app.lifecycle)  # what serve() does: the first one stays
    tracers = [o for o in app.lifecycle.observers.observers if isinstance(o, Tracing)]
    assert len(tracers) == 1


SERVE = """
import asyncio, sys
from quiesce import App
app = App(name="svc")
app.after_start(app.stop)
report = asyncio.run(app.serve())
print("exit", report.exit_code)
"""


def run_python(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def test_traces_go_to_the_global_tracer_provider_and_are_flushed_before_serve_returns() -> None:
    code = (
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import BatchSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))\n"
        "trace.set_tracer_provider(provider)\n"
        + SERVE
        + "print('spans', ','.join(sorted({s.name for s in exporter.get_finished_spans()})))\n"
    )
    lines = run_python(code)
    assert "exit 0" in lines
    (spans,) = [line.split(" ", 1)[1] for line in lines if line.startswith("spans ")]
    assert {"quiesce.start", "quiesce.stop", "quiesce.phase stop_servers"} <= set(spans.split(","))


def test_without_opentelemetry_the_run_has_no_tracing_and_does_not_fail() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if it were not installed\n"
        + SERVE
        + "from quiesce.tracing import Tracing\n"
        "print('tracing', any(isinstance(o, Tracing) for o in app.lifecycle.observers.observers))\n"
    )
    assert run_python(code)[-2:] == ["exit 0", "tracing False"]
