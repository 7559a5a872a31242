"""Load stories for the HTTP server (marked slow: run with QUIESCE_SLOW=1)."""

from __future__ import annotations

import asyncio
import resource
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from conftest import Service

# Every test on both engines: the same guarantees (issue 14).
pytestmark = pytest.mark.usefixtures("service_engine")

MODULE = "tests.scenarios.http_service"
Start = Callable[..., Service]


def started(service: Start, port: int, *args: str) -> Service:
    svc = service(MODULE, "load", str(port), *args)
    svc.wait_for("READY")
    return svc


async def get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send one keep-alive GET on a new connection; return the stream and the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    return reader, writer, status


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """The rest of a response after its status line: headers, then a content-length body."""
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return await reader.readexactly(length)


@pytest.fixture(autouse=True)
def many_files() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@pytest.mark.slow
def test_thousand_requests_in_flight_at_sigterm_all_succeed(service: Start, free_port: int) -> None:
    svc = started(service, free_port)
    n = 1000

    async def scenario() -> list[bytes]:
        async def one() -> bytes:
            reader, writer, status = await get(free_port, "/slow?s=2")
            body = await read_response(reader)
            writer.close()
            return status.split(b" ", 2)[1] + b" " + body

        requests = [asyncio.create_task(one()) for _ in range(n)]
        async with httpx.AsyncClient() as probe:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until the server holds every request
                count = int((await probe.get(f"http://127.0.0.1:{free_port}/in-flight")).text)
                if count >= n:
                    break
                await asyncio.sleep(0.05)
            assert count >= n, f"only {count} requests reached the server"
        svc.signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.gather(*requests), 30)

    outcomes = asyncio.run(scenario())
    assert outcomes == [b"200 slow done"] * n
    assert svc.wait(30) == 0, svc.output[-2000:]


@pytest.mark.slow
def test_ten_thousand_idle_keepalive_connections_close_within_a_second(
    service: Start, free_port: int
) -> None:
    svc = started(service, free_port)
    n = 10_000

    async def scenario() -> float:
        Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]

        async def one() -> Conn:
            reader, writer, status = await get(free_port, "/")
            assert status.startswith(b"HTTP/1.1 200")
            await read_response(reader)
            return reader, writer

        conns: list[Conn] = []
        for batch in range(0, n, 500):  # stay under the listen backlog
            conns += await asyncio.gather(*(one() for _ in range(min(500, n - batch))))
        svc.signal(signal.SIGTERM)

        async def closed(reader: asyncio.StreamReader) -> float:
            assert await reader.read() == b""
            return time.monotonic()

        try:
            ends = await asyncio.wait_for(asyncio.gather(*(closed(r) for r, _ in conns)), 30)
        finally:
            for _, writer in conns:
                writer.close()
        return max(ends)

    last_closed = asyncio.run(scenario())
    assert svc.wait(30) == 0, svc.output[-2000:]
    report = svc.report()
    listener_closed = report["stop_began"] + svc.phase("stop_servers")["offset"]
    assert last_closed - listener_closed < 1.0
