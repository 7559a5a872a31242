"""Ready time of HTTP + gRPC in one App against the slower of the two alone (goal <= 1.10x).

Three kinds, each an ``App`` timed in-process from ``serve()`` to ``app.ready``:
``HTTPServer`` alone (a trivial ASGI app with a lifespan, httptools), a
``GRPCServer`` alone (a factory building a grpc.aio server with one echo
method, the health service on) and both together, which start concurrently.
Each round then checks that every server answers and stops the app (not
timed). The loop is uvloop when installed, as in ``App.run()``. One warm-up
round (imports, grpc's first init) is not counted; the kinds alternate round
by round, the order rotating.

Run: ``python bench/ready_time.py [rounds]`` (default 100).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable

import grpc
from stop_targets import asgi_app

from quiesce import App
from quiesce.servers.asgi import HTTPServer
from quiesce.servers.grpc import GRPCServer

SERVICE = "bench.Echo"
Build = Callable[[], list[HTTPServer | GRPCServer]]


async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def build_grpc() -> grpc.aio.Server:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),)
    )
    return server


def http() -> HTTPServer:
    return HTTPServer(asgi_app, port=0, http="httptools", access_log=False)


def grpc_server() -> GRPCServer:
    return GRPCServer(build_grpc, port=0)


KINDS: dict[str, Build] = {
    "http": lambda: [http()],
    "grpc": lambda: [grpc_server()],
    "http+grpc": lambda: [http(), grpc_server()],
}


async def http_ready(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        status = (await reader.readline()).split()[1]
        assert status == b"200", status
    finally:
        writer.close()


async def grpc_answers(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await channel.unary_unary(f"/{SERVICE}/Echo", None, None)(b"x", timeout=5) == b"x"


async def once(build: Build) -> float:
    servers = build()
    app = App(name="bench", servers=servers)
    began = time.perf_counter()
    serving = asyncio.create_task(app.serve())
    try:
        async with asyncio.timeout(10):
            await app.ready
        took = time.perf_counter() - began
        for server in servers:
            if isinstance(server, HTTPServer):
                await http_ready(server.port)
            else:
                await grpc_answers(server.port)
    finally:
        app.stop("bench round done")
        await serving
    return took


async def main(rounds: int) -> None:
    names = list(KINDS)
    for name in names:  # warm-up, not counted
        await once(KINDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(await once(KINDS[name]))
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    for name, samples in times.items():
        print(
            f"{name:>10}: median {medians[name] * 1e3:6.2f} ms "
            f"(min {min(samples) * 1e3:.2f} max {max(samples) * 1e3:.2f})"
        )
    slower = max(medians["http"], medians["grpc"])
    summed = medians["http"] + medians["grpc"]
    print(
        f"http+grpc / slower alone: {medians['http+grpc'] / slower:.2f} (goal <= 1.10); "
        f"/ sum of both: {medians['http+grpc'] / summed:.2f}  ({rounds} rounds, alternating)"
    )


def run(rounds: int) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(rounds))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(rounds))


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)  # the app logs every phase; keep the output to the numbers
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
