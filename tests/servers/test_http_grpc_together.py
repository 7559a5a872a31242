"""HTTP and gRPC servers in one App start concurrently: ready after the slower, not the sum."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
from starlette.applications import Starlette

from quiesce import App, ExitCode, GRPCServer, HTTPServer

SLOW = 0.5


@asynccontextmanager
async def slow_lifespan(api: Starlette) -> AsyncIterator[None]:
    await asyncio.sleep(SLOW)  # e.g. warming a cache before the first request
    yield


async def slow_grpc_factory() -> grpc.aio.Server:
    await asyncio.sleep(SLOW)  # e.g. loading a model before serving
    return grpc.aio.server()


async def test_http_and_grpc_start_concurrently() -> None:
    api = Starlette(lifespan=slow_lifespan)
    app = App(
        name="both",
        servers=[
            HTTPServer(api, port=0, access_log=False),
            GRPCServer(slow_grpc_factory, port=0),
        ],
    )
    began = time.monotonic()
    ready_after: list[float] = []
    probes: list[int] = []

    @app.after_start
    async def check() -> None:
        ready_after.append(time.monotonic() - began)
        http_endpoint = next(e for e in app.info.endpoints if e.startswith("http://"))
        async with httpx.AsyncClient() as client:
            probes.append((await client.get(http_endpoint + "/readyz")).status_code)
        app.stop()

    report = await app.serve()
    assert report.exit_code == ExitCode.OK
    assert probes == [200]
    (took,) = ready_after
    # Each takes SLOW to start: together about SLOW, clearly under the 2 * SLOW of a sequence.
    assert 0.95 * SLOW <= took < 1.6 * SLOW
