"""Routes: an HTTP method and path template bound to a gRPC method, and the table that matches them.

Routes come from ``google.api.http`` annotations (:func:`routes_from_service`,
``additional_bindings`` included) or from an explicit mapping
(:func:`routes_from_mapping`). :class:`RouteTable` tries the most specific
template first, segment by segment: a literal before ``*``, ``*`` before
``**``, a template with a ``:verb`` before one without; among equals, the
route given first. A path that matches only under other methods is a 405
naming them, a path that matches nothing a 404.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2  # type: ignore[import-untyped]  # no type information
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor

from quiesce.gateway.descriptors import field_path, split_rpc
from quiesce.gateway.errors import NoRoute, WrongMethod
from quiesce.gateway.templates import PathTemplate, SegmentKind

__all__ = ["Route", "RouteTable", "check_route", "routes_from_mapping", "routes_from_service"]

#: Methods whose explicit routes take the whole request from the JSON body.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 method token
_RANK = {SegmentKind.LITERAL: 0, SegmentKind.WILDCARD: 1, SegmentKind.DEEP: 2}


@dataclass(frozen=True)
class Route:
    """One HTTP binding of a gRPC method.

    ``method`` is the HTTP method (a ``custom`` rule's kind as given);
    ``rpc`` the gRPC method, ``/package.Service/Method``; ``body`` is ``"*"``
    (the whole request from the JSON body), a top-level request field, or None
    (no body); ``response_body`` a top-level reply field to answer with
    instead of the whole reply.
    """

    method: str
    template: PathTemplate
    rpc: str
    body: str | None = None
    response_body: str | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.template.text} -> {self.rpc}"


class RouteTable:
    """Match requests to routes.

    Raises:
        ValueError: (construction) ``routes`` holds something not a :class:`Route`.

    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        for route in self.routes:
            if not isinstance(route, Route):
                raise ValueError(f"not a Route: {route!r}")
        # sorted() is stable: among equally specific templates the first given wins.
        self._ordered = sorted(self.routes, key=lambda r: _specificity(r.template))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and ``path`` (still percent-encoded), and its path parameters.

        Raises:
            WrongMethod: routes match the path, none with ``method``; ``allowed`` names theirs.
            NoRoute: no route matches the path.

        """
        allowed: set[str] = set()
        for route in self._ordered:
            params = route.template.match(path)
            if params is None:
                continue
            if route.method == method:
                return route, params
            allowed.add(route.method)
        if allowed:
            names = ", ".join(sorted(allowed))
            raise WrongMethod(
                f"method {method} is not allowed for {path} (allowed: {names})", allowed
            )
        raise NoRoute(f"no route for {path}")

    def __len__(self) -> int:
        return len(self.routes)


def _specificity(template: PathTemplate) -> tuple[tuple[int, ...], int]:
    return tuple(_RANK[s.kind] for s in template.segments), 0 if template.verb else 1


def routes_from_service(service: ServiceDescriptor) -> list[Route]:
    """The routes of every method of ``service`` annotated with ``google.api.http``.

    Methods without the annotation get none (give them explicit routes).
    Streaming methods are included: the caller decides what it serves.

    Raises:
        ValueError: an annotation is not valid (no pattern, a bad template, a
            field the messages lack, a nested ``additional_bindings``); the
            message names the method.

    """
    routes: list[Route] = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        rpc = f"/{service.full_name}/{method.name}"
        for binding in (rule, *rule.additional_bindings):
            if binding is not rule and len(binding.additional_bindings):
                raise ValueError(f"{rpc}: an additional binding has additional_bindings of its own")
            route = _route_from_rule(binding, rpc)
            check_route(route, method)
            routes.append(route)
    return routes


def _route_from_rule(rule: Any, rpc: str) -> Route:
    """A ``google.api.HttpRule`` (untyped: googleapis-common-protos ships no stubs) as a route."""
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{rpc}: google.api.http rule sets no get/put/post/delete/patch/custom")
    if kind == "custom":
        http_method = rule.custom.kind
        text = rule.custom.path
        if not _TOKEN.match(http_method):
            raise ValueError(f"{rpc}: custom method kind {http_method!r} is not an HTTP method")
    else:
        http_method, text = kind.upper(), getattr(rule, kind)
    try:
        template = PathTemplate.parse(text)
    except ValueError as exc:
        raise ValueError(f"{rpc}: {exc}") from None
    body = rule.body or None
    response_body = rule.response_body or None
    return Route(str(http_method), template, rpc, body, response_body)


def check_route(route: Route, method: MethodDescriptor) -> None:
    """Check that ``route``'s fields exist in ``method``'s messages.

    Every template variable must name a singular, non-message field (a
    well-known type such as ``Timestamp`` is allowed) of the request, ``body`` a
    top-level request field (or ``"*"``), ``response_body`` a top-level reply field.

    Raises:
        ValueError: one does not; the message names the route and the field.

    """
    request: Descriptor = method.input_type
    for path in route.template.field_paths:
        try:
            fields = field_path(request, path)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{route}: path variable {path!r}: {exc.args[0]}") from None
        leaf = fields[-1]
        if leaf.is_repeated:
            raise ValueError(f"{route}: path variable {path!r} is a repeated field")
        if leaf.message_type is not None and not leaf.message_type.full_name.startswith(
            "google.protobuf."
        ):
            raise ValueError(f"{route}: path variable {path!r} is a message, not a value")
    if route.body not in (None, "*") and route.body not in request.fields_by_name:
        raise ValueError(f"{route}: body {route.body!r} is not a field of {request.full_name}")
    reply: Descriptor = method.output_type
    if route.response_body is not None and route.response_body not in reply.fields_by_name:
        raise ValueError(
            f"{route}: response_body {route.response_body!r} is not a field of {reply.full_name}"
        )


def routes_from_mapping(routes: Mapping[str, str]) -> list[Route]:
    """Routes from ``{"GET /v1/orders/{id}": "shop.Orders/Get", ...}``.

    The method is upper-cased; the value is ``package.Service/Method`` (a
    leading ``/`` allowed). POST, PUT and PATCH take the whole request from the
    JSON body (``body="*"``), the others have no body.

    Raises:
        ValueError: a key is not ``METHOD /template`` or a value not a method
            name; the message names it.

    """
    out: list[Route] = []
    for key, value in routes.items():
        parts = key.split()
        if len(parts) != 2 or not _TOKEN.match(parts[0]):
            raise ValueError(f"route {key!r}: expected 'METHOD /path/template'")
        http_method = parts[0].upper()
        try:
            template = PathTemplate.parse(parts[1])
        except ValueError as exc:
            raise ValueError(f"route {key!r}: {exc}") from None
        if not isinstance(value, str):
            raise ValueError(f"route {key!r}: {value!r} is not a method name")
        try:
            service, name = split_rpc(value)
        except ValueError as exc:
            raise ValueError(f"route {key!r}: {exc}") from None
        body = "*" if http_method in BODY_METHODS else None
        out.append(Route(http_method, template, f"/{service}/{name}", body))
    return out
