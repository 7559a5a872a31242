"""Ready time of HTTP + gRPC in one App against the slower of the two alone (goal <= 1.10x).

(a) Three kinds, each an ``App`` timed in-process from ``serve()`` to ``app.ready``:
``HTTPServer`` alone (a trivial ASGI app with a lifespan, httptools), a
``GRPCServer`` alone (a factory building a grpc.aio server with one echo
method, the health service on) and both together, which start concurrently.
Each round then checks that every server answers and stops the app (not
timed). The loop is uvloop when installed, as in ``App.run()``. One warm-up
round (imports, grpc's first init) is not counted; the kinds alternate round
by round, the order rotating.

(b) As (a), but each start also waits: the ASGI lifespan startup sleeps 50 ms
and the gRPC factory is async and sleeps 80 ms. Here concurrency shows: the
pair should take the slower's time, where in (a) there is nothing to overlap
(both starts are synchronous work on the one event loop thread).

(c) The same three as processes (``App.run()``), from spawning the interpreter
to every port accepting: imports included, which (a) and (b) leave out and which
add up rather than overlap (uvicorn and grpc are imported one after the other).

Run: ``python bench/ready_time.py [rounds]`` (default: 100 (a), 10 (b), 6 (c) rounds).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from stop_targets import Receive, Scope, Send, asgi_app, grpc_echo_server
from stoptime import free_port

from quiesce import App
from quiesce.servers.asgi import HTTPServer
from quiesce.servers.grpc import GRPCServer

SERVICE = "bench.Echo"
TARGET = str(Path(__file__).with_name("stop_targets.py"))
Build = Callable[[], list[HTTPServer | GRPCServer]]


def http() -> HTTPServer:
    return HTTPServer(asgi_app, port=0, http="httptools", access_log=False)


def grpc_server() -> GRPCServer:
    return GRPCServer(grpc_echo_server, port=0)


KINDS: dict[str, Build] = {
    "http": lambda: [http()],
    "grpc": lambda: [grpc_server()],
    "http+grpc": lambda: [http(), grpc_server()],
}

#: (b): what each start waits for (an ASGI lifespan startup, an async gRPC factory).
HTTP_WAIT = 0.05
GRPC_WAIT = 0.08


async def waiting_app(scope: Scope, receive: Receive, send: Send) -> None:
    """:func:`stop_targets.asgi_app` whose lifespan startup waits :data:`HTTP_WAIT` s."""
    if scope["type"] != "lifespan":
        return await asgi_app(scope, receive, send)
    await receive()  # lifespan.startup
    await asyncio.sleep(HTTP_WAIT)
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    await send({"type": "lifespan.shutdown.complete"})


async def waiting_grpc_server() -> grpc.aio.Server:
    await asyncio.sleep(GRPC_WAIT)
    return grpc_echo_server()


def waiting_http() -> HTTPServer:
    return HTTPServer(waiting_app, port=0, http="httptools", access_log=False)


def waiting_grpc() -> GRPCServer:
    return GRPCServer(waiting_grpc_server, port=0)


WAITING_KINDS: dict[str, Build] = {
    "http": lambda: [waiting_http()],
    "grpc": lambda: [waiting_grpc()],
    "http+grpc": lambda: [waiting_http(), waiting_grpc()],
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


def report(times: dict[str, list[float]], rounds: int) -> None:
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    for name, samples in times.items():
        print(
            f"{name:>14}: median {medians[name] * 1e3:7.2f} ms "
            f"(min {min(samples) * 1e3:.2f} max {max(samples) * 1e3:.2f})"
        )
    slower = max(medians["http"], medians["grpc"])
    summed = medians["http"] + medians["grpc"]
    print(
        f"    http+grpc / slower alone: {medians['http+grpc'] / slower:.2f} (goal <= 1.10); "
        f"/ sum of both: {medians['http+grpc'] / summed:.2f}  ({rounds} rounds, alternating)"
    )


async def alternate(kinds: dict[str, Build], rounds: int) -> None:
    names = list(kinds)
    for name in names:  # warm-up, not counted
        await once(kinds[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(await once(kinds[name]))
    report(times, rounds)


async def in_process(rounds: int, waiting_rounds: int) -> None:
    print("(a) in-process, App.serve() -> app.ready; both starts are CPU only, on one loop")
    await alternate(KINDS, rounds)
    print(
        f"(b) in-process, starts that wait: lifespan startup {HTTP_WAIT * 1e3:.0f} ms, "
        f"async gRPC factory {GRPC_WAIT * 1e3:.0f} ms"
    )
    await alternate(WAITING_KINDS, waiting_rounds)


def run_in_process(rounds: int, waiting_rounds: int) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(in_process(rounds, waiting_rounds))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(in_process(rounds, waiting_rounds))


#: The children of (b), from ``stop_targets.py``: only what each kind needs gets imported.
TARGETS = {"http": "quiesce-http", "grpc": "quiesce-grpc", "http+grpc": "quiesce-http+grpc"}


def spawn_to_ready(kind: str, timeout: float = 20.0) -> float:
    """Seconds from spawning a ``stop_targets.py`` child to every one of its ports accepting."""
    ports = [free_port() for _ in kind.split("+")]
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, TARGET, TARGETS[kind], *map(str, reversed(ports))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        waiting = list(ports)
        while waiting and time.perf_counter() - began < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited early with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2):
                    waiting.pop(0)
            except OSError:
                time.sleep(0.001)
        if waiting:
            raise RuntimeError(f"{kind}: nothing listens on {waiting} after {timeout}s")
        return time.perf_counter() - began
    finally:
        proc.kill()
        proc.wait()


def processes(rounds: int) -> None:
    print("(c) processes, spawn -> every port accepting (imports included)")
    names = list(KINDS)
    spawn_to_ready("http+grpc")  # warm the page cache, not counted
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(spawn_to_ready(name))
    report(times, rounds)


if __name__ == "__main__":
    import logging

    logging.disable(logging.INFO)  # the app logs every phase; keep the output to the numbers
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else None
    run_in_process(rounds or 100, rounds or 10)
    processes(rounds or 6)
