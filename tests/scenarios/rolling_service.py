"""One instance of the ``orders`` service, for the rolling restart tests (a real subprocess).

``python -m tests.scenarios.rolling_service NAME REPORT_FILE REGISTRY_URL [DRAIN_DELAY]``,
the drain delay as :func:`quiesce.drain.parse_drain` reads it (``1.0``, ``min=0.5,max=5,idle=0.3``).

An App with an HTTPServer on a free loopback port, registered in the
registry at ``REGISTRY_URL``; every request (GET or POST, any path) is
answered with the instance id after a short await, so that requests are in
flight when the stop begins. Prints ``READY <instance id>`` once registered.
"""

from __future__ import annotations

import asyncio
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from quiesce import App
from quiesce.drain import parse_drain
from quiesce.servers.asgi import HTTPServer
from scenarios.events import say

#: The drain delay unless argv says otherwise: far above the discovery latency
#: (etcd pushes the delete within milliseconds, the file registry polls).
DRAIN_DELAY = 1.0
#: How long each request takes in the handler.
WORK = 0.002


def main() -> None:
    name, report_file, url = sys.argv[1], sys.argv[2], sys.argv[3]
    drain_delay = parse_drain(sys.argv[4]) if len(sys.argv) > 4 else DRAIN_DELAY
    app = App(
        name="orders",
        id=name,
        servers=[],
        registry=url,
        drain_delay=drain_delay,
        stop_timeout=10.0,
        report_file=report_file,
    )

    async def answer(request: Request) -> PlainTextResponse:
        await request.body()
        await asyncio.sleep(WORK)
        return PlainTextResponse(app.id)

    api = Starlette(routes=[Route("/{path:path}", answer, methods=["GET", "POST"])])
    app.add_server(HTTPServer(api, port=0, access_log=False))

    @app.after_start
    def ready() -> None:
        say(f"READY {app.id}")

    app.run()


if __name__ == "__main__":
    main()
