"""An HTTP/JSON → gRPC gateway: the mapping (routes, path templates, transcoding, errors).

:mod:`~quiesce.gateway.templates` parses ``google/api/http.proto`` path
templates; :mod:`~quiesce.gateway.routes` builds routes from ``google.api.http``
annotations or an explicit mapping and matches requests against them;
:mod:`~quiesce.gateway.transcode` turns path, query and JSON body into the
request message and the reply into JSON; :mod:`~quiesce.gateway.errors` maps
gRPC statuses to HTTP as grpc-gateway does; :mod:`~quiesce.gateway.descriptors`
finds methods in the default pool or through the upstream's reflection.

Importing it imports grpc and protobuf (the ``quiesce[gateway]`` extra).
"""

from quiesce.gateway.descriptors import (
    find_method,
    load_from_reflection,
    message_classes,
)
from quiesce.gateway.errors import (
    BadRequest,
    GatewayError,
    NoRoute,
    WrongMethod,
    error_body,
    http_status,
    status_details,
)
from quiesce.gateway.routes import (
    Route,
    RouteTable,
    check_route,
    routes_from_mapping,
    routes_from_service,
)
from quiesce.gateway.server import GatewayServer
from quiesce.gateway.templates import PathTemplate
from quiesce.gateway.transcode import request_message, response_json

__all__ = [
    "BadRequest",
    "GatewayError",
    "GatewayServer",
    "NoRoute",
    "PathTemplate",
    "Route",
    "RouteTable",
    "WrongMethod",
    "check_route",
    "error_body",
    "find_method",
    "http_status",
    "load_from_reflection",
    "message_classes",
    "request_message",
    "response_json",
    "routes_from_mapping",
    "routes_from_service",
    "status_details",
]
