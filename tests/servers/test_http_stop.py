"""HTTPServer.stop() on a real uvicorn (or granian): WebSockets that leave, responses buffered."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from quiesce import App, ExitCode, HTTPServer, Outcome
from quiesce.servers.uvicorn_engine import NEW_CONNECTION_GRACE
from quiesce.servers.uvicorn_parts import ConnectionSet

# The WebSocket implementations uvicorn 0.54 can serve here. Its deprecated legacy one,
# ws="websockets", fails every handshake on websockets 14+ (its handler lacks "path").
WS_IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]
BIG = 20 * 1024 * 1024


async def echo_until_closed(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def big(request: Request) -> Response:
    return Response(b"x" * BIG, media_type="application/octet-stream")


api = Starlette(routes=[WebSocketRoute("/ws", echo_until_closed), Route("/big", big)])


class Observed(HTTPServer):
    """The real HTTPServer, saying when its stop begins (the client closes right then)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_began = asyncio.Event()

    async def stop(self, timeout: float) -> list[str]:
        self.stop_began.set()
        return await super().stop(timeout)


async def closes_right_after_stop_begins(server: Observed, connected: asyncio.Event) -> None:
    url = server.endpoints()[0].replace("http", "ws") + "/ws"
    async with websockets.connect(url) as ws:
        assert await ws.recv() == "hello"
        connected.set()
        await server.stop_began.wait()
        await ws.close(code=1000)


@pytest.mark.parametrize("ws", WS_IMPLEMENTATIONS)
async def test_stop_websocket_closed_1000_after_stop_began_ends_at_once(ws: str) -> None:
    server = Observed(api, port=0, ws=ws, access_log=False)
    server.check()
    await server.start()
    connected = asyncio.Event()
    client = asyncio.create_task(closes_right_after_stop_begins(server, connected))
    await asyncio.wait_for(connected.wait(), 5)
    began = time.monotonic()
    async with asyncio.timeout(12):
        cut = await server.stop(10.0)
    took = time.monotonic() - began
    await asyncio.wait_for(client, 5)
    assert cut == []
    assert took < 1.5, f"stop took {took:.2f}s of a 10 s budget with no connection left"


async def test_stop_websocket_closed_1000_with_default_timeouts_is_ok_at_once(
    engine: str,
) -> None:
    # The defaults: no stop_timeout on the server or for the app's servers, ws="auto".
    server = Observed(api, port=0, access_log=False, engine=engine)
    app = App(name="svc", servers=[server], stop_timeout=10.0)

    async def drive() -> None:
        await app.ready
        connected = asyncio.Event()
        client = asyncio.create_task(closes_right_after_stop_begins(server, connected))
        await asyncio.wait_for(connected.wait(), 5)
        app.stop()
        await client

    driver = asyncio.create_task(drive())
    async with asyncio.timeout(15):
        report = await app.serve()
    await driver
    (phase,) = [r for r in report.stop if r.name == "stop_servers"]
    assert phase.outcome is Outcome.OK, phase
    assert phase.duration < 1.5, f"stop_servers took {phase.duration:.2f}s of 10 s"
    assert report.exit_code == ExitCode.OK


def isub(s: ConnectionSet, other: set[object]) -> None:
    s -= other


def iand(s: ConnectionSet, other: set[object]) -> None:
    s &= other


def ixor(s: ConnectionSet, other: set[object]) -> None:
    s ^= other


@pytest.mark.parametrize(
    "leave",
    [
        lambda s, c: s.remove(c),
        lambda s, c: s.discard(c),
        lambda s, c: s.pop(),
        lambda s, c: s.clear(),
        lambda s, c: s.difference_update([c]),
        lambda s, c: s.intersection_update([]),
        lambda s, c: s.symmetric_difference_update([c]),
        lambda s, c: isub(s, {c}),
        lambda s, c: iand(s, set()),
        lambda s, c: ixor(s, {c}),
    ],
    ids=[
        "remove",
        "discard",
        "pop",
        "clear",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
        "-=",
        "&=",
        "^=",
    ],
)
async def test_connection_set_any_way_out_wakes_the_stop(
    leave: Callable[[ConnectionSet, object], object],
) -> None:
    connections = ConnectionSet()
    connection = object()
    connections.add(connection)
    waiter = asyncio.create_task(connections.wait_empty())
    await asyncio.sleep(0)
    assert not waiter.done()
    leave(connections, connection)
    await asyncio.wait_for(waiter, 1)
    assert len(connections) == 0


class BigSent:
    """A 20 MB response, with an event once the app has handed all of it to uvicorn."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(BIG).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * BIG})
        self.sent.set()


def slow_client(port: int) -> socket.socket:
    """A client with a small receive buffer that asked for /big and reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nhost: test\r\n\r\n")
    return sock


def read_all(sock: socket.socket) -> int:
    """Read until the server closes (or resets) the connection; the body bytes received."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError), sock:
        while chunk := sock.recv(1 << 16):
            data += chunk
    _, _, body = bytes(data).partition(b"\r\n\r\n")
    return len(body)


async def test_stop_response_still_buffered_at_the_timeout_is_named_as_cut() -> None:
    app = BigSent()
    server = HTTPServer(app, port=0, access_log=False, lifespan="off")
    server.check()
    await server.start()
    sock = slow_client(server.port)
    await asyncio.wait_for(app.sent.wait(), 5)  # complete for the app, buffered for the client
    began = time.monotonic()
    async with asyncio.timeout(5):
        cut = await server.stop(0.5)
    took = time.monotonic() - began
    received = await asyncio.to_thread(read_all, sock)
    assert received < BIG
    (line,) = cut
    assert line.startswith("response GET /big to 127.0.0.1:"), line
    unsent = int(line.split("[cut: ")[1].split()[0])
    assert unsent == BIG - received  # the kernel delivers what it holds; the buffer is lost
    assert took < 0.5 + 0.5


async def test_stop_response_read_within_the_budget_is_delivered_whole(engine: str) -> None:
    app = BigSent()
    server = HTTPServer(app, port=0, access_log=False, lifespan="off", engine=engine)
    server.check()
    await server.start()
    sock = slow_client(server.port)
    await asyncio.wait_for(app.sent.wait(), 5)
    reader = asyncio.create_task(asyncio.to_thread(read_all, sock))
    async with asyncio.timeout(15):
        cut = await server.stop(10.0)
    assert cut == []
    assert await asyncio.wait_for(reader, 5) == BIG


async def hello(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_a_connection_accepted_just_before_the_stop_still_gets_its_answer(
    http: str,
) -> None:
    # A client connected as the stop began: its request is on its way. Closing the
    # connection as idle loses that request; like Go's Shutdown, a new connection gets
    # a moment to send it, and its answer says Connection: close.
    server = HTTPServer(hello, port=0, http=http, lifespan="off", access_log=False)
    await server.start()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        async with asyncio.timeout(5):
            # Accepted by the server (a few loop turns after the client's connect), no
            # request yet: no event says so, so the count is polled, bounded.
            while not server._connections:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        stopping = asyncio.create_task(server.stop(5.0))
        # One turn: the stop runs up to its first wait, having closed the listener and
        # shut the idle connections (all of it synchronous).
        await asyncio.sleep(0)
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()  # until the server closes it, after the answer
        cut = await stopping
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert b"connection: close" in head.lower(), answer
    assert body == b"hello"
    assert cut == []


async def test_a_new_connection_that_never_sends_is_closed_after_its_grace() -> None:
    server = HTTPServer(hello, port=0, lifespan="off", access_log=False)
    await server.start()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        async with asyncio.timeout(5):
            while not server._connections:  # noqa: ASYNC110  (as above)
                await asyncio.sleep(0.001)
        began = time.monotonic()
        cut = await server.stop(10.0)
        took = time.monotonic() - began
        assert await reader.read() == b""  # closed, without an answer: nothing was asked
    finally:
        writer.close()
    assert cut == []
    assert NEW_CONNECTION_GRACE <= took < NEW_CONNECTION_GRACE + 0.5


async def test_granian_stop_with_a_response_still_buffered_names_what_it_abandons() -> None:
    # granian writes the response from Rust: Python cannot abort it, nor count its bytes.
    app = BigSent()
    server = HTTPServer(app, port=0, access_log=False, lifespan="off", engine="granian")
    server.check()
    await server.start()
    sock = slow_client(server.port)
    await asyncio.wait_for(app.sent.wait(), 5)
    began = time.monotonic()
    async with asyncio.timeout(5):
        cut = await server.stop(0.5)
    took = time.monotonic() - began
    sock.close()
    assert cut == ["connections granian still had open at the timeout [abandoned]"]
    assert took < 0.5 + 0.5
