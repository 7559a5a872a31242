"""What the observability tests share.

An observer they wait on, a route that holds requests in flight, and serving
an app beside a driver.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from quiesce import App, HTTPServer, Report
from quiesce.observe import Observer
from quiesce.phases import PhaseRecord

#: Bound on every wait for an event of the run.
WAIT = 5.0


class Held:
    """A route whose requests wait until released: work in flight, on demand."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def route(self, request: Request) -> PlainTextResponse:
        self.entered.set()
        await self.release.wait()
        return PlainTextResponse("done")

    def server(self, *, stop_timeout: float | None = None) -> HTTPServer:
        """An HTTP server on a free port whose ``/held`` is this route."""
        api = Starlette(routes=[Route("/held", self.route)])
        return HTTPServer(api, port=0, stop_timeout=stop_timeout, access_log=False)

    async def stop_with_one_in_flight(
        self, app: App, server: HTTPServer, client: httpx.AsyncClient
    ) -> asyncio.Task[httpx.Response]:
        """Once ``app`` is ready, send ``server`` a held request; once it is in, stop ``app``."""
        await app.ready
        request = asyncio.create_task(client.get(server.endpoints()[0] + "/held"))
        async with asyncio.timeout(WAIT):
            await self.entered.wait()
        app.stop()
        return request


class Watch(Observer):
    """Records what the App tells its observers, in order, and lets a test await each."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self._seen: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def _saw(self, event: str) -> None:
        self.events.append(event)
        self._seen[event].set()

    async def until(self, event: str) -> None:
        """Until ``event`` happened (``"step_began stop drain"``, ``"server_stop_began http"``)."""
        async with asyncio.timeout(WAIT):
            await self._seen[event].wait()

    def step_began(self, kind: str, step: str) -> None:
        self._saw(f"step_began {kind} {step}")

    def server_stop_began(self, server: str, in_flight: int | None) -> None:
        self._saw(f"server_stop_began {server}")

    def server_stop_ended(self, server: str, in_flight: int | None, cut: Sequence[str]) -> None:
        self._saw(f"server_stop_ended {server}")

    def step_ended(self, kind: str, record: PhaseRecord) -> None:
        self._saw(f"step_ended {kind} {record.name}")


async def serve_while(app: App, drive: Callable[[], Awaitable[None]]) -> Report:
    """Serve ``app`` while ``drive()`` runs beside it; a failing drive stops the app and raises."""

    async def driven() -> None:
        try:
            await drive()
        except BaseException:
            app.stop("the test's driver failed")
            raise

    driver = asyncio.create_task(driven())
    async with asyncio.timeout(4 * WAIT):
        report = await app.serve()
    await driver
    return report
