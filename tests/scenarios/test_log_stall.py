"""A log stream that stops moving (issue 8): the service and its stop go on. Real subprocesses.

The service's stderr is a pipe that the test never reads, what a stalled log
collector or a blocking container log driver does; uvicorn's access log fills
it within a few hundred requests.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable

import httpx

from conftest import Service
from scenarios.test_http_signals import until_in_flight

HTTP = "tests.scenarios.http_service"
LIFECYCLE = "tests.scenarios.lifecycle"
Start = Callable[..., Service]
REQUESTS = 5000
CLIENTS = 10
#: The app's stop budget in these tests (http_service's BUDGET argument).
BUDGET = 3.0


def logged_service(service: Start, port: int) -> Service:
    # No drain delay, the server's default stop timeout, a 3 s budget, access log on.
    svc = service(HTTP, "logged", str(port), "0", "none", str(BUDGET), stalled_stderr=True)
    svc.wait_for("READY")
    return svc


async def load(port: int) -> tuple[int, int]:
    """REQUESTS requests over CLIENTS keep-alive connections; returns (ok, failed).

    A plain HTTP/1.1 client on asyncio streams: httpx costs ~10x more per request.
    """
    counts = [0, 0]
    left = iter(range(REQUESTS))

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in left:
                writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                try:
                    async with asyncio.timeout(2):  # a stalled server would hold us forever
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = re.search(rb"(?i)content-length: *(\d+)", head)
                        assert length is not None, head
                        await reader.readexactly(int(length.group(1)))
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    counts[1] += 1
                    return
                counts[not head.startswith(b"HTTP/1.1 200 ")] += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return counts[0], counts[1]


def test_stalled_log_stream_serves_every_request_and_stops_clean(
    service: Start, free_port: int
) -> None:
    svc = logged_service(service, free_port)
    ok, failed = asyncio.run(load(free_port))
    assert (ok, failed) == (REQUESTS, 0)
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait(timeout=15) == 0
    assert svc.exit_time is not None
    assert svc.exit_time - sent < BUDGET + 1.5
    report = svc.report()
    assert report["exit_code"] == 0
    # The pipe holds ~64 kB and the queue 1,000 records: most access lines were dropped.
    assert report["log_records_dropped"] > REQUESTS // 2


def test_stalled_log_stream_lets_the_request_in_flight_finish(
    service: Start, free_port: int
) -> None:
    svc = logged_service(service, free_port)
    base = f"http://127.0.0.1:{free_port}"

    async def scenario() -> httpx.Response:
        assert await load(free_port) == (REQUESTS, 0)
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
            slow = asyncio.create_task(http.get("/slow?s=2"))
            await until_in_flight(http, base, 1)
            svc.signal(signal.SIGTERM)
            return await slow

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert response.text == "slow done"
    assert svc.wait(timeout=15) == 0
    assert svc.report()["exit_code"] == 0


def test_blocked_loop_with_a_stalled_log_stream_still_exits_at_the_watchdog(
    service: Start,
) -> None:
    svc = service(LIFECYCLE, "flooded_then_blocked", stalled_stderr=True)
    svc.wait_for(r"EVENT ready ", timeout=15)
    sent = svc.signal(signal.SIGTERM)
    assert svc.wait(timeout=15) == 3
    assert svc.exit_time is not None
    # stop_timeout 1 s + the watchdog's 2 s margin + at most 1 s for its last words.
    assert svc.exit_time - sent < 1.0 + 2.0 + 1.0 + 1.0
    report = svc.report()
    assert "the stop overran stop_timeout=1s (the loop is blocked at " in report["error"]


def normalized_log(svc: Service) -> list[str]:
    """The log lines, timestamps, numbers and the instance id aside."""
    ident = svc.report()["id"]
    lines = []
    for line in svc.lines:
        if line.startswith("EVENT "):
            continue
        line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line)
        lines.append(re.sub(r"\d+(\.\d+)?", "N", line.replace(ident, "ID")))
    return lines


def test_healthy_log_stream_lines_are_the_same_with_and_without_the_queue(
    service: Start,
) -> None:
    logs = []
    for queue in ("1", "0"):
        svc = service(LIFECYCLE, "spawn_task", env={"QUIESCE_TEST_LOG_QUEUE": queue})
        # Signalled once the start has logged its last line: the order after it is fixed.
        svc.wait_for("start ready took=")
        svc.signal(signal.SIGTERM)
        assert svc.wait() == 0, svc.output
        logs.append(normalized_log(svc))
    with_queue, without = logs
    assert with_queue == without
    assert any(line.startswith("INFO quiesce.lifecycle: quiesce report:") for line in without)
    assert len(without) > 15
