"""Routes from google.api.http annotations and from a mapping; the table's order, 404 and 405."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]  # no stubs
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from gateway.proto import bookstore_pb2
from quiesce.gateway.errors import NoRoute, WrongMethod
from quiesce.gateway.routes import (
    Route,
    RouteTable,
    check_route,
    routes_from_mapping,
    routes_from_service,
)
from quiesce.gateway.templates import PathTemplate

BOOKSTORE = bookstore_pb2.DESCRIPTOR.services_by_name["Bookstore"]
RPC = "/bookstore.Bookstore/"


def test_routes_from_service_reads_every_annotation_and_additional_binding() -> None:
    routes = [
        (r.method, r.template.text, r.rpc.removeprefix(RPC), r.body, r.response_body)
        for r in routes_from_service(BOOKSTORE)
    ]
    assert routes == [
        ("GET", "/v1/shelves/{shelf}/books/{book}", "GetBook", None, None),
        ("GET", "/v2/shelves/{shelf}/books/{book}", "GetBook", None, None),
        ("GET", "/v1/shelves/{shelf}/books", "ListBooks", None, None),
        ("GET", "/v1/shelves/{shelf}/book-list", "ListBooks", None, "books"),
        ("POST", "/v1/shelves", "CreateShelf", "*", None),
        ("POST", "/v1/shelves/{shelf}/books", "CreateBook", "book", None),
        ("PATCH", "/v1/{book.name=shelves/*/books/*}", "UpdateBook", "book", None),
        ("DELETE", "/v1/{name=shelves/*/books/*}", "DeleteBook", None, None),
        ("POST", "/v1/books/{id}:publish", "PublishBook", "*", None),
        ("GET", "/v1/files/{path=**}", "GetFile", None, None),
        ("HEAD", "/v1/shelves/{shelf}", "CheckShelf", None, None),  # custom { kind: "HEAD" }
    ]  # Restock has no annotation: no route


def _service(rule: http_pb2.HttpRule) -> ServiceDescriptor:
    """A service ``bad.S`` in a pool of its own, whose method ``M`` carries ``rule``."""
    file = descriptor_pb2.FileDescriptorProto(name="bad.proto", package="bad", syntax="proto3")
    request = file.message_type.add(name="Req")
    F = descriptor_pb2.FieldDescriptorProto
    request.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    request.field.add(name="tags", number=2, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    request.field.add(
        name="sub", number=3, type=F.TYPE_MESSAGE, type_name=".bad.Reply", label=F.LABEL_OPTIONAL
    )
    reply = file.message_type.add(name="Reply")
    reply.field.add(name="id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    method = file.service.add(name="S").method.add(
        name="M", input_type=".bad.Req", output_type=".bad.Reply"
    )
    method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName("bad.S")


def test_routes_from_service_good_rule_in_another_pool_is_read() -> None:
    rule = http_pb2.HttpRule(put="/v1/{name}", body="sub", response_body="id")
    [route] = routes_from_service(_service(rule))
    assert (route.method, route.template.text, route.rpc) == ("PUT", "/v1/{name}", "/bad.S/M")
    assert (route.body, route.response_body) == ("sub", "id")


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (http_pb2.HttpRule(body="*"), "sets no get/put/post/delete/patch/custom"),
        (http_pb2.HttpRule(get="v1/x"), "must start with '/'"),
        (http_pb2.HttpRule(get="/v1/{nope}"), "path variable 'nope': bad.Req has no field 'nope'"),
        (http_pb2.HttpRule(get="/v1/{tags}"), "path variable 'tags' is a repeated field"),
        (http_pb2.HttpRule(get="/v1/{sub}"), "path variable 'sub' is a message"),
        (http_pb2.HttpRule(get="/v1/{name.x}"), "'name' is not a message"),
        (http_pb2.HttpRule(post="/v1/x", body="nope"), "body 'nope' is not a field of bad.Req"),
        (
            http_pb2.HttpRule(get="/v1/x", response_body="nope"),
            "response_body 'nope' is not a field of bad.Reply",
        ),
        (
            http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="NOT A METHOD", path="/x")),
            "is not an HTTP method",
        ),
        (
            http_pb2.HttpRule(
                get="/v1/x",
                additional_bindings=[
                    http_pb2.HttpRule(
                        get="/v2/x", additional_bindings=[http_pb2.HttpRule(get="/v3/x")]
                    )
                ],
            ),
            "additional_bindings of its own",
        ),
    ],
)
def test_routes_from_service_bad_rule_raises_naming_method_and_problem(
    rule: http_pb2.HttpRule, problem: str
) -> None:
    with pytest.raises(ValueError, match=r"/bad\.S/M") as caught:
        routes_from_service(_service(rule))
    assert problem in str(caught.value)


def test_check_route_accepts_json_names_and_well_known_types() -> None:
    method = BOOKSTORE.methods_by_name["UpdateBook"]
    check_route(Route("PATCH", PathTemplate.parse("/v1/{book.inPrint}"), "/x/Y", "book"), method)
    check_route(Route("GET", PathTemplate.parse("/v1/{book.published}"), "/x/Y"), method)


def test_routes_from_mapping_body_star_for_post_put_patch_only() -> None:
    routes = routes_from_mapping(
        {
            "GET /v1/orders/{id}": "shop.Orders/Get",
            "post /v1/orders": "/shop.Orders/Create",
            "PUT /v1/orders/{id}": "shop.Orders/Replace",
            "PATCH /v1/orders/{id}": "shop.v1.Orders/Update",
            "DELETE /v1/orders/{id}": "shop.Orders/Delete",
            "HEAD  /v1/orders/{id}": "shop.Orders/Check",
        }
    )
    assert [(r.method, r.template.text, r.rpc, r.body, r.response_body) for r in routes] == [
        ("GET", "/v1/orders/{id}", "/shop.Orders/Get", None, None),
        ("POST", "/v1/orders", "/shop.Orders/Create", "*", None),
        ("PUT", "/v1/orders/{id}", "/shop.Orders/Replace", "*", None),
        ("PATCH", "/v1/orders/{id}", "/shop.v1.Orders/Update", "*", None),
        ("DELETE", "/v1/orders/{id}", "/shop.Orders/Delete", None, None),
        ("HEAD", "/v1/orders/{id}", "/shop.Orders/Check", None, None),
    ]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("/v1/orders", "shop.Orders/Get", "expected 'METHOD /path/template'"),
        ("GET", "shop.Orders/Get", "expected 'METHOD /path/template'"),
        ("GET /v1/a /v1/b", "shop.Orders/Get", "expected 'METHOD /path/template'"),
        ("G(T /v1/orders", "shop.Orders/Get", "expected 'METHOD /path/template'"),
        ("GET v1/orders", "shop.Orders/Get", "must start with '/'"),
        ("GET /v1/{id", "shop.Orders/Get", "not closed"),
        ("GET /v1/orders", "shop.Orders", "not a gRPC method name"),
        ("GET /v1/orders", "shop.Orders/Get/x", "not a gRPC method name"),
        ("GET /v1/orders", "", "not a gRPC method name"),
        ("GET /v1/orders", 7, "is not a method name"),
    ],
)
def test_routes_from_mapping_bad_entry_raises_naming_the_key(
    key: str, value: object, problem: str
) -> None:
    with pytest.raises(ValueError, match="route ") as caught:
        routes_from_mapping({key: value})  # type: ignore[dict-item]  # what a config may hold
    assert repr(key) in str(caught.value)
    assert problem in str(caught.value)


def _table(*specs: str) -> RouteTable:
    routes = []
    for spec in specs:
        method, text, rpc = spec.split()
        routes.append(Route(method, PathTemplate.parse(text), rpc))
    return RouteTable(routes)


@pytest.mark.parametrize("reverse", [False, True])
def test_table_literal_wins_over_variable_whatever_the_order(reverse: bool) -> None:
    specs = ["GET /v1/shelves/{shelf} /s.S/Get", "GET /v1/shelves/special /s.S/Special"]
    table = _table(*(reversed(specs) if reverse else specs))
    assert table.match("GET", "/v1/shelves/special")[0].rpc == "/s.S/Special"
    route, params = table.match("GET", "/v1/shelves/7")
    assert (route.rpc, params) == ("/s.S/Get", {"shelf": "7"})


@pytest.mark.parametrize("reverse", [False, True])
def test_table_wildcard_wins_over_deep_and_verb_over_none(reverse: bool) -> None:
    specs = [
        "GET /v1/files/{path=**} /s.S/Deep",
        "GET /v1/files/{name} /s.S/One",
        "POST /v1/books/{id} /s.S/Plain",
        "POST /v1/books/{id}:publish /s.S/Publish",
    ]
    table = _table(*(reversed(specs) if reverse else specs))
    assert table.match("GET", "/v1/files/a")[0].rpc == "/s.S/One"
    assert table.match("GET", "/v1/files/a/b")[0].rpc == "/s.S/Deep"
    route, params = table.match("POST", "/v1/books/7:publish")
    assert (route.rpc, params) == ("/s.S/Publish", {"id": "7"})
    assert table.match("POST", "/v1/books/7")[0].rpc == "/s.S/Plain"


def test_table_equally_specific_first_given_wins() -> None:
    table = _table("GET /v1/{a} /s.S/First", "GET /v1/{b} /s.S/Second")
    assert table.match("GET", "/v1/x") == (table.routes[0], {"a": "x"})


def test_table_path_matching_under_other_methods_is_405_with_allowed_sorted() -> None:
    table = RouteTable(routes_from_service(BOOKSTORE))
    with pytest.raises(WrongMethod) as caught:
        table.match("PUT", "/v1/shelves/1/books/2")
    assert caught.value.allowed == ("DELETE", "GET", "PATCH")
    assert caught.value.status == 405
    assert "PUT" in caught.value.message
    assert "DELETE, GET, PATCH" in caught.value.message


def test_table_path_matching_nothing_is_404() -> None:
    table = RouteTable(routes_from_service(BOOKSTORE))
    for method, path in [("GET", "/v9/shelves"), ("POST", "/v1/books/7"), ("GET", "/")]:
        with pytest.raises(NoRoute) as caught:
            table.match(method, path)
        assert caught.value.status == 404
        assert path in caught.value.message


def test_table_matches_method_among_several_on_one_path() -> None:
    table = RouteTable(routes_from_service(BOOKSTORE))
    assert table.match("GET", "/v1/shelves/1/books/2")[0].rpc == RPC + "GetBook"
    assert table.match("HEAD", "/v1/shelves/1")[0].rpc == RPC + "CheckShelf"
    assert table.match("POST", "/v1/shelves/1/books")[0].rpc == RPC + "CreateBook"
    assert table.match("GET", "/v1/shelves/1/books")[0].rpc == RPC + "ListBooks"
    route, params = table.match("PATCH", "/v1/shelves/1/books/2")
    assert (route.rpc, params) == (RPC + "UpdateBook", {"book.name": "shelves/1/books/2"})
    route, params = table.match("GET", "/v2/shelves/3/books/4")
    assert (route.rpc, params) == (RPC + "GetBook", {"shelf": "3", "book": "4"})


def test_table_refuses_what_is_not_a_route() -> None:
    with pytest.raises(ValueError, match="not a Route"):
        RouteTable(["GET /v1/x"])  # type: ignore[list-item]  # the mistake it reports
    assert len(RouteTable([])) == 0
