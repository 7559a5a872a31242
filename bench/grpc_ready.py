"""Ready time of a grpc.aio server through ``GRPCServer`` against plain grpc.aio.

Plain: build the server, ``add_insecure_port``, ``await start()``.
GRPCServer: the same server built by a factory, ``await GRPCServer.start()``
(service discovery, the health service, the bind-error translation).
App: ``App(servers=[GRPCServer(...)])`` from ``serve()`` to ``app.ready``.
Each round then checks that a call is answered and stops the server (not
timed). The kinds alternate round by round in one process.

Run: ``python bench/grpc_ready.py [rounds]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import grpc

from quiesce import App
from quiesce.servers.grpc import GRPCServer

SERVICE = "bench.Echo"


async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def build() -> grpc.aio.Server:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),)
    )
    return server


async def answered(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await channel.unary_unary(f"/{SERVICE}/Echo", None, None)(b"x", timeout=5) == b"x"


async def plain() -> float:
    began = time.perf_counter()
    server = build()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    took = time.perf_counter() - began
    await answered(port)
    await server.stop(None)
    return took


async def adapter() -> float:
    began = time.perf_counter()
    server = GRPCServer(build, port=0)
    await server.start()
    took = time.perf_counter() - began
    await answered(server.port)
    await server.stop(0)
    return took


async def in_app() -> float:
    server = GRPCServer(build, port=0)
    app = App(name="bench", servers=[server])
    began = time.perf_counter()
    serving = asyncio.create_task(app.serve())
    await app.ready
    took = time.perf_counter() - began
    await answered(server.port)
    app.stop("bench round done")
    await serving
    return took


async def main(rounds: int) -> None:
    kinds: dict[str, Callable[[], Awaitable[float]]] = {
        "plain grpc.aio": plain,
        "GRPCServer": adapter,
        "App + GRPCServer": in_app,
    }
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(rounds):
        for name, kind in kinds.items():
            times[name].append(await kind())
    base = statistics.median(times["plain grpc.aio"])
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:18} median {median * 1e3:7.3f} ms  ratio {median / base:5.2f}")
    print(f"({rounds} rounds, alternating)")


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)  # the app logs every phase; keep the output to the numbers
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
