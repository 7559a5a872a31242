"""The gateway stops before the gRPC server it calls: the go-zero hang cannot happen (issue 11)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from conftest import Service
from gateway.bookstore_service import SLEEPY, Bookstore, bookstore_server, running
from quiesce import App, ExitCode, GRPCServer
from quiesce.gateway.server import GatewayServer
from quiesce.observe import Observer

MODULE = "tests.gateway.bookstore_service"
Start = Callable[..., Service]


@dataclass
class Timeline:
    """What happened when, in this process: ``(what, time.monotonic())``."""

    seen: list[tuple[str, float]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, what: str) -> None:
        self.seen.append((what, time.monotonic()))
        self.changed.set()

    def at(self, what: str) -> float:
        return dict(self.seen)[what]

    async def until(self, what: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while what not in dict(self.seen):
                self.changed.clear()
                await self.changed.wait()


class StopTimes(Observer):
    """Puts each server's stop on the timeline: ``grpc stop began``, ``gateway stop ended``."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def server_stop_began(self, server: str, in_flight: int | None) -> None:
        self.timeline.add(f"{server} stop began")

    def server_stop_ended(self, server: str, in_flight: int | None, cut: Sequence[str]) -> None:
        self.timeline.add(f"{server} stop ended")


def store_app(
    servicer: Bookstore, timeline: Timeline, stop_timeout: float | None = None
) -> tuple[App, GatewayServer]:
    grpc_server = GRPCServer(lambda: bookstore_server(servicer), port=0)
    gateway = GatewayServer("grpc", port=0, access_log=False, stop_timeout=stop_timeout)
    # The gateway first: the order of declaration must not matter, depends_on decides.
    app = App(name="store", servers=[gateway, grpc_server], stop_timeout=10)
    app.lifecycle.observers.add(StopTimes(timeline))
    return app, gateway


async def refused(url: str) -> bool:
    host, _, port = url.removeprefix("http://").rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_gateway_drains_its_requests_then_the_grpc_server_stops() -> None:
    servicer, timeline = Bookstore(), Timeline()
    app, gateway = store_app(servicer, timeline)
    async with running(app), httpx.AsyncClient(base_url=gateway.endpoints()[0]) as client:
        url = gateway.endpoints()[0]
        slow = asyncio.create_task(client.get(f"/v1/shelves/1/books/{SLEEPY + 600}"))
        async with asyncio.timeout(5):
            await servicer.sleeping.wait()
        app.stop("test")
        await timeline.until("gateway stop began")
        # The gateway's listener closed at once: the kernel refuses, nothing is forwarded.
        assert await refused(url)
        # Its in-flight request still waits on its call, which the gRPC server still serves.
        assert "grpc stop began" not in dict(timeline.seen)
        answer = await slow
        assert answer.status_code == 200, answer.text
        assert answer.json()["name"] == f"shelves/1/books/{SLEEPY + 600}"
    report = app.report
    assert report.exit_code == ExitCode.OK, report.to_text()
    assert timeline.at("grpc stop began") >= timeline.at("gateway stop ended")
    assert servicer.cancelled.is_set() is False
    stop_servers = report.step("stop_servers")
    assert [w.split()[1] for w in stop_servers.waited_for] == ["gateway", "grpc"]
    assert stop_servers.waited_for[0] == "server gateway (1 in flight)"


async def test_gateway_request_cut_at_its_stop_timeout_is_named_and_its_call_cancelled() -> None:
    servicer, timeline = Bookstore(), Timeline()
    app, gateway = store_app(servicer, timeline, stop_timeout=0.3)
    book = SLEEPY + 20_000
    async with running(app), httpx.AsyncClient(base_url=gateway.endpoints()[0]) as client:
        stuck = asyncio.create_task(client.get(f"/v1/shelves/1/books/{book}"))
        async with asyncio.timeout(5):
            await servicer.sleeping.wait()
        began = time.monotonic()
        app.stop("test")
        async with asyncio.timeout(5):
            await servicer.cancelled.wait()  # the call went with the cut request
        cut_after = time.monotonic() - began
        await timeline.until("grpc stop ended")
        stuck.cancel()
    assert 0.2 <= cut_after < 0.3 + 1.0
    report = app.report
    assert report.exit_code == ExitCode.INCOMPLETE, report.to_text()
    (cut,) = report.step("stop_servers").cut
    assert cut.startswith(f"server gateway: request GET /v1/shelves/1/books/{book} from "), cut
    assert timeline.at("grpc stop began") >= timeline.at("gateway stop ended")


async def test_gateway_seed_scenario_sigterm_under_load(service: Start) -> None:
    """20 closed-loop clients, a 300 ms call, SIGTERM with drain_delay=1: all served, exit 0."""
    svc = service(MODULE, "seed")
    match = await asyncio.to_thread(svc.wait_for, r"EVENT ready (http://\S+) ")
    url = match.group(1) + f"/v1/shelves/1/books/{SLEEPY + 300}"
    sent_signal = asyncio.get_running_loop().create_future()
    results: list[tuple[float, int | str]] = []
    enough = asyncio.Event()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            while not (sent_signal.done() and time.monotonic() > sent_signal.result() + 3):
                began = time.monotonic()
                try:
                    answer = await http.get(url)
                except httpx.ConnectError:  # the listener closed: the kernel refused
                    results.append((began, "refused"))
                    return
                except httpx.HTTPError as exc:
                    results.append((began, type(exc).__name__))
                    return
                results.append((began, answer.status_code))
                if len(results) >= 40:
                    enough.set()

    clients = [asyncio.create_task(client()) for _ in range(20)]
    async with asyncio.timeout(15):
        await enough.wait()  # every client went round twice, or so, before the signal
    sent = svc.signal(signal.SIGTERM)
    sent_signal.set_result(sent)
    async with asyncio.timeout(15):
        await asyncio.gather(*clients)
    code = await asyncio.to_thread(svc.wait)
    assert code == 0, svc.output
    before = [status for began, status in results if began < sent]
    assert before, results
    assert set(before) == {200}, before
    assert any(status == 200 for began, status in results if began > sent), "served in the drain"
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 1.0 + 0.3 + 1.5, "drain delay + the call + a margin"
    events = dict(svc.events())
    assert events["grpc-stop-begin"] >= events["gateway-stop-end"] >= events["gateway-stop-begin"]
    stop_servers = svc.phase("stop_servers")
    assert stop_servers["outcome"] == "ok", stop_servers
    assert stop_servers["cut"] == []
    assert [w.split()[1] for w in stop_servers["waited_for"]] == ["gateway", "grpc"]
