"""gRPC stories, each a real subprocess stopped by a real signal (issue 3, tests 4 and 6)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import Service, check_port_in_use_fails_start
from scenarios.grpc_service import FEED, SLEEP

MODULE = "tests.scenarios.grpc_service"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Start = Callable[..., Service]


async def until(pattern: str, svc: Service, timeout: float = 10.0) -> str:
    """Wait for an output line without blocking the event loop the grpc client runs on."""
    match = await asyncio.to_thread(svc.wait_for, pattern, timeout)
    return match.group(1) if match.groups() else match.group(0)


async def listener_closed(target: str, timeout: float = 2.0) -> None:
    """Wait until connecting to ``target`` is refused.

    grpc closes its listener asynchronously, a few milliseconds after
    ``stop()``; a connection accepted in that window gets CANCELLED, not
    UNAVAILABLE. No event marks the moment, so try connecting until refused.
    """
    host, _, port = target.rpartition(":")
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except ConnectionRefusedError:
                return
            except ConnectionResetError:  # accepted while closing: not closed yet
                await asyncio.sleep(0.002)
                continue
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()
            await asyncio.sleep(0.002)


async def statuses(watch: Any) -> AsyncIterator[tuple[int, float]]:
    async for reply in watch:
        yield reply.status, time.monotonic()


async def test_sigterm_flips_health_finishes_calls_then_refuses(service: Start) -> None:
    svc = service(MODULE, "serve")
    target = await until(r"EVENT ready grpc://(127\.0\.0\.1:\d+) ", svc)
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(SLEEP, None, None)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        seen = statuses(watch)
        async with asyncio.timeout(5):
            # The app's own after_start hook may print "ready" a moment before SERVING.
            while (await anext(seen))[0] != SERVING:
                pass

        in_flight = asyncio.ensure_future(call(b"1", timeout=10))
        await until(r"EVENT sleep-begin 1 ", svc)
        sent = svc.signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            status, flipped = await anext(seen)
        assert status == NOT_SERVING
        # NOT_SERVING at the start of the stop, well before the 1 s drain delay ends.
        assert flipped - sent < 0.5

        # During the drain delay calls still succeed; this one outlasts the delay, so
        # it is in flight when the listener closes and must still get its answer.
        during_drain = asyncio.ensure_future(call(b"2", timeout=10))
        await until(r"EVENT sleep-begin 2 ", svc)
        assert await in_flight == b"1"

        await until(r"EVENT stop-begin ", svc)
        await listener_closed(target)
        # A new client: its own connection, not the subchannel the outer channel shares
        # through grpc's global pool (a stream sent there before the client reads the
        # server's GOAWAY is cancelled by the stopping server, not refused).
        fresh_options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target, options=fresh_options) as fresh:
            try:
                await fresh.unary_unary(SLEEP, None, None)(b"0", timeout=5)
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
            else:
                raise AssertionError("a call after the drain delay was served")
        assert refused == grpc.StatusCode.UNAVAILABLE
        assert svc.proc.poll() is None, "refused by the closed listener, not a dead process"
        assert await during_drain == b"2"

    assert await asyncio.to_thread(svc.wait) == 0, svc.output
    events = dict(svc.events())
    assert events["stop-begin"] - events["drained"] >= 1.0 - 0.05  # after the drain delay
    stop = svc.phase("stop_servers")
    assert stop["outcome"] == "ok"
    assert stop["cut"] == []


def test_port_in_use_exits_1_naming_server_and_port(service: Start) -> None:
    check_port_in_use_fails_start(service, MODULE, "port_in_use", "rpc")


async def test_sigterm_names_the_endless_stream_cut_on_the_defaults(service: Start) -> None:
    # No stop_timeout on the server, stop_timeout=2 on the app: the server's own cut
    # must fire first and name the stream, not the stop_servers step's backstop.
    svc = service(MODULE, "endless_stream")
    target = await until(r"EVENT ready grpc://(127\.0\.0\.1:\d+) ", svc)
    async with grpc.aio.insecure_channel(target) as channel:
        stream = channel.unary_stream(FEED, None, None)(b"")
        assert await stream.read() == b"first"
        await until(r"EVENT feed-waiting ", svc)
        sent = svc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(svc.wait) == 3, svc.output
        assert await stream.code() != grpc.StatusCode.OK
    assert svc.exit_time is not None
    assert svc.exit_time - sent < 2.0 + 1.5, "bounded by the app's stop_timeout"
    stop = svc.phase("stop_servers")
    assert stop["outcome"] == "timeout", stop
    (cut,) = stop["cut"]
    assert re.fullmatch(
        rf"server grpc: call {FEED} from ipv4:127\.0\.0\.1:\d+ cancelled at .*", cut
    )
