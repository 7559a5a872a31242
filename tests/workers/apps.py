"""What the worker tests serve: ``quiesce run workers.apps:<attr> --workers N`` (tests/ on path).

Every app answers with the pid of the worker that served the request, so a
test can tell the workers apart and see them replaced.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

Scope = dict[str, Any]

#: With this variable naming a file that exists, a lifespan startup fails (a bad deploy).
FAIL_IF = "WORKERS_TEST_FAIL_IF"
#: The file each ``/slow`` request adds its worker's pid to as it begins.
SLOW_AT = "WORKERS_TEST_SLOW_AT"
#: The file a worker writes its pid to before it blocks its loop (``/block``).
BLOCKED_AT = "WORKERS_TEST_BLOCKED_AT"


async def pid(scope: Scope, receive: Any, send: Any) -> None:
    """Answer every request with this worker's pid.

    ``/slow`` answers after 5 s; ``/block`` blocks the worker's loop for 60 s.
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        with open(os.environ[SLOW_AT], "a") as marker:  # noqa: ASYNC230  # one line, local
            marker.write(f"{os.getpid()}\n")
        await asyncio.sleep(5)
    if scope["path"] == "/block":
        Path(os.environ[BLOCKED_AT]).write_text(str(os.getpid()))  # noqa: ASYNC240  # tiny
        time.sleep(60)  # noqa: ASYNC251  # the point: a blocking call, the loop cannot run
    body = str(os.getpid()).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            marker = os.environ.get(FAIL_IF)
            if marker and os.path.exists(marker):  # noqa: ASYNC240  # once, at the start
                await send({"type": "lifespan.startup.failed", "message": "the new code is broken"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def grpc_server() -> Any:
    """A bare ``grpc.aio.Server`` (``--grpc workers.apps:grpc_server``): the health service only."""
    import grpc

    return grpc.aio.server()
