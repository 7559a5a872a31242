"""Where the gateway finds a method's descriptor: the default pool, else the upstream's reflection.

The generated ``_pb2`` modules an application imports fill protobuf's default
pool, so most methods are found there without a dial. When the pool lacks a
service, :func:`load_from_reflection` asks the upstream's
``grpc.reflection.v1alpha.ServerReflection`` (grpcio-reflection) for the file
that defines it and the files that file depends on, and adds them to a pool.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2

__all__ = [
    "REFLECTION_METHOD",
    "field_path",
    "find_method",
    "load_from_reflection",
    "message_classes",
    "pool_of",
    "reflection_call",
    "split_rpc",
]

logger = logging.getLogger(__name__)

REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
_RPC = re.compile(
    r"/?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)/([A-Za-z_][A-Za-z0-9_]*)\Z"
)


class _File(NamedTuple):
    proto: descriptor_pb2.FileDescriptorProto
    raw: bytes  # as sent: what the pool is given


def split_rpc(rpc: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` (the leading slash optional) as ``("pkg.Service", "Method")``.

    Raises:
        ValueError: ``rpc`` is not of that form.

    """
    m = _RPC.match(rpc)
    if m is None:
        raise ValueError(f"not a gRPC method name (expected '/package.Service/Method'): {rpc!r}")
    return m.group(1), m.group(2)


def find_method(
    rpc: str, pool: descriptor_pool.DescriptorPool | None = None
) -> MethodDescriptor | None:
    """The descriptor of ``rpc`` (``"/pkg.Service/Method"``) in ``pool`` (default: protobuf's).

    None if the pool has no such service or the service no such method.

    Raises:
        ValueError: ``rpc`` is not a method name.

    """
    service_name, method_name = split_rpc(rpc)
    pool = descriptor_pool.Default() if pool is None else pool
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        return None
    return service.methods_by_name.get(method_name)


def message_classes(method: MethodDescriptor) -> tuple[type[Message], type[Message]]:
    """The request and reply classes of ``method``, from whichever pool holds it."""
    return (
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def field_path(message: Descriptor, path: str) -> tuple[FieldDescriptor, ...]:
    """The fields along ``path`` (``"book.author.name"``), each named as in .proto or in JSON.

    Raises:
        KeyError: a name along the path is not a field (the message names it).
        ValueError: a field before the last is repeated or not a message.

    """
    fields: list[FieldDescriptor] = []
    current = message
    names = path.split(".")
    for i, name in enumerate(names):
        field = current.fields_by_name.get(name) or _by_json_name(current, name)
        if field is None:
            raise KeyError(f"{current.full_name} has no field {name!r}")
        fields.append(field)
        if i < len(names) - 1:
            if field.is_repeated or field.message_type is None:
                kind = "repeated" if field.is_repeated else "not a message"
                raise ValueError(f"{'.'.join(names[: i + 1])!r} is {kind}")
            current = field.message_type
    return tuple(fields)


def pool_of(message: Message) -> descriptor_pool.DescriptorPool:
    """The pool that holds ``message``'s type (where an Any inside it is looked up)."""
    return cast(descriptor_pool.DescriptorPool, message.DESCRIPTOR.file.pool)


def _by_json_name(message: Descriptor, name: str) -> FieldDescriptor | None:
    for field in message.fields:
        if field.json_name == name:
            return field
    return None


async def load_from_reflection(
    channel: grpc.aio.Channel,
    service: str,
    pool: descriptor_pool.DescriptorPool,
    timeout: float = 5.0,
) -> bool:
    """Add the file defining ``service`` (and its dependencies) to ``pool``, from the upstream.

    Asks the upstream's v1alpha ``ServerReflection`` over ``channel``; files the
    pool already has (by name) are kept. True if ``pool`` now has ``service``;
    False if the upstream serves no reflection, does not know the service or
    cannot give every file it needs (logged).

    Raises:
        TimeoutError: the exchange did not finish within ``timeout`` seconds (default 5).
        grpc.aio.AioRpcError: the call failed otherwise (UNAVAILABLE: not up yet).
        TypeError: a file conflicts with one already in ``pool`` (protobuf's error).

    """
    if _has_service(pool, service):
        return True
    call = reflection_call(channel, timeout)
    try:
        async with asyncio.timeout(timeout):
            files = await _fetch_files(call, service, pool)
            await call.done_writing()
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            logger.info("the upstream serves no reflection: %s is unknown", service)
            return False
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError(f"reflection for {service} took over {timeout} s") from exc
        raise
    finally:
        call.cancel()
    if files is None:
        logger.info("the upstream's reflection does not know %s", service)
        return False
    for file in _dependencies_first(files):
        if not _has_file(pool, file.proto.name):
            pool.AddSerializedFile(file.raw)
    return _has_service(pool, service)


def reflection_call(
    channel: grpc.aio.Channel, timeout: float, requests: Iterator[Any] | None = None
) -> grpc.aio.StreamStreamCall[Any, Any]:
    """A v1alpha ``ServerReflectionInfo`` stream on ``channel``, within ``timeout``.

    ``requests`` are sent as they are; without them the caller writes the stream.
    """
    method = channel.stream_stream(
        REFLECTION_METHOD,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return method(requests, timeout=timeout)


async def _fetch_files(
    call: grpc.aio.StreamStreamCall[Any, Any],
    service: str,
    pool: descriptor_pool.DescriptorPool,
) -> dict[str, _File] | None:
    """The files ``service`` needs that ``pool`` lacks; None if reflection cannot give them all."""
    files: dict[str, _File] = {}
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    while True:
        await call.write(request)
        reply = await call.read()
        if not isinstance(reply, reflection_pb2.ServerReflectionResponse):  # EOF
            logger.warning("the upstream's reflection ended the stream before answering")
            return None
        if reply.HasField("error_response"):
            asked = request.file_by_filename or service
            logger.warning(
                "the upstream's reflection has no %s: %s", asked, reply.error_response.error_message
            )
            return None
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.setdefault(proto.name, _File(proto, raw))
        # Servers differ: grpcio sends the transitive dependencies at once, others
        # one file per answer; ask for each dependency neither side has yet.
        wanted = sorted(
            dep
            for file in files.values()
            for dep in file.proto.dependency
            if dep not in files and not _has_file(pool, dep)
        )
        if not wanted:
            return files
        request = reflection_pb2.ServerReflectionRequest(file_by_filename=wanted[0])


def _dependencies_first(files: dict[str, _File]) -> list[_File]:
    ordered: list[_File] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in files:
            return
        seen.add(name)  # imports cannot be cyclic: protoc refuses them
        for dep in files[name].proto.dependency:
            visit(dep)
        ordered.append(files[name])

    for name in sorted(files):
        visit(name)
    return ordered


def _has_service(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    return _found(pool.FindServiceByName, name)


def _has_file(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    return _found(pool.FindFileByName, name)


def _found(find: Callable[[str], object], name: str) -> bool:
    try:
        find(name)
    except KeyError:  # the pools' way of saying "not here"
        return False
    return True
