"""The gateway's errors and how a gRPC status becomes an HTTP answer.

::

    QuiesceError
    └── GatewayError        a request the gateway answers with an error body
        ├── NoRoute         404: no route matches the path
        ├── WrongMethod     405: routes match the path, not with this method (``allowed``)
        └── BadRequest      400: the path, query or body does not make the request message

The status table and the body ``{"code", "message", "details"}`` are
grpc-gateway's (``runtime.HTTPStatusFromCode``, ``DefaultHTTPErrorHandler``):
``code`` is the gRPC code's number, ``details`` the ``google.protobuf.Any``
details of a rich status in JSON (``{"@type": ..., ...}``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from quiesce.errors import QuiesceError
from quiesce.gateway.descriptors import pool_of

__all__ = [
    "BadRequest",
    "GatewayError",
    "NoRoute",
    "WrongMethod",
    "error_body",
    "http_status",
    "status_details",
]

_S = grpc.StatusCode
# runtime.HTTPStatusFromCode; anything not listed (UNKNOWN, INTERNAL, DATA_LOSS) is 500.
_HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    _S.OK: 200,
    _S.CANCELLED: 499,  # nginx's "client closed request": the caller gave up
    _S.INVALID_ARGUMENT: 400,
    _S.FAILED_PRECONDITION: 400,
    _S.OUT_OF_RANGE: 400,
    _S.UNAUTHENTICATED: 401,
    _S.PERMISSION_DENIED: 403,
    _S.NOT_FOUND: 404,
    _S.ALREADY_EXISTS: 409,
    _S.ABORTED: 409,
    _S.RESOURCE_EXHAUSTED: 429,
    _S.UNIMPLEMENTED: 501,
    _S.UNAVAILABLE: 503,
    _S.DEADLINE_EXCEEDED: 504,
}
_BY_NAME = {code.name: code for code in grpc.StatusCode}
# Where a server puts a google.rpc.Status with details (grpc's "rich error model").
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class GatewayError(QuiesceError):
    """A request the gateway answers itself, with ``status`` and an error body.

    ``code`` is the gRPC status name the body carries (grpc-gateway's choice for
    each HTTP status), ``message`` the text for the caller.
    """

    status: int = 500
    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        """The JSON error body for this error."""
        return error_body(self.code, self.message)


class NoRoute(GatewayError):
    """No route matches the request's path (404)."""

    status = 404
    code = "NOT_FOUND"


class WrongMethod(GatewayError):
    """Routes match the path, none with the request's method (405).

    ``allowed`` lists the methods that would match, sorted: the ``Allow`` header.
    """

    status = 405
    code = "UNIMPLEMENTED"  # grpc-gateway's code for 405 (its status stays 405)

    def __init__(self, message: str, allowed: Iterable[str]) -> None:
        super().__init__(message)
        self.allowed: tuple[str, ...] = tuple(sorted(set(allowed)))


class BadRequest(GatewayError):
    """The path, query or body cannot make the request message (400).

    The message names the field.
    """

    status = 400
    code = "INVALID_ARGUMENT"


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC status, as grpc-gateway's ``HTTPStatusFromCode``."""
    return _HTTP_STATUS.get(code, 500)


def error_body(
    code: str | int | grpc.StatusCode, message: str, details: Sequence[Any] = ()
) -> bytes:
    """The JSON error body ``{"code": <number>, "message": ..., "details": [...]}``.

    ``code`` is a gRPC status: its name (``"NOT_FOUND"``), number or
    :class:`grpc.StatusCode`. Each of ``details`` is a protobuf message
    (``google.protobuf.Any`` as grpc-gateway prints it) or a JSON-ready value.

    Raises:
        ValueError: ``code`` is a name that is not a gRPC status.

    """
    document = {
        "code": _code_number(code),
        "message": message,
        "details": [_detail_json(d) for d in details],
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def status_details(trailing_metadata: Iterable[Any] | None) -> list[Any]:
    """The ``google.protobuf.Any`` details of a rich status in a call's trailing metadata.

    ``trailing_metadata`` is what ``AioRpcError.trailing_metadata()`` gives:
    ``(key, value)`` pairs (or items with ``key`` and ``value``). Empty if the
    server sent no details, or details that do not parse: the status code and
    message still make the answer.
    """
    # googleapis-common-protos ships no type information.
    from google.rpc import status_pb2  # type: ignore[import-untyped]

    for item in trailing_metadata or ():
        key, value = item if isinstance(item, tuple) else (item.key, item.value)
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # a malformed trailer costs the details, not the answer
                return []
            return list(status.details)
    return []


def _code_number(code: str | int | grpc.StatusCode) -> int:
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    if isinstance(code, int):
        return code
    try:
        return int(_BY_NAME[code].value[0])
    except KeyError:
        raise ValueError(f"not a gRPC status code: {code!r}") from None


def _detail_json(detail: Any) -> Any:
    if not isinstance(detail, Message):
        return detail
    try:
        return json_format.MessageToDict(detail, descriptor_pool=pool_of(detail))
    except (TypeError, json_format.Error):
        # An Any whose type neither pool knows: still shown, as its type and bytes.
        if isinstance(detail, any_pb2.Any):
            return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}
        raise
