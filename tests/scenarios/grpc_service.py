"""A gRPC service for the scenario tests, run as a real subprocess.

``python -m tests.scenarios.grpc_service CASE REPORT_FILE [PORT]``. It prints
``EVENT <what> <monotonic time>`` lines that the tests read, among them
``EVENT ready grpc://127.0.0.1:<port> <time>`` once the app is ready.

The test service (``quiesce.test.Echo``) is built with
``grpc.method_handlers_generic_handler`` and raw bytes, so no generated
code is needed: ``Sleep`` takes a number of seconds, sleeps that long and
answers with the same bytes; ``Feed`` streams ``first`` and then never ends.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable

import grpc

from quiesce import App
from quiesce.servers.grpc import GRPCServer
from scenarios.events import event

SERVICE = "quiesce.test.Echo"
SLEEP = f"/{SERVICE}/Sleep"
FEED = f"/{SERVICE}/Feed"


async def sleep(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    seconds = float(request.decode())
    event(f"sleep-begin {seconds:g}")
    await asyncio.sleep(seconds)
    event(f"sleep-end {seconds:g}")
    return request


async def feed(
    request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    yield b"first"
    event("feed-waiting")
    await asyncio.Event().wait()  # ignores app.stopping: only the stop's cut ends it


def echo_handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    """The test service as a generic handler: bytes in, bytes out."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Feed": grpc.unary_stream_rpc_method_handler(feed),
        },
    )


def build() -> grpc.aio.Server:
    """A fresh ``grpc.aio.Server`` with the test service added."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_handler(),))
    return server


class ProbeGRPC(GRPCServer):
    """A GRPCServer that reports when the app drains and stops it."""

    async def drain(self) -> None:
        await super().drain()
        event("drained")

    async def stop(self, timeout: float) -> list[str]:
        event("stop-begin")
        cut = await super().stop(timeout)
        event("stop-end")
        return cut


def serve(app: App) -> None:
    app.drain_delay = 1.0
    app.servers = [ProbeGRPC(build, port=0)]


def port_in_use(app: App) -> None:
    app.servers = [ProbeGRPC(build, port=int(sys.argv[3]), name="rpc")]


def endless_stream(app: App) -> None:
    # The defaults: no stop_timeout on the server, only the app's (small) budget.
    app.stop_timeout = 2.0
    app.servers = [ProbeGRPC(build, port=0)]


CASES: dict[str, Callable[[App], None]] = {
    f.__name__: f for f in (serve, port_in_use, endless_stream)
}


def main() -> None:
    case, report_file = sys.argv[1], sys.argv[2]
    app = App(name=case, stop_timeout=10.0, report_file=report_file)
    CASES[case](app)

    @app.after_start
    def ready() -> None:
        event(f"ready {app.info.endpoints[0]}")

    app.run()


if __name__ == "__main__":
    main()
