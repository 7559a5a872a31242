"""gRPC status → HTTP status as grpc-gateway maps it; the JSON error body, rich-status details."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no stubs

from quiesce.errors import QuiesceError
from quiesce.gateway.errors import (
    BadRequest,
    GatewayError,
    NoRoute,
    WrongMethod,
    error_body,
    http_status,
    status_details,
)

S = grpc.StatusCode

# grpc-gateway's runtime.HTTPStatusFromCode, row by row.
TABLE = [
    (S.OK, 200),
    (S.CANCELLED, 499),
    (S.UNKNOWN, 500),
    (S.INVALID_ARGUMENT, 400),
    (S.DEADLINE_EXCEEDED, 504),
    (S.NOT_FOUND, 404),
    (S.ALREADY_EXISTS, 409),
    (S.PERMISSION_DENIED, 403),
    (S.RESOURCE_EXHAUSTED, 429),
    (S.FAILED_PRECONDITION, 400),
    (S.ABORTED, 409),
    (S.OUT_OF_RANGE, 400),
    (S.UNIMPLEMENTED, 501),
    (S.INTERNAL, 500),
    (S.UNAVAILABLE, 503),
    (S.DATA_LOSS, 500),
    (S.UNAUTHENTICATED, 401),
]


@pytest.mark.parametrize(("code", "status"), TABLE, ids=[c.name for c, _ in TABLE])
def test_http_status_each_row_of_grpc_gateways_table(code: grpc.StatusCode, status: int) -> None:
    assert http_status(code) == status


def test_http_status_table_covers_every_code() -> None:
    assert {code for code, _ in TABLE} == set(grpc.StatusCode)


@pytest.mark.parametrize("code", ["NOT_FOUND", 5, S.NOT_FOUND])
def test_error_body_carries_the_code_number_message_and_details(code: Any) -> None:
    body = json.loads(error_body(code, "no such book"))
    assert body == {"code": 5, "message": "no such book", "details": []}


def test_error_body_is_compact_utf8() -> None:
    assert error_body("INTERNAL", "café") == '{"code":13,"message":"café","details":[]}'.encode()


def test_error_body_unknown_code_name_raises() -> None:
    with pytest.raises(ValueError, match="'NOPE'"):
        error_body("NOPE", "x")


def _violation() -> any_pb2.Any:
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="shelf", description="<0")
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def test_error_body_details_as_grpc_gateway_prints_any() -> None:
    unknown = any_pb2.Any(type_url="type.googleapis.com/no.Such", value=b"\x08\x01")
    body = json.loads(error_body(3, "bad", [_violation(), unknown, {"already": "json"}]))
    assert body["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "shelf", "description": "<0"}],
        },
        {"@type": "type.googleapis.com/no.Such", "value": "CAE="},  # a type no pool knows
        {"already": "json"},
    ]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NoRoute("no route for /x"), 404, 5),
        (WrongMethod("method PUT is not allowed", ["GET"]), 405, 12),
        (BadRequest("query parameter 'x': bad"), 400, 3),
        (GatewayError("broken"), 500, 13),
    ],
)
def test_gateway_errors_have_status_and_grpc_gateways_code(
    error: GatewayError, status: int, code: int
) -> None:
    assert isinstance(error, QuiesceError)
    assert error.status == status
    assert json.loads(error.body()) == {"code": code, "message": error.message, "details": []}
    assert str(error) == error.message


def test_wrong_method_allowed_is_sorted_and_unique() -> None:
    assert WrongMethod("x", ["POST", "GET", "POST"]).allowed == ("GET", "POST")


def _status_bytes() -> bytes:
    status = status_pb2.Status(code=3, message="bad", details=[_violation()])
    return bytes(status.SerializeToString())


class _Item:
    def __init__(self, key: str, value: bytes) -> None:
        self.key, self.value = key, value


def test_status_details_from_metadata_pairs_or_items() -> None:
    pairs = [("x-other", "v"), ("grpc-status-details-bin", _status_bytes())]
    assert [d.type_url for d in status_details(pairs)] == [
        "type.googleapis.com/google.rpc.BadRequest"
    ]
    items = [_Item("grpc-status-details-bin", _status_bytes())]
    assert len(status_details(items)) == 1


@pytest.mark.parametrize(
    "metadata", [None, [], [("x-other", "v")], [("grpc-status-details-bin", b"\xff\xff")]]
)
def test_status_details_none_or_malformed_is_empty(metadata: Any) -> None:
    assert status_details(metadata) == []


@pytest.fixture
async def failing_server() -> AsyncIterator[str]:
    """A real grpc.aio server whose one method fails with a rich INVALID_ARGUMENT status."""

    async def fail(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        context.set_trailing_metadata((("grpc-status-details-bin", _status_bytes()),))
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "shelf must be positive")
        raise AssertionError("abort returns only by raising")

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(fail)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"F": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_rich_status_from_a_real_call_becomes_400_with_details(failing_server: str) -> None:
    async with grpc.aio.insecure_channel(failing_server) as channel:
        call = channel.unary_unary("/t.T/F", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=10)
    exc = caught.value
    details = status_details(exc.trailing_metadata())
    assert http_status(exc.code()) == 400
    body = json.loads(error_body(exc.code(), exc.details() or "", details))
    assert body["code"] == 3
    assert body["message"] == "shelf must be positive"
    assert body["details"][0]["fieldViolations"] == [{"field": "shelf", "description": "<0"}]
