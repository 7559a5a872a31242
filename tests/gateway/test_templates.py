"""Path templates: the http.proto grammar, matching, percent-decoding, a parse/match round trip."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quiesce.gateway.templates import PathTemplate, SegmentKind, Variable

L, W, D = SegmentKind.LITERAL, SegmentKind.WILDCARD, SegmentKind.DEEP


@pytest.mark.parametrize(
    ("text", "kinds", "variables", "verb"),
    [
        ("/v1/shelves", [L, L], [], None),
        ("/v1/*/books", [L, W, L], [], None),
        ("/v1/**", [L, D], [], None),
        ("/v1/shelves/{shelf}", [L, L, W], [Variable("shelf", 2, 3)], None),
        ("/v1/{shelf=*}", [L, W], [Variable("shelf", 1, 2)], None),
        (
            "/v1/{book.name=shelves/*/books/*}",
            [L, L, W, L, W],
            [Variable("book.name", 1, 5)],
            None,
        ),
        ("/v1/files/{path=**}", [L, L, D], [Variable("path", 2, None)], None),
        ("/v1/{name=files/**}", [L, L, D], [Variable("name", 1, None)], None),
        ("/v1/books/{id}:publish", [L, L, W], [Variable("id", 2, 3)], "publish"),
        ("/v1/books:batchGet", [L, L], [], "batchGet"),
        ("/v1/{name=books/*}:undelete", [L, L, W], [Variable("name", 1, 3)], "undelete"),
        ("/v1/a:b/c", [L, L, L], [], None),  # a colon inside a segment that is not last
        (
            "/v1/shelves/{shelf}/books/{book}",
            [L, L, W, L, W],
            [Variable("shelf", 2, 3), Variable("book", 4, 5)],
            None,
        ),
    ],
)
def test_parse_every_form_gives_segments_variables_and_verb(
    text: str, kinds: list[SegmentKind], variables: list[Variable], verb: str | None
) -> None:
    template = PathTemplate.parse(text)
    assert [s.kind for s in template.segments] == kinds
    assert list(template.variables) == variables
    assert template.verb == verb
    assert template.text == text == str(template)


def test_parse_literal_is_compared_decoded() -> None:
    template = PathTemplate.parse("/v1/caf%C3%A9")
    assert template.segments[1].value == "café"
    assert template.match("/v1/caf%c3%a9") == {}
    assert template.match("/v1/café") == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("v1/books", "must start with '/'"),
        ("", "must start with '/'"),
        ("/", "empty segment"),
        ("/v1//books", "empty segment"),
        ("/v1/books/", "empty segment"),
        ("/v1/{id", "not closed"),
        ("/v1/id}", "unexpected '}'"),
        ("/v1/a=b", "unexpected '='"),
        ("/v1/{a=b/{c}}", "cannot hold another variable"),
        ("/v1/{id}x", "text after variable"),
        ("/v1/{1id}", "bad field path '1id'"),
        ("/v1/{a..b}", "bad field path"),
        ("/v1/{}", "bad field path ''"),
        ("/v1/**/books", "'**' must be the last segment"),
        ("/v1/{path=**}/x", "'**' must be the last segment"),
        ("/v1/{id}/{id}", "'id' bound twice"),
        ("/v1/books:", "bad verb ''"),
        ("/v1/{id}:", "bad verb ''"),
        ("/v1/{id}:a:b", "bad verb 'a:b'"),
        ("/v1/b*", "bad segment 'b*'"),
        ("/v1/***", "bad segment '***'"),
        ("/v1/a?b", "bad segment 'a?b'"),
        ("/v1/a%zz", "bad segment 'a%zz'"),
    ],
)
def test_parse_bad_template_raises_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="path template") as caught:
        PathTemplate.parse(text)
    assert problem in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("/v1/shelves/{shelf}/books/{book}", "/v1/shelves/1/books/2", {"shelf": "1", "book": "2"}),
        ("/v1/shelves/{shelf}/books/{book}", "/v1/shelves/1/books", None),
        ("/v1/shelves/{shelf}/books/{book}", "/v1/shelves/1/books/2/x", None),
        ("/v1/shelves/{shelf}/books/{book}", "/v1/shelves//books/2", None),  # "*" is non-empty
        ("/v1/shelves/{shelf}/books/{book}", "/v1/racks/1/books/2", None),
        ("/v1/shelves/{shelf}/books/{book}", "v1/shelves/1/books/2", None),
        ("/v1/*/books", "/v1/anything/books", {}),
        (
            "/v1/{book.name=shelves/*/books/*}",
            "/v1/shelves/1/books/2",
            {"book.name": "shelves/1/books/2"},
        ),
        ("/v1/{book.name=shelves/*/books/*}", "/v1/racks/1/books/2", None),
        ("/v1/files/{path=**}", "/v1/files/a/b/c", {"path": "a/b/c"}),
        ("/v1/files/{path=**}", "/v1/files/a", {"path": "a"}),
        ("/v1/files/{path=**}", "/v1/files", {"path": ""}),  # "**" may be no segment
        ("/v1/files/{path=**}", "/v2/files/a", None),
        ("/v1/books/{id}:publish", "/v1/books/7:publish", {"id": "7"}),
        ("/v1/books/{id}:publish", "/v1/books/7", None),
        ("/v1/books/{id}:publish", "/v1/books/7:unpublish", None),
        ("/v1/books/{id}:publish", "/v1/books/:publish", None),
        ("/v1/books/{id}", "/v1/books/7:publish", {"id": "7:publish"}),  # no verb: part of it
        ("/v1/books:batchGet", "/v1/books:batchGet", {}),
        ("/v1/books:batchGet", "/v1/books", None),
        ("/v1/{name=files/**}:zip", "/v1/files/a/b:zip", {"name": "files/a/b"}),
    ],
)
def test_match_gives_values_or_none(text: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathTemplate.parse(text).match(path) == expected


def test_match_single_segment_variable_is_fully_decoded() -> None:
    template = PathTemplate.parse("/v1/books/{id}")
    assert template.match("/v1/books/a%2Fb%20c%3Ad") == {"id": "a/b c:d"}
    assert template.match("/v1/books/%E2%82%AC") == {"id": "€"}


def test_match_multi_segment_variable_keeps_encoded_slashes() -> None:
    # http.proto: for several segments "%2F" and "%2f" stay as they are, the rest is decoded.
    deep = PathTemplate.parse("/v1/files/{path=**}")
    assert deep.match("/v1/files/a%2Fb/c%20d/e%2ff") == {"path": "a%2Fb/c d/e%2ff"}
    one_of_many = PathTemplate.parse("/v1/{name=shelves/*}")
    assert one_of_many.match("/v1/shelves/x%2Fy") == {"name": "shelves/x%2Fy"}


def test_match_encoded_slash_stays_inside_its_segment() -> None:
    template = PathTemplate.parse("/v1/shelves/{shelf}/books/{book}")
    assert template.match("/v1/shelves/a%2Fb/books/c") == {"shelf": "a/b", "book": "c"}


# --- the round trip: a template and a path made together, the path matches with the values


_LITERALS = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=1, max_size=6)
_VALUES = st.text(min_size=1, max_size=6)  # any text: sent percent-encoded
_NO_PERCENT = st.text(min_size=1, max_size=6).filter(lambda v: "%" not in v)


@st.composite
def templates_and_paths(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    template: list[str] = []
    path: list[str] = []
    expected: dict[str, str] = {}
    for i in range(draw(st.integers(min_value=1, max_value=5))):
        kind = draw(st.sampled_from(["literal", "wildcard", "single", "multi"]))
        if kind == "literal":
            text = draw(_LITERALS)
            template.append(text)
            path.append(text)
        elif kind == "wildcard":
            template.append("*")
            path.append(quote(draw(_VALUES), safe=""))
        elif kind == "single":
            value = draw(_VALUES)
            template.append(f"{{f{i}}}")
            path.append(quote(value, safe=""))
            expected[f"f{i}"] = value
        else:
            prefix, value = draw(_LITERALS), draw(_NO_PERCENT)
            template.append(f"{{m{i}.name={prefix}/*}}")
            path.extend([prefix, quote(value, safe="")])
            expected[f"m{i}.name"] = f"{prefix}/{value.replace('/', '%2F')}"
    verb = draw(st.none() | _LITERALS)
    if draw(st.booleans()):
        values = draw(st.lists(_NO_PERCENT, min_size=1 if verb else 0, max_size=3))
        template.append("{rest=**}")
        path.extend(quote(v, safe="") for v in values)
        expected["rest"] = "/".join(v.replace("/", "%2F") for v in values)
    text = "/" + "/".join(template) + (f":{verb}" if verb else "")
    url = "/" + "/".join(path) + (f":{verb}" if verb else "")
    return text, url, expected


@given(templates_and_paths())
def test_round_trip_path_made_from_template_matches_with_its_values(
    case: tuple[str, str, dict[str, str]],
) -> None:
    text, url, expected = case
    template = PathTemplate.parse(text)
    assert template.text == text
    assert template.match(url) == expected
    assert template.field_paths == tuple(expected)


@given(templates_and_paths())
def test_round_trip_one_segment_more_or_less_does_not_match(
    case: tuple[str, str, dict[str, str]],
) -> None:
    text, url, _ = case
    template = PathTemplate.parse(text)
    if template.segments[-1].kind is SegmentKind.DEEP:
        return  # "**" takes any number of segments
    base, _, verb = url.partition(":") if template.verb else (url, "", "")
    suffix = f":{verb}" if template.verb else ""
    assert template.match(f"{base}/extra{suffix}") is None
    shorter = base.rsplit("/", 1)[0]
    assert template.match(f"{shorter}{suffix}") is None
