"""An HTTP service on the embedded uvicorn (or granian), for the HTTP scenario tests.

``python -m tests.scenarios.http_service CASE REPORT_FILE PORT [DRAIN [STOP_TIMEOUT [BUDGET]]]``.
The engine is ``$QUIESCE_TEST_ENGINE`` (uvicorn by default).

STOP_TIMEOUT is the HTTP server's own (``none``: the default, none of its own);
BUDGET is the app's ``stop_timeout`` (10 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from quiesce import App
from quiesce.servers.asgi import HTTPServer
from scenarios.events import say

case, report_file, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The load tests hold thousands of connections.
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
drain_delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
stop_timeout = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "none" else None
budget = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0
BIG = 20 * 1024 * 1024

app = App(
    name=f"http-{case}", drain_delay=drain_delay, stop_timeout=budget, report_file=report_file
)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("slow done")


async def big(request: Request) -> Response:
    return Response(b"x" * BIG, media_type="application/octet-stream")


async def in_flight(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(http_server.in_flight - 1))  # less this request itself


async def ws_polite(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await app.stopping
    await websocket.send_text("bye")
    await websocket.close(code=1000)


async def ws_echo(websocket: WebSocket) -> None:
    """Echo until the client leaves; ignores app.stopping (the client closes first)."""
    await websocket.accept()
    await websocket.send_text("hello")
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text(await websocket.receive_text())


async def ws_stubborn(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await asyncio.Event().wait()


@asynccontextmanager
async def failing_lifespan(api: Starlette) -> AsyncIterator[None]:
    raise RuntimeError("database is unreachable")
    yield  # pragma: no cover - never reached


routes = [
    Route("/", hello),
    Route("/slow", slow),
    Route("/in-flight", in_flight),
    Route("/big", big),
    WebSocketRoute("/ws-echo", ws_echo),
    WebSocketRoute("/ws-polite", ws_polite),
    WebSocketRoute("/ws-stubborn", ws_stubborn),
]
api = Starlette(routes=routes, lifespan=failing_lifespan if case == "bad_lifespan" else None)
backlog: object = "x" if case == "bad_option" else 4096  # the load tests hold thousands
# The log-stall tests need a log line per request: uvicorn's access log.
access_log = case.startswith("logged")
engine = os.environ.get("QUIESCE_TEST_ENGINE", "uvicorn")
http_server = HTTPServer(
    api, port=port, stop_timeout=stop_timeout, access_log=access_log, backlog=backlog, engine=engine
)
app.add_server(http_server)


@app.after_start
def ready() -> None:
    say("READY")


app.run()
