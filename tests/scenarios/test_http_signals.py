"""The HTTP server under real signals: drain, in-flight requests, WebSockets, bad starts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
import websockets

from conftest import Service, check_port_in_use_fails_start

# Every test on both engines: the same guarantees (issue 14).
pytestmark = pytest.mark.usefixtures("service_engine")

MODULE = "tests.scenarios.http_service"
WARM_UP = 200  # successful requests before the signal
BIG = 20 * 1024 * 1024  # the size of /big
Start = Callable[..., Service]


def started(service: Start, case: str, port: int, *args: str) -> Service:
    svc = service(MODULE, case, str(port), *args)
    svc.wait_for("READY")
    return svc


@dataclass
class Outcome:
    sent: float
    done: float
    error: str | None = None
    connection: str | None = None


async def hammer(
    url: str,
    clients: int,
    stop: asyncio.Event,
    results: list[Outcome],
    seconds: float,
    warm: asyncio.Event,
) -> None:
    """``clients`` keep-alive clients, each with its own connection, in a loop until refused.

    One httpx client per worker: a shared pool would queue requests in the client,
    and a request waiting there has not been sent to the server at all.
    """

    async def one() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    response = await client.get(url)
                except httpx.TransportError as exc:
                    results.append(Outcome(sent, time.monotonic(), type(exc).__name__))
                    if stop.is_set():
                        return
                    continue
                error = None if response.status_code == 200 else str(response.status_code)
                results.append(
                    Outcome(sent, time.monotonic(), error, response.headers.get("connection"))
                )
                if len(results) >= WARM_UP:
                    warm.set()

    await asyncio.gather(*(one() for _ in range(clients)))


async def until_in_flight(client: httpx.AsyncClient, base: str, count: int) -> None:
    """Until the server counts ``count`` requests in flight (its own count; bounded)."""
    async with asyncio.timeout(5):
        while (await client.get(f"{base}/in-flight")).text != str(count):  # noqa: ASYNC110 - the server's count is the event; bounded by the timeout
            await asyncio.sleep(0.01)


async def first_not_ready(url: str, seconds: float) -> float | None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                response = await client.get(url, headers={"connection": "close"})
            except httpx.TransportError:
                return None
            if response.status_code == 503:
                return time.monotonic()
            await asyncio.sleep(0.01)
    return None


def test_keepalive_clients_lose_nothing_through_drain(service: Start, free_port: int) -> None:
    drain = 1.0
    svc = started(service, "drain", free_port, str(drain))
    base = f"http://127.0.0.1:{free_port}"
    results: list[Outcome] = []

    async def scenario() -> tuple[float, float | None]:
        stop, warm = asyncio.Event(), asyncio.Event()
        load = asyncio.create_task(hammer(base + "/", 50, stop, results, 8.0, warm))
        await asyncio.wait_for(warm.wait(), 10)  # clients up, keep-alive connections in use
        signalled = svc.signal(signal.SIGTERM)
        stop.set()
        not_ready = await first_not_ready(base + "/readyz", seconds=3.0)
        await asyncio.wait_for(load, timeout=15)
        return signalled, not_ready

    signalled, not_ready = asyncio.run(scenario())
    assert svc.wait() == 0, svc.output
    assert not_ready is not None, "/readyz never answered 503 during the drain"
    report = svc.report()
    drain_phase = svc.phase("drain")
    drain_began = report["stop_began"] + drain_phase["offset"]
    drain_ended = drain_began + drain_phase["duration"]
    assert drain_ended - drain_began >= drain * 0.95
    assert drain_began <= not_ready <= drain_ended
    before = [r for r in results if r.sent < signalled]
    assert before
    assert all(r.error is None for r in before), [r for r in before if r.error][:5]
    # During the drain delay requests still succeed, and say Connection: close. Judged by
    # requests that began and ended within it: on a busy machine a client loop may begin
    # a request well before it reaches the server (which may be after the drain).
    during = [r for r in results if drain_began < r.sent and r.done < drain_ended]
    assert during
    assert all(r.error is None for r in during), [r for r in during if r.error][:5]
    assert all(r.connection == "close" for r in during)
    # Failures only once the drain is over, and only because nothing listens any more.
    failed = [r for r in results if r.error is not None]
    assert failed, "clients ended by being refused"
    # Judged by when each failed, not when the client began it (as above).
    assert all(r.done >= drain_ended for r in failed), [r for r in failed if r.done < drain_ended]
    assert {r.error for r in failed} <= {"ConnectError", "ReadError", "RemoteProtocolError"}
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", free_port)) != 0


def test_request_in_flight_at_sigterm_gets_its_200(service: Start, free_port: int) -> None:
    svc = started(service, "in_flight", free_port)

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(timeout=10.0) as client:
            base = f"http://127.0.0.1:{free_port}"
            request = asyncio.create_task(client.get(f"{base}/slow?s=3"))
            await until_in_flight(client, base, 1)
            svc.signal(signal.SIGTERM)
            return await request

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert response.text == "slow done"
    assert svc.wait() == 0, svc.output


def test_websocket_that_watches_stopping_closes_cleanly(service: Start, free_port: int) -> None:
    svc = started(service, "ws_polite", free_port)

    async def scenario() -> tuple[list[str], int | None]:
        async with websockets.connect(f"ws://127.0.0.1:{free_port}/ws-polite") as ws:
            got = [str(await ws.recv())]
            svc.signal(signal.SIGTERM)
            got.append(str(await asyncio.wait_for(ws.recv(), 5)))
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                return got, closed.rcvd.code if closed.rcvd else None
        return got, None

    messages, code = asyncio.run(scenario())
    assert messages == ["hello", "bye"]
    assert code == 1000
    assert svc.wait() == 0, svc.output


def test_websocket_that_ignores_stopping_is_closed_1001_and_reported(
    service: Start, free_port: int
) -> None:
    svc = started(service, "ws_stubborn", free_port, "0", "1.0")

    async def scenario() -> tuple[int | None, float]:
        async with websockets.connect(f"ws://127.0.0.1:{free_port}/ws-stubborn") as ws:
            assert await ws.recv() == "hello"
            sent = svc.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                return (closed.rcvd.code if closed.rcvd else None), time.monotonic() - sent
        return None, 0.0

    code, after = asyncio.run(scenario())
    assert code == 1001
    assert 0.85 <= after < 2.5  # closed at the 1 s stop timeout (less the lifespan reserve)
    assert svc.wait() == 3, svc.output
    phase = svc.phase("stop_servers")
    assert any("websocket /ws-stubborn" in c for c in phase["cut"]), phase


def test_port_in_use_exits_1_naming_server_and_port(service: Start) -> None:
    check_port_in_use_fails_start(service, MODULE, "busy", "http")


def test_uvicorn_option_of_the_wrong_type_exits_2_with_one_line_before_binding(
    service: Start, free_port: int
) -> None:
    svc = service(MODULE, "bad_option", str(free_port))
    assert svc.wait() == 2, svc.output
    errors = [line for line in svc.lines if "ERROR" in line]
    assert len(errors) == 1, svc.output
    assert errors[0].split("bad configuration: ")[1].startswith("server 'http': ")
    assert "option backlog='x': must be a positive integer" in errors[0]
    assert "Traceback" not in svc.output
    assert svc.report()["start"] == [], "nothing started, nothing bound"


def test_lifespan_startup_failure_exits_1_with_one_line(service: Start, free_port: int) -> None:
    svc = service(MODULE, "bad_lifespan", str(free_port))
    assert svc.wait() == 1, svc.output
    errors = [line for line in svc.lines if "ERROR" in line]
    assert len(errors) == 1, svc.output
    assert "server 'http'" in errors[0]
    assert "database is unreachable" in errors[0]
    assert "Traceback" not in svc.output


async def listener_closed(port: int, seconds: float) -> bool:
    """Whether connecting to ``port`` is refused within ``seconds``: the server's stop began."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        writer.close()
        await asyncio.sleep(0.005)
    return False


def test_websocket_closed_1000_right_after_the_stop_began_stops_at_once(
    service: Start, free_port: int, service_engine: str
) -> None:
    # The defaults: no stop_timeout on the server, the app's 10 s budget.
    svc = started(service, "ws_echo", free_port)

    async def scenario() -> float:
        async with websockets.connect(f"ws://127.0.0.1:{free_port}/ws-echo") as ws:
            assert await ws.recv() == "hello"
            sent = svc.signal(signal.SIGTERM)
            # Close once the server is stopping (uvicorn: its listener is closed), not before;
            # granian keeps its listener until the WebSockets are gone: it says not ready.
            if service_engine == "uvicorn":
                assert await listener_closed(free_port, 5.0)
            else:
                assert await first_not_ready(f"http://127.0.0.1:{free_port}/readyz", 5.0)
            await ws.close(code=1000)
        return sent

    sent = asyncio.run(scenario())
    assert svc.wait() == 0, svc.output
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 1.5, f"exited {svc.exit_time - sent:.2f}s after SIGTERM"
    phase = svc.phase("stop_servers")
    assert phase["outcome"] == "ok", phase
    assert phase["duration"] < 1.0, phase


def stalled_download(port: int) -> socket.socket:
    """Ask for /big on a socket with a small receive buffer; return once its first byte is in.

    The app writes the body in one go right after the headers, so from here on the
    response is complete for the app and sits in the server's buffer.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nhost: test\r\n\r\n")
    assert sock.recv(1, socket.MSG_PEEK)
    return sock


def body_received(sock: socket.socket) -> int:
    data = bytearray()
    with contextlib.suppress(ConnectionResetError), sock:
        while chunk := sock.recv(1 << 16):
            data += chunk
    return len(bytes(data).partition(b"\r\n\r\n")[2])


def check_big_response_cut(svc: Service, port: int, engine: str) -> None:
    sock = stalled_download(port)
    svc.signal(signal.SIGTERM)
    code = svc.wait()
    received = body_received(sock)  # the client reads only once the process is gone
    assert received < BIG
    assert code == 3, svc.output
    cut = svc.phase("stop_servers")["cut"]
    if engine == "granian":  # what its Rust side still writes has no Python handle
        assert "server http: connections granian still had open at the timeout [abandoned]" in cut
        return
    assert any(
        "response GET /big to 127.0.0.1:" in c and f"[cut: {BIG - received} bytes unsent]" in c
        for c in cut
    ), cut


def test_big_response_to_a_stalled_reader_is_named_as_cut_and_exits_3(
    service: Start, free_port: int, service_engine: str
) -> None:
    svc = started(service, "big", free_port, "0", "1.0")
    check_big_response_cut(svc, free_port, service_engine)


def test_big_response_cut_on_the_default_path_names_the_connection(
    service: Start, free_port: int, service_engine: str
) -> None:
    # No stop_timeout on the server: it gets what is left of the app's 2 s budget.
    svc = started(service, "big", free_port, "0", "none", "2.0")
    check_big_response_cut(svc, free_port, service_engine)


def test_big_response_read_during_the_stop_is_delivered_whole(
    service: Start, free_port: int
) -> None:
    svc = started(service, "big", free_port)
    sock = stalled_download(free_port)
    svc.signal(signal.SIGTERM)
    assert body_received(sock) == BIG
    assert svc.wait() == 0, svc.output
    assert svc.phase("stop_servers")["outcome"] == "ok"
