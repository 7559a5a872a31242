"""The drain: a fixed delay, or a :class:`quiesce.Drain` that ends once traffic stops.

The adaptive drain is judged by when it ends against when the last arrival
was: with traffic to the end it lasts ``max``; with none after the
deregistration it ends at ``min + idle``. Real servers supply the arrivals in
the App tests (HTTP requests, gRPC calls, TCP connections).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest

from quiesce import App, ConfigError, Drain, ExitCode, Lifecycle
from quiesce.drain import check_drain, hold, parse_drain
from quiesce.servers.asgi import HTTPServer
from quiesce.servers.stream import StreamServer

#: Slack for the loop waking late on a busy machine; the drain never ends early.
LATE = 0.25


async def traffic(lifecycle: Lifecycle, every: float, until: float) -> None:
    """Arrivals every ``every`` seconds until ``time.monotonic()`` reaches ``until``."""
    while time.monotonic() < until:
        lifecycle.arrived()
        await asyncio.sleep(every)


async def test_fixed_delay_waits_its_whole_length() -> None:
    lifecycle = Lifecycle()
    began = time.monotonic()
    assert await hold(0.3, lifecycle) == "fixed"
    assert 0.3 <= time.monotonic() - began < 0.3 + LATE


async def test_adaptive_without_traffic_ends_at_min_plus_idle() -> None:
    lifecycle = Lifecycle()
    lifecycle.arrived()  # traffic before the drain does not hold it
    began = time.monotonic()
    note = await hold(Drain(min=0.3, max=5.0, idle=0.2), lifecycle)
    took = time.monotonic() - began
    assert 0.5 <= took < 0.5 + LATE
    assert note == f"idle after {float(note.split()[-1][:-1]):.2f}s"
    assert 0.5 <= float(note.split()[-1][:-1]) < 0.5 + LATE


async def test_adaptive_with_steady_traffic_lasts_max() -> None:
    lifecycle = Lifecycle()
    began = time.monotonic()
    load = asyncio.create_task(traffic(lifecycle, 0.05, began + 2.0))
    try:
        note = await hold(Drain(min=0.2, max=0.8, idle=0.2), lifecycle)
    finally:
        load.cancel()
    assert note == "max"
    assert 0.8 <= time.monotonic() - began < 0.8 + LATE


async def test_adaptive_ends_idle_after_the_last_arrival() -> None:
    lifecycle = Lifecycle()
    began = time.monotonic()
    load = asyncio.create_task(traffic(lifecycle, 0.05, began + 0.6))
    note = await hold(Drain(min=0.2, max=5.0, idle=0.3), lifecycle)
    await load
    took = time.monotonic() - began
    quiet = time.monotonic() - lifecycle.last_arrival
    assert note.startswith("idle after ")
    # Traffic went on past min: the drain waited for it, then for idle seconds of quiet.
    assert 0.6 + 0.3 - 0.06 <= took < 0.6 + 0.3 + LATE
    assert quiet >= 0.3


def test_arrivals_are_counted_and_timed() -> None:
    lifecycle = Lifecycle()
    assert (lifecycle.arrivals, lifecycle.last_arrival) == (0, -math.inf)
    before = time.monotonic()
    lifecycle.arrived()
    lifecycle.arrived()
    assert lifecycle.arrivals == 2
    assert before <= lifecycle.last_arrival <= time.monotonic()


@pytest.mark.parametrize(
    ("delay", "error"),
    [
        (Drain(min=-1), "drain_delay.min=-1: must be zero or more seconds"),
        (Drain(max=0), "drain_delay.max=0: must be a positive number of seconds"),
        (Drain(idle=math.inf), "drain_delay.idle=inf: must be a positive number of seconds"),
        (Drain(min=3, max=2), "drain_delay=Drain(min=3, max=2, idle=0.5): min must not exceed max"),
        ("1", "drain_delay='1': must be zero or more seconds"),
    ],
)
async def test_bad_drain_is_one_line_and_exit_2(delay: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=f"^{error.replace('(', '.').replace(')', '.')}$"):
        check_drain(delay)
    report = await App(name="x", drain_delay=delay).serve()
    assert (report.exit_code, report.error) == (ExitCode.CONFIG, error)


async def test_a_drain_whose_max_does_not_fit_the_stop_budget_is_refused() -> None:
    report = await App(name="x", drain_delay=Drain(max=9), stop_timeout=10).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error is not None
    assert report.error.startswith("drain_delay=9s does not fit stop_timeout=10s")


# -- with real servers ------------------------------------------------------------


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def drained(app: App) -> tuple[float, str]:
    report = await app.serve()
    assert report.exit_code == ExitCode.OK, report.to_text()
    step = report.step("drain")
    return step.duration, step.note


@pytest.fixture
def http_app() -> tuple[App, HTTPServer]:
    server = HTTPServer(hello, port=0, access_log=False)
    return App(name="x", servers=[server], drain_delay=Drain(min=0.3, max=1.2, idle=0.2)), server


async def test_http_requests_hold_the_drain_until_max(http_app: tuple[App, HTTPServer]) -> None:
    app, server = http_app

    @app.after_start
    def begin() -> None:
        _ = app.spawn(requests(server, until_stopped=False))
        app.stop()

    async def requests(server: HTTPServer, *, until_stopped: bool) -> None:
        # New connections every time, so each request arrives on its own.
        url = server.endpoints()[0] + "/work"
        end = time.monotonic() + 1.6
        while time.monotonic() < end and not (until_stopped and app.stopping.is_set()):
            async with httpx.AsyncClient() as client:
                try:
                    await client.get(url)
                except httpx.TransportError:
                    # The drain is over and the server stops: refused, or a connection
                    # accepted just as the listener closed. Not what this test judges.
                    return
            await asyncio.sleep(0.03)

    took, note = await drained(app)
    assert note == "max"
    assert 1.2 <= took < 1.2 + LATE


async def test_probes_are_not_traffic_and_the_drain_ends_at_min_plus_idle(
    http_app: tuple[App, HTTPServer],
) -> None:
    app, server = http_app
    arrivals: list[int] = []

    @app.after_start
    async def begin() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(server.endpoints()[0] + "/work")
        arrivals.append(app.lifecycle.arrivals)  # one connection, one request
        _ = app.spawn(probes())
        app.stop()

    async def probes() -> None:
        # A balancer's readiness probe every 50 ms on one kept-alive connection.
        url = server.endpoints()[0] + "/readyz"
        end = time.monotonic() + 1.0
        async with httpx.AsyncClient() as client:
            await client.get(url)  # its connection arrives now, before the stop
            while time.monotonic() < end:
                try:
                    await client.get(url)
                except httpx.HTTPError:
                    return
                await asyncio.sleep(0.05)

    took, note = await drained(app)
    assert arrivals == [2]
    assert note.startswith("idle after ")
    assert 0.5 <= took < 0.5 + LATE


async def test_tcp_connections_are_arrivals() -> None:
    server = StreamServer(lambda r, w: asyncio.sleep(0))
    app = App(name="x", servers=[server], drain_delay=Drain(min=0.1, max=3.0, idle=0.3))

    @app.after_start
    async def begin() -> None:
        _ = app.spawn(connections())
        app.stop()

    async def connections() -> None:
        host, port = server.host, server.port
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await asyncio.sleep(0.05)

    took, note = await drained(app)
    # Connections went on for 0.8 s, then 0.3 s of quiet ended the drain.
    assert note.startswith("idle after ")
    assert 0.8 + 0.3 - 0.06 <= took < 0.8 + 0.3 + LATE
    assert app.lifecycle.arrivals >= 10


@pytest.mark.parametrize(
    ("text", "delay"),
    [
        ("1.5", 1.5),
        ("0", 0.0),
        ("min=0.5,max=5,idle=0.3", Drain(min=0.5, max=5.0, idle=0.3)),
        ("max=4", Drain(max=4.0)),
    ],
)
def test_a_drain_delay_can_be_written_as_text(text: str, delay: float | Drain) -> None:
    assert parse_drain(text) == delay


@pytest.mark.parametrize("text", ["soon", "min=1,max", "min=a", "slow=1", ""])
def test_a_bad_drain_text_is_one_line(text: str) -> None:
    must = "seconds, or min=S,max=S,idle=S (each optional)"
    with pytest.raises(ConfigError) as info:
        parse_drain(text)
    assert str(info.value) == f"drain_delay={text!r}: must be {must}"
