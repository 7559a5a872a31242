"""Path, query and JSON body → the request message; the reply → JSON (the bookstore messages)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from gateway.proto import bookstore_pb2
from quiesce.gateway.descriptors import find_method
from quiesce.gateway.errors import BadRequest
from quiesce.gateway.routes import Route, RouteTable, routes_from_mapping, routes_from_service
from quiesce.gateway.templates import PathTemplate
from quiesce.gateway.transcode import request_message, response_json

BOOKSTORE = bookstore_pb2.DESCRIPTOR.services_by_name["Bookstore"]
TABLE = RouteTable(
    routes_from_service(BOOKSTORE)
    + routes_from_mapping(
        {
            "POST /v1/restock/{name}": "bookstore.Bookstore/Restock",
            "POST /v1/list": "bookstore.Bookstore/ListBooks",
            "GET /v1/restock/{nope}": "bookstore.Bookstore/Restock",
        }
    )
)


def transcode(method: str, path: str, query: str = "", body: bytes = b"") -> Any:
    route, params = TABLE.match(method, path)
    rpc = find_method(route.rpc)
    assert rpc is not None
    return request_message(route, rpc, params, parse_qsl(query, keep_blank_values=True), body)


def bad_request(method: str, path: str, query: str = "", body: bytes = b"") -> str:
    with pytest.raises(BadRequest) as caught:
        transcode(method, path, query, body)
    assert caught.value.status == 400
    return caught.value.message


# --- path parameters


def test_path_parameters_fill_their_fields() -> None:
    assert transcode("GET", "/v1/shelves/1/books/2") == bookstore_pb2.GetBookRequest(
        shelf=1, book=2
    )
    assert transcode("GET", "/v1/files/a/b%2Fc") == bookstore_pb2.GetFileRequest(path="a/b%2Fc")
    assert transcode("DELETE", "/v1/shelves/1/books/2") == bookstore_pb2.DeleteBookRequest(
        name="shelves/1/books/2"
    )


def test_path_parameter_of_wrong_type_is_bad_request_naming_it() -> None:
    message = bad_request("GET", "/v1/shelves/x/books/2")
    assert message.startswith("path parameter 'shelf': ")


def test_path_variable_the_message_lacks_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="path variable 'nope'"):
        transcode("GET", "/v1/restock/x")


# --- query parameters


def test_query_repeated_nested_enum_wkt_wrapper_map_and_json_names() -> None:
    query = (
        "tags=a&tags=b&author.name=Le%20Guin&pageSize=3&genre=POETRY&genres=FICTION&genres=2"
        "&inPrint=true&min_pages=0&published_after=2024-01-02T03:04:05Z&max_pages=7"
        "&labels[lang]=en&labels[era]=1970s"
    )
    request = transcode("GET", "/v1/shelves/1/books", query)
    expected = bookstore_pb2.ListBooksRequest(
        shelf=1,
        tags=["a", "b"],
        author=bookstore_pb2.Author(name="Le Guin"),
        page_size=3,
        genre=bookstore_pb2.POETRY,
        genres=[bookstore_pb2.FICTION, bookstore_pb2.HISTORY],
        in_print=True,
        min_pages=0,
        labels={"lang": "en", "era": "1970s"},
    )
    expected.published_after.FromJsonString("2024-01-02T03:04:05Z")
    expected.max_pages.value = 7
    assert request == expected
    assert request.HasField("min_pages")  # presence: set to zero is set


def test_query_does_not_override_path_and_ignores_unknown_names() -> None:
    request = transcode("GET", "/v1/shelves/1/books", "shelf=9&nope=1&author.nope=2&page_size=4")
    assert request == bookstore_pb2.ListBooksRequest(shelf=1, page_size=4)


@pytest.mark.parametrize("value", ["1", "t", "T", "true", "TRUE", "True"])
def test_query_bool_takes_strconv_spellings(value: str) -> None:
    assert transcode("GET", "/v1/shelves/1/books", f"in_print={value}").in_print is True


@pytest.mark.parametrize(
    ("query", "named", "problem"),
    [
        ("genre=COOKING", "'genre'", "Invalid enum value COOKING"),
        ("genres=FICTION&genres=COOKING", "'genres'", "Invalid enum value COOKING"),
        ("page_size=many", "'page_size'", "invalid literal"),
        ("page_size=99999999999", "'page_size'", "out of range"),
        ("page_size=1&pageSize=2", "'page_size'", "given 2 times for a singular field"),
        ("in_print=yes", "'in_print'", "'yes' is not a bool"),
        ("author=x", "'author'", "is a message"),
        ("co_authors.name=x", "'co_authors.name'", "'co_authors' is repeated"),
        ("page_size.x=1", "'page_size.x'", "'page_size' is not a message"),
        ("labels=x", "'labels'", "is a map"),
        ("labels[a]=x&labels[a]=y", "labels[a]", "given more than once"),
        ("tags[a]=x", "'tags'", "is not a map"),
        ("published_after=yesterday", "'published_after'", "parse timestamp"),
        ("max_pages=lots", "'max_pages'", "lots"),
    ],
)
def test_query_bad_value_is_bad_request_naming_the_parameter(
    query: str, named: str, problem: str
) -> None:
    message = bad_request("GET", "/v1/shelves/1/books", query)
    assert named in message
    assert problem in message


# --- the JSON body


def test_body_star_is_the_whole_message_unknown_fields_ignored() -> None:
    body = b'{"id": "5", "theme": "sea", "genre": "HISTORY", "nope": 1, "deeper": {"x": [1]}}'
    assert transcode("POST", "/v1/shelves", body=body) == bookstore_pb2.Shelf(
        id=5, theme="sea", genre=bookstore_pb2.HISTORY
    )
    by_number = transcode("POST", "/v1/shelves", body=b'{"id": 5, "genre": 2}')
    assert by_number == bookstore_pb2.Shelf(id=5, genre=bookstore_pb2.HISTORY)


def test_body_star_path_overrides_and_query_is_not_read() -> None:
    body = b'{"id": "from-body", "notify": true}'
    request = transcode("POST", "/v1/books/abc:publish", "notify=false&id=q", body)
    assert request == bookstore_pb2.PublishBookRequest(id="abc", notify=True)


def test_body_field_then_path_then_query_for_the_rest() -> None:
    body = b'{"title": "T", "author": {"name": "A"}, "genre": "FICTION", "labels": {"a": "b"}}'
    request = transcode(
        "POST", "/v1/shelves/3/books", "request_id=r1&book.title=ignored&shelf=9", body
    )
    assert request == bookstore_pb2.CreateBookRequest(
        shelf=3,
        request_id="r1",
        book=bookstore_pb2.Book(
            title="T",
            author=bookstore_pb2.Author(name="A"),
            genre=bookstore_pb2.FICTION,
            labels={"a": "b"},
        ),
    )


def test_body_field_merges_with_nested_path_parameter() -> None:
    body = b'{"name": "shelves/9/books/9", "title": "New", "pages": 0}'
    request = transcode("PATCH", "/v1/shelves/1/books/2", "update_mask=title,author.name", body)
    assert request.book == bookstore_pb2.Book(name="shelves/1/books/2", title="New", pages=0)
    assert list(request.update_mask.paths) == ["title", "author.name"]


def test_explicit_post_route_takes_whole_body_for_unannotated_method() -> None:
    request = transcode("POST", "/v1/restock/dune", body=b'{"count": 3, "name": "other"}')
    assert request == bookstore_pb2.RestockRequest(name="dune", count=3)


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_empty_body_leaves_the_message_empty(body: bytes) -> None:
    assert transcode("POST", "/v1/shelves", body=body) == bookstore_pb2.Shelf()


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("/v1/shelves", b'{"id": ', "malformed JSON body: Expecting value"),
        ("/v1/shelves", b"{'id': 1}", "malformed JSON body"),
        ("/v1/shelves", b'{"theme": "\xff"}', "malformed JSON body"),
        ("/v1/shelves", b"[1, 2]", "must be an object (bookstore.Shelf)"),
        ("/v1/shelves", b'"x"', "must be an object"),
        ("/v1/shelves/3/books", b"[1]", "book"),
    ],
)
def test_malformed_json_is_bad_request(path: str, body: bytes, problem: str) -> None:
    assert problem in bad_request("POST", path, body=body)


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/shelves", b'{"id": "x"}', "id"),
        ("/v1/shelves", b'{"id": true}', "id"),
        ("/v1/shelves/3/books", b'{"copies": "many"}', "copies"),
        ("/v1/shelves/3/books", b'{"tags": ["a", 2]}', "tags"),
        ("/v1/shelves/3/books", b'{"author": {"born": "long ago"}}', "born"),
    ],
)
def test_bad_field_value_in_body_is_bad_request_naming_the_field(
    path: str, body: bytes, named: str
) -> None:
    message = bad_request("POST", path, body=body)
    assert message.startswith("JSON body: ")
    assert named in message


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/shelves", b'{"genre": "COOKING"}', "'genre'"),
        ("/v1/shelves/3/books", b'{"genre": "COOKING"}', "'book.genre'"),
        ("/v1/list", b'{"genres": ["FICTION", "COOKING"]}', "'genres[1]'"),
        ("/v1/list", b'{"author": {}, "genre": "cooking"}', "'genre'"),
    ],
)
def test_unknown_enum_value_in_body_is_bad_request_naming_the_field(
    path: str, body: bytes, field: str
) -> None:
    message = bad_request("POST", path, body=body)
    assert f"field {field}" in message
    assert "is not a value of bookstore.Genre" in message


# --- the reply


def _json(route: Route, reply: Message) -> Any:
    return json.loads(response_json(route, reply))


GET_BOOK = TABLE.match("GET", "/v1/shelves/1/books/2")[0]
BOOK_LIST = TABLE.match("GET", "/v1/shelves/1/book-list")[0]


def test_reply_has_camel_case_names_and_fields_without_presence() -> None:
    book = bookstore_pb2.Book(name="n", title="café", tags=["a"], copies=5, in_print=True)
    assert _json(GET_BOOK, book) == {
        "name": "n",
        "title": "café",
        "genre": "GENRE_UNSPECIFIED",
        "tags": ["a"],
        "labels": {},
        "copies": "5",  # int64 as a string, proto3 JSON
        "inPrint": True,
        "price": 0.0,
        "cover": "",
    }  # author, published (messages) and pages, subtitle (optional) are unset: absent
    assert "café".encode() in response_json(GET_BOOK, book)  # UTF-8, not \u escapes


def test_reply_prints_optional_field_set_to_zero() -> None:
    document = _json(GET_BOOK, bookstore_pb2.Book(pages=0, author=bookstore_pb2.Author()))
    assert document["pages"] == 0
    assert document["author"] == {"name": "", "born": 0}
    assert "subtitle" not in document


def test_reply_response_body_picks_one_field() -> None:
    reply = bookstore_pb2.ListBooksResponse(
        books=[bookstore_pb2.Book(name="a"), bookstore_pb2.Book(name="b")], next_page_token="t"
    )
    assert [b["name"] for b in _json(BOOK_LIST, reply)] == ["a", "b"]
    assert _json(BOOK_LIST, bookstore_pb2.ListBooksResponse()) == []


@pytest.mark.parametrize(
    ("field", "reply", "expected"),
    [
        ("author", bookstore_pb2.Book(), {"name": "", "born": 0}),  # unset message: empty
        (
            "author",
            bookstore_pb2.Book(author=bookstore_pb2.Author(born=1929)),
            {"name": "", "born": 1929},
        ),
        ("title", bookstore_pb2.Book(title="t"), "t"),
        ("pages", bookstore_pb2.Book(), None),  # optional unset: null
        ("labels", bookstore_pb2.Book(labels={"k": "v"}), {"k": "v"}),
    ],
)
def test_reply_response_body_of_each_kind_of_field(
    field: str, reply: Message, expected: Any
) -> None:
    route = Route("GET", PathTemplate.parse("/v1/x"), "/bookstore.Bookstore/GetBook", None, field)
    assert _json(route, reply) == expected


def test_reply_response_body_not_in_reply_is_a_configuration_error() -> None:
    route = Route("GET", PathTemplate.parse("/v1/x"), "/bookstore.Bookstore/GetBook", None, "nope")
    with pytest.raises(ValueError, match="response_body 'nope'"):
        response_json(route, bookstore_pb2.Book())


def test_reply_empty_message_is_an_empty_object() -> None:
    delete = TABLE.match("DELETE", "/v1/shelves/1/books/2")[0]
    assert response_json(delete, empty_pb2.Empty()) == b"{}"
