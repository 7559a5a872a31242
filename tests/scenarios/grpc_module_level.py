"""The README's module-level form, run as a real subprocess: the grpc server is built at import.

``python -m tests.scenarios.grpc_module_level HOW REPORT_FILE``, HOW being
``run`` (``app.run()``) or ``asyncio_run`` (``asyncio.run(app.serve())``).
grpc binds a ``grpc.aio.Server`` to the event loop current when it is built,
here the one grpc itself creates at import, before any app loop exists.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from quiesce import App
from quiesce.servers.grpc import GRPCServer
from scenarios.events import event

HOW, REPORT_FILE = sys.argv[1], sys.argv[2]


async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return request


# As a user writes it: built and filled at import, before any loop of the app exists.
server = grpc.aio.server()
server.add_generic_rpc_handlers(
    (
        grpc.method_handlers_generic_handler(
            "quiesce.test.Echo", {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}
        ),
    )
)

app = App(name="orders", servers=[GRPCServer(server, port=0)], report_file=REPORT_FILE)


@app.after_start
def ready() -> None:
    event(f"ready {app.info.endpoints[0]}")


if __name__ == "__main__":
    if HOW == "run":
        app.run()
    report = asyncio.run(app.serve())
    print(report.error, file=sys.stderr)
    sys.exit(report.exit_code)
