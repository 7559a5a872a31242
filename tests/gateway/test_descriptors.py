"""Methods from the default pool, or from a real upstream's reflection into a fresh pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from conftest import free_ports
from gateway.proto import bookstore_pb2
from quiesce.gateway.descriptors import (
    REFLECTION_METHOD,
    field_path,
    find_method,
    load_from_reflection,
    message_classes,
    split_rpc,
)
from quiesce.gateway.routes import routes_from_service

SERVICE = "bookstore.Bookstore"
GET_BOOK = f"/{SERVICE}/GetBook"


@pytest.mark.parametrize(
    ("rpc", "parts"),
    [
        ("/bookstore.Bookstore/GetBook", ("bookstore.Bookstore", "GetBook")),
        ("bookstore.Bookstore/GetBook", ("bookstore.Bookstore", "GetBook")),
        ("/Svc/M_1", ("Svc", "M_1")),
    ],
)
def test_split_rpc_accepts_with_or_without_slash(rpc: str, parts: tuple[str, str]) -> None:
    assert split_rpc(rpc) == parts


@pytest.mark.parametrize("rpc", ["", "/", "Svc", "/a.b", "/a..b/M", "/a/b/c", "/a/1M", "a b/M"])
def test_split_rpc_bad_name_raises(rpc: str) -> None:
    with pytest.raises(ValueError, match="not a gRPC method name"):
        split_rpc(rpc)


def test_find_method_in_default_pool() -> None:
    method = find_method(GET_BOOK)
    assert method is not None
    assert method.full_name == "bookstore.Bookstore.GetBook"
    request_class, reply_class = message_classes(method)
    assert request_class(shelf=1) == bookstore_pb2.GetBookRequest(shelf=1)
    assert reply_class.DESCRIPTOR.full_name == "bookstore.Book"


@pytest.mark.parametrize("rpc", ["/bookstore.Bookstore/Nope", "/bookstore.Nope/GetBook"])
def test_find_method_unknown_is_none(rpc: str) -> None:
    assert find_method(rpc) is None
    assert find_method(GET_BOOK, descriptor_pool.DescriptorPool()) is None


def test_field_path_by_proto_or_json_names() -> None:
    request = bookstore_pb2.DESCRIPTOR.message_types_by_name["ListBooksRequest"]
    assert [f.name for f in field_path(request, "author.name")] == ["author", "name"]
    assert [f.name for f in field_path(request, "pageSize")] == ["page_size"]
    with pytest.raises(KeyError, match="has no field 'nope'"):
        field_path(request, "author.nope")
    with pytest.raises(ValueError, match="'co_authors' is repeated"):
        field_path(request, "co_authors.name")
    with pytest.raises(ValueError, match="'page_size' is not a message"):
        field_path(request, "page_size.x")


# --- reflection, against real grpc.aio servers on loopback


@asynccontextmanager
async def serving(setup: Callable[[grpc.aio.Server], None]) -> AsyncIterator[str]:
    server = grpc.aio.server()
    setup(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _grpcio_reflection(server: grpc.aio.Server) -> None:
    reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME], server)


async def test_load_from_reflection_fills_a_fresh_pool() -> None:
    pool = descriptor_pool.DescriptorPool()
    assert find_method(GET_BOOK, pool) is None
    async with serving(_grpcio_reflection) as target, grpc.aio.insecure_channel(target) as channel:
        assert await load_from_reflection(channel, SERVICE, pool, timeout=10) is True
    method = find_method(GET_BOOK, pool)
    assert method is not None
    assert method.input_type.file.pool is pool
    assert method.input_type is not bookstore_pb2.GetBookRequest.DESCRIPTOR
    request_class, _ = message_classes(method)
    # Another pool's class, the same wire format.
    sent = request_class(shelf=3, book=4).SerializeToString()
    assert bookstore_pb2.GetBookRequest.FromString(sent) == bookstore_pb2.GetBookRequest(
        shelf=3, book=4
    )
    # The annotations came along: the routes read from the fresh pool are the same.
    reflected = routes_from_service(pool.FindServiceByName(SERVICE))
    assert reflected == routes_from_service(bookstore_pb2.DESCRIPTOR.services_by_name["Bookstore"])


async def test_load_from_reflection_unknown_service_is_false() -> None:
    pool = descriptor_pool.DescriptorPool()
    async with serving(_grpcio_reflection) as target, grpc.aio.insecure_channel(target) as channel:
        assert await load_from_reflection(channel, "bookstore.Nope", pool, timeout=10) is False


async def test_load_from_reflection_without_reflection_service_is_false() -> None:
    pool = descriptor_pool.DescriptorPool()
    async with serving(lambda server: None) as target, grpc.aio.insecure_channel(target) as channel:
        assert await load_from_reflection(channel, SERVICE, pool, timeout=10) is False


class OneFileEach:
    """A reflection service that answers with one file each time, as servers other than grpcio's."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def info(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        default = descriptor_pool.Default()
        async for request in requests:
            if request.HasField("file_containing_symbol"):
                self.asked.append(request.file_containing_symbol)
                file = default.FindFileContainingSymbol(request.file_containing_symbol)
            else:
                self.asked.append(request.file_by_filename)
                file = default.FindFileByName(request.file_by_filename)
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            yield reflection_pb2.ServerReflectionResponse(
                original_request=request,
                file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                    file_descriptor_proto=[proto.SerializeToString()]
                ),
            )

    def setup(self, server: grpc.aio.Server) -> None:
        service, method = split_rpc(REFLECTION_METHOD)
        handler = grpc.stream_stream_rpc_method_handler(
            self.info,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )


async def test_load_from_reflection_asks_for_each_missing_dependency() -> None:
    upstream = OneFileEach()
    pool = descriptor_pool.DescriptorPool()
    async with serving(upstream.setup) as target, grpc.aio.insecure_channel(target) as channel:
        assert await load_from_reflection(channel, SERVICE, pool, timeout=10) is True
    assert upstream.asked[0] == SERVICE
    # bookstore.proto's imports and theirs (annotations.proto: http.proto, descriptor.proto).
    assert set(upstream.asked[1:]) >= {
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/protobuf/descriptor.proto",
        "google/protobuf/empty.proto",
        "google/protobuf/timestamp.proto",
    }
    assert len(upstream.asked) == len(set(upstream.asked))  # no file asked twice
    assert find_method(GET_BOOK, pool) is not None


async def test_load_from_reflection_pool_that_has_it_dials_nothing() -> None:
    pool = descriptor_pool.DescriptorPool()
    _add_with_dependencies(pool, bookstore_pb2.DESCRIPTOR)
    # Nothing listens there: any call would fail.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_ports(1)[0]}") as channel:
        assert await load_from_reflection(channel, SERVICE, pool, timeout=10) is True


def _add_with_dependencies(pool: descriptor_pool.DescriptorPool, file: Any) -> None:
    for dep in file.dependencies:
        _add_with_dependencies(pool, dep)
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())


async def test_load_from_reflection_upstream_down_raises_unavailable() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_ports(1)[0]}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await load_from_reflection(channel, SERVICE, descriptor_pool.DescriptorPool(), 10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_load_from_reflection_silent_upstream_times_out() -> None:
    never = asyncio.Event()  # the upstream never answers; its stop cancels the handler

    async def info(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await never.wait()
        yield None  # pragma: no cover - never reached

    def setup(server: grpc.aio.Server) -> None:
        service, method = split_rpc(REFLECTION_METHOD)
        handler = grpc.stream_stream_rpc_method_handler(info)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )

    pool = descriptor_pool.DescriptorPool()
    async with serving(setup) as target, grpc.aio.insecure_channel(target) as channel:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(TimeoutError):
            await load_from_reflection(channel, SERVICE, pool, timeout=0.3)
        assert loop.time() - began < 5  # bounded by the timeout, with a wide margin
    assert find_method(GET_BOOK, pool) is None
