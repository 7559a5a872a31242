"""GRPCServer in-process: real grpc.aio servers and real grpc clients on loopback."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiesce import App, ExitCode, Server
from quiesce.errors import ConfigError, StartError
from quiesce.servers.grpc import GRPCServer
from quiesce.servers.stream import StreamServer

SERVICE = "quiesce.test.Echo"
OTHER = "quiesce.test.Other"
SLEEP = f"/{SERVICE}/Sleep"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Sleeper:
    """The test service, bytes in and out: ``Sleep(b"1.5")`` answers after 1.5 s."""

    def __init__(self) -> None:
        self.began = asyncio.Event()

    async def sleep(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.began.set()
        await asyncio.sleep(float(request.decode()))
        return request

    def server(self) -> grpc.aio.Server:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self.sleep)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Sleep": handler}),)
        )
        return server


@pytest.fixture
async def started() -> AsyncIterator[GRPCServer]:
    """A GRPCServer started alone (no app), stopped at the end of the test."""
    server = GRPCServer(Sleeper().server(), port=0)
    await server.start()
    yield server
    await server.stop(0)


def target(server: GRPCServer) -> str:
    return f"127.0.0.1:{server.port}"


async def sleep_call(server: GRPCServer, seconds: str = "0") -> bytes:
    async with grpc.aio.insecure_channel(target(server)) as channel:
        reply: bytes = await channel.unary_unary(SLEEP, None, None)(seconds.encode(), timeout=5)
        return reply


async def check(server: GRPCServer, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target(server)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = reply.status
        return status


async def next_status(watch: Any, timeout: float = 5.0) -> int:
    async with asyncio.timeout(timeout):
        reply = await watch.read()
    status: int = reply.status
    return status


# -- start and endpoints ---------------------------------------------------------


async def test_grpc_port_zero_endpoint_reports_the_real_port(started: GRPCServer) -> None:
    (endpoint,) = started.endpoints()
    assert endpoint == f"grpc://127.0.0.1:{started.port}"
    assert started.port != 0
    assert await sleep_call(started) == b"0"


def sync_factory() -> grpc.aio.Server:
    return Sleeper().server()


async def async_factory() -> grpc.aio.Server:
    await asyncio.sleep(0)
    return Sleeper().server()


@pytest.mark.parametrize("factory", [sync_factory, async_factory], ids=["sync", "async"])
async def test_grpc_factory_builds_the_server_at_start(
    factory: Callable[[], grpc.aio.Server | Awaitable[grpc.aio.Server]],
) -> None:
    server = GRPCServer(factory, port=0)
    await server.start()
    try:
        assert await sleep_call(server) == b"0"
        assert await check(server, SERVICE) == SERVING
    finally:
        assert await server.stop(1) == []


async def test_grpc_factory_returning_a_sync_server_raises_start_error() -> None:
    server = GRPCServer(lambda: grpc.server(None), port=0)  # type: ignore[arg-type,return-value]  # the mistake under test
    with pytest.raises(StartError, match=r"^server 'grpc' failed .*: the factory returned _Server"):
        await server.start()


async def test_grpc_factory_that_raises_raises_start_error_from_it() -> None:
    def broken() -> grpc.aio.Server:
        raise LookupError("no such servicer")

    with pytest.raises(
        StartError, match=r"^server 'grpc' .*: LookupError: no such servicer$"
    ) as info:
        await GRPCServer(broken, port=0).start()
    assert isinstance(info.value.__cause__, LookupError)


@pytest.mark.parametrize("source", [None, "127.0.0.1:50051"], ids=["none", "address"])
async def test_grpc_neither_server_nor_factory_exits_2_with_one_line(source: Any) -> None:
    server = GRPCServer(source)  # the constructor is lenient: the app's validation refuses it
    with pytest.raises(ConfigError):
        server.check()
    report = await App(name="x", servers=[server]).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == (
        f"server 'grpc': {source!r} is neither a grpc.aio.Server nor a factory returning one"
    )


async def test_grpc_port_in_use_raises_start_error_naming_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = GRPCServer(Sleeper().server(), port=port)
        with pytest.raises(StartError) as info:
            await server.start()
    bind = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert str(info.value) == f"server 'grpc' failed to start: {bind}"
    assert await server.stop(1) == []


async def test_grpc_bound_loop_is_the_loop_the_server_was_built_in() -> None:
    assert GRPCServer(Sleeper().server()).bound_loop is asyncio.get_running_loop()
    assert GRPCServer(sync_factory).bound_loop is None


# -- health ----------------------------------------------------------------------


async def test_grpc_health_covers_the_whole_server_and_every_service() -> None:
    grpc_server = Sleeper().server()
    # Generated code (grpcio >= 1.62) also registers its methods this way.
    other = {"Ping": grpc.unary_unary_rpc_method_handler(Sleeper().sleep)}
    grpc_server.add_registered_method_handlers(OTHER, other)  # type: ignore[attr-defined]  # newer than grpc-stubs
    server = GRPCServer(grpc_server, port=0)
    await server.start()
    try:
        assert server.services == ("", SERVICE, OTHER)
        for service in server.services:
            assert await check(server, service) == SERVING
        await server.drain()
        for service in server.services:
            assert await check(server, service) == NOT_SERVING
        assert await sleep_call(server) == b"0", "draining still serves"
    finally:
        await server.stop(1)


async def test_grpc_health_in_app_turns_serving_only_once_the_app_is_ready() -> None:
    gate = asyncio.Event()
    grpc_started = asyncio.Event()

    class Later(StreamServer):
        """Starts after the grpc server and waits for the test: the app is not ready yet."""

        async def start(self) -> None:
            grpc_started.set()
            await gate.wait()
            await super().start()

    async def ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = GRPCServer(Sleeper().server(), port=0)
    app = App(name="svc", servers=[server, Later(ignore, name="later", depends_on=["grpc"])])
    app.drain_delay = 1.0
    serving = asyncio.create_task(app.serve())
    async with asyncio.timeout(5):
        await grpc_started.wait()
    assert await check(server) == NOT_SERVING
    assert await check(server, SERVICE) == NOT_SERVING
    assert await sleep_call(server) == b"0", "bound and serving calls, only not ready"

    async with grpc.aio.insecure_channel(target(server)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert await next_status(watch) == NOT_SERVING
        gate.set()
        assert await next_status(watch) == SERVING
        assert await check(server, SERVICE) == SERVING

        stop_sent = time.monotonic()
        app.stop("test")
        assert await next_status(watch) == NOT_SERVING
        assert time.monotonic() - stop_sent < 0.5, "flipped at the stop, not after the drain delay"
        assert await check(server, SERVICE) == NOT_SERVING
        assert await sleep_call(server) == b"0", "the drain delay still serves"
        report = await asyncio.wait_for(serving, 5)
        assert await watch.code() == grpc.StatusCode.OK, "the stop ended the watch cleanly"
    assert report.exit_code == ExitCode.OK, report.to_text()


async def test_grpc_health_false_registers_no_health_service() -> None:
    server = GRPCServer(Sleeper().server(), port=0, health=False)
    await server.start()
    try:
        assert server.health is None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await check(server)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(1)


async def test_grpc_server_with_its_own_health_service_raises_start_error() -> None:
    grpc_server = Sleeper().server()
    health_pb2_grpc.add_HealthServicer_to_server(health_pb2_grpc.HealthServicer(), grpc_server)
    server = GRPCServer(grpc_server, port=0)
    with pytest.raises(StartError, match=r"^server 'grpc' failed .*: pass health=False"):
        await server.start()


# -- stop ------------------------------------------------------------------------


async def serving_a_call(seconds: str) -> tuple[GRPCServer, asyncio.Future[bytes]]:
    """A started server with a ``Sleep(seconds)`` call that it has begun handling."""
    sleeper = Sleeper()
    server = GRPCServer(sleeper.server(), port=0)
    await server.start()
    in_flight = asyncio.ensure_future(sleep_call(server, seconds))
    async with asyncio.timeout(5):
        await sleeper.began.wait()
    return server, in_flight


async def test_grpc_stop_lets_an_in_flight_call_finish_and_refuses_new_ones() -> None:
    server, in_flight = await serving_a_call("0.5")
    began = time.monotonic()
    assert await server.stop(5) == []
    assert 0.4 <= time.monotonic() - began < 2.0, "stop waits for the call, not for the grace"
    assert await in_flight == b"0.5"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await sleep_call(server)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_grpc_stop_names_each_call_cut_at_the_grace_with_method_and_peer() -> None:
    server, in_flight = await serving_a_call("10")
    began = time.monotonic()
    (cut,) = await server.stop(0.3)
    assert 0.25 <= time.monotonic() - began < 1.5
    assert re.fullmatch(
        rf"call {SLEEP} from ipv4:127\.0\.0\.1:\d+ cancelled at the 0\.3s grace", cut
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await in_flight


async def test_grpc_forced_stop_names_the_calls_it_cancels() -> None:
    server, in_flight = await serving_a_call("10")
    (cut,) = await server.stop(0)
    assert re.fullmatch(
        rf"call {SLEEP} from ipv4:127\.0\.0\.1:\d+ cancelled at once \(no grace\)", cut
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await in_flight


async def test_grpc_stop_ends_health_watches_instead_of_waiting_the_grace(
    started: GRPCServer,
) -> None:
    async with grpc.aio.insecure_channel(target(started)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert await next_status(watch) == SERVING
        await started.drain()
        assert await next_status(watch) == NOT_SERVING
        began = time.monotonic()
        assert await started.stop(5) == []
        assert time.monotonic() - began < 1.0
        assert await watch.code() == grpc.StatusCode.OK


async def test_grpc_cancelled_wait_closed_does_not_break_the_stop() -> None:
    # The app cancels its wait_closed() watcher as the stop begins; grpc's own
    # termination future must survive that, or stop() fails at once.
    sleeper = Sleeper()
    server = GRPCServer(sleeper.server(), port=0)
    await server.start()
    watcher = asyncio.create_task(server.wait_closed())
    await asyncio.sleep(0)
    watcher.cancel()
    in_flight = asyncio.ensure_future(sleep_call(server, "0.3"))
    async with asyncio.timeout(5):
        await sleeper.began.wait()
    assert await server.stop(5) == []
    assert await in_flight == b"0.3"


# -- long-lived calls in an app --------------------------------------------------


def streaming_app(ends_on_stopping: bool, stop_timeout: float) -> tuple[App, GRPCServer]:
    """An app whose ``Feed`` stream sends ``first``, then waits (for ``app.stopping`` or ever)."""
    app = App(name="svc")

    async def feed(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        yield b"first"
        if ends_on_stopping:
            await app.stopping
            yield b"bye"
        else:
            await asyncio.Event().wait()

    grpc_server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(feed)
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Feed": handler}),)
    )
    server = GRPCServer(grpc_server, port=0, stop_timeout=stop_timeout)
    app.add_server(server)
    return app, server


async def test_grpc_stream_that_ends_on_app_stopping_is_not_cut() -> None:
    app, server = streaming_app(ends_on_stopping=True, stop_timeout=5)
    serving = asyncio.create_task(app.serve())
    async with asyncio.timeout(5):
        await app.ready
    async with grpc.aio.insecure_channel(target(server)) as channel:
        stream = channel.unary_stream(f"/{SERVICE}/Feed", None, None)(b"")
        assert await stream.read() == b"first"
        app.stop("test")
        assert await stream.read() == b"bye"
        assert await stream.code() == grpc.StatusCode.OK
        report = await asyncio.wait_for(serving, 5)
    assert report.exit_code == ExitCode.OK, report.to_text()


async def test_grpc_stream_ignoring_app_stopping_is_cut_at_the_grace_and_reported() -> None:
    app, server = streaming_app(ends_on_stopping=False, stop_timeout=0.3)
    serving = asyncio.create_task(app.serve())
    async with asyncio.timeout(5):
        await app.ready
    async with grpc.aio.insecure_channel(target(server)) as channel:
        stream = channel.unary_stream(f"/{SERVICE}/Feed", None, None)(b"")
        assert await stream.read() == b"first"
        began = time.monotonic()
        app.stop("test")
        report = await asyncio.wait_for(serving, 5)
        assert time.monotonic() - began < 0.3 + 1.0
        assert await stream.code() != grpc.StatusCode.OK
    assert report.exit_code == ExitCode.INCOMPLETE, report.to_text()
    (stop_servers,) = [r for r in report.stop if r.name == "stop_servers"]
    (cut,) = stop_servers.cut
    assert re.fullmatch(
        rf"server grpc: call /{SERVICE}/Feed from ipv4:\S+ cancelled at the 0\.3s grace", cut
    )


def test_grpc_server_implements_the_server_protocol() -> None:
    server: Server = GRPCServer(sync_factory)  # mypy checks the shape, isinstance the members
    assert isinstance(server, Server)


def test_grpc_ipv6_endpoint_is_bracketed() -> None:
    assert GRPCServer(sync_factory, host="::1", port=5).endpoints() == ["grpc://[::1]:5"]


async def test_bad_grpc_port_exits_2_naming_server_and_option() -> None:
    report = await App(name="svc", servers=[GRPCServer(sync_factory, port=-1)]).serve()
    assert report.exit_code == ExitCode.CONFIG
    assert report.error == "server 'grpc': port=-1: must be an integer from 0 to 65535"


@pytest.mark.parametrize(
    ("kind", "registered"),
    [("unary_unary", True), ("unary_stream", False), ("stream_stream", False)],
    ids=["registered-unary", "generic-writer-stream", "generic-bidi-stream"],
)
async def test_grpc_stop_names_cut_calls_of_every_handler_kind(kind: str, registered: bool) -> None:
    began = asyncio.Event()

    async def reply(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        began.set()
        await asyncio.Event().wait()
        return request

    async def writer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        await context.write(b"first")  # the reader-writer style: a coroutine, no generator
        began.set()
        await asyncio.Event().wait()

    async def chat(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request
            began.set()
            await asyncio.Event().wait()

    behaviour = {"unary_unary": reply, "unary_stream": writer, "stream_stream": chat}[kind]
    handlers = {"Stuck": getattr(grpc, f"{kind}_rpc_method_handler")(behaviour)}
    grpc_server = grpc.aio.server()
    if registered:  # as generated code (grpcio >= 1.62) adds its methods
        grpc_server.add_registered_method_handlers(OTHER, handlers)  # type: ignore[attr-defined]  # newer than grpc-stubs
    else:
        generic = grpc.method_handlers_generic_handler(OTHER, handlers)
        grpc_server.add_generic_rpc_handlers((generic,))
    server = GRPCServer(grpc_server, port=0)
    await server.start()
    method = f"/{OTHER}/Stuck"
    async with grpc.aio.insecure_channel(target(server)) as channel:
        call = getattr(channel, kind)(method, None, None)(
            *([] if kind == "stream_stream" else [b"x"])
        )
        async with asyncio.timeout(5):
            if kind == "stream_stream":
                await call.write(b"x")
            if kind != "unary_unary":
                # Read: a client's code() waits behind the messages it has not read.
                assert await call.read() in (b"first", b"x")
            await began.wait()
        (cut,) = await server.stop(0.2)
        assert re.fullmatch(rf"call {method} from ipv4:\S+ cancelled at the 0\.2s grace", cut)
        assert await call.code() != grpc.StatusCode.OK
