"""Path templates of ``google/api/http.proto``: parse them, match request paths against them.

The grammar (http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

``{field}`` is ``{field=*}``; ``*`` is one non-empty segment, ``**`` zero or
more and only last. Matching follows grpc-gateway: the path is split on ``/``
*before* percent-decoding (so ``%2F`` stays inside its segment), a template
with a verb matches only a last segment ending in ``:verb`` and one without a
verb takes a colon as part of the segment; a variable of one segment is
decoded fully, a variable of several keeps ``%2F`` as it is (http.proto's
rule, so that the value still splits back into the segments it came from).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PathTemplate", "Segment", "SegmentKind", "Variable"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# RFC 3986 pchar without the characters the grammar gives a meaning ("*", "=",
# "{", "}", "/"); ":" only inside a segment: the last one of a template's last
# segment starts the verb.
_LITERAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;:@]|%[0-9A-Fa-f]{2})+\Z")
_SLASH = re.compile(r"(%2[Ff])")


class SegmentKind(enum.Enum):
    """What one segment of a template matches."""

    LITERAL = "literal"  # exactly its text (compared percent-decoded)
    WILDCARD = "*"  # any one non-empty segment
    DEEP = "**"  # zero or more segments; only last


@dataclass(frozen=True)
class Segment:
    """One ``/``-separated part of a template; ``value`` is a literal's decoded text."""

    kind: SegmentKind
    value: str = ""

    def __str__(self) -> str:
        return self.value if self.kind is SegmentKind.LITERAL else self.kind.value


@dataclass(frozen=True)
class Variable:
    """A ``{field_path=...}``: it captures ``segments[start:stop]`` (``stop`` None: to the end)."""

    field_path: str
    start: int
    stop: int | None

    @property
    def single(self) -> bool:
        """Whether it captures exactly one segment (then its value is fully decoded)."""
        return self.stop is not None and self.stop - self.start == 1


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template; build one with :meth:`parse`.

    ``segments`` is the flat list of segments, variables' included;
    ``variables`` say which of them each field captures.
    """

    text: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str | None

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Parse ``text`` (e.g. ``/v1/{name=shelves/*/books/*}:publish``).

        Raises:
            ValueError: the text is not a template; the message names the problem.

        """
        if not text.startswith("/"):
            raise ValueError(f"path template {text!r}: must start with '/'")
        body, verb = _split_verb(text)
        parser = _Parser(text, body)
        segments, variables = parser.parse()
        return cls(text=text, segments=segments, variables=variables, verb=verb)

    @property
    def field_paths(self) -> tuple[str, ...]:
        """The field paths the template binds, in order."""
        return tuple(v.field_path for v in self.variables)

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values if ``path`` matches, else None.

        ``path`` is the URL path as sent, still percent-encoded and without the
        query string (ASGI's ``raw_path``); an already-decoded path matches too,
        except that an encoded ``/`` inside a value can then not be told apart.
        The values are percent-decoded (UTF-8, invalid bytes replaced).
        """
        if not path.startswith("/"):
            return None
        components = path[1:].split("/")
        if self.verb is not None:
            suffix = ":" + self.verb
            last = components[-1]
            if len(last) <= len(suffix) or not last.endswith(suffix):
                return None
            components[-1] = last[: -len(suffix)]
        count = len(self.segments)
        if self.segments[-1].kind is SegmentKind.DEEP:
            if len(components) < count - 1:  # "**" may match no segment at all
                return None
        elif len(components) != count:
            return None
        for segment, component in zip(self.segments, components, strict=False):
            if segment.kind is SegmentKind.LITERAL:
                if unquote(component) != segment.value:
                    return None
            elif segment.kind is SegmentKind.WILDCARD and not component:
                return None
        values: dict[str, str] = {}
        for var in self.variables:
            captured = components[var.start : var.stop]
            if var.single:
                values[var.field_path] = unquote(captured[0])
            else:
                values[var.field_path] = "/".join(_unquote_keeping_slashes(c) for c in captured)
        return values

    def __str__(self) -> str:
        return self.text


def _unquote_keeping_slashes(component: str) -> str:
    # re.split with a group keeps the separators at the odd indexes, as they were sent.
    parts = _SLASH.split(component)
    return "".join(p if i % 2 else unquote(p) for i, p in enumerate(parts))


def _split_verb(text: str) -> tuple[str, str | None]:
    """Split off ``:verb``: after the last top-level ``/``, as grpc-gateway's parser does."""
    depth = 0
    last_slash = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "/" and depth == 0:
            last_slash = i
    final = text[last_slash + 1 :]
    if final.startswith("{"):
        # A variable last: the verb is everything after its closing brace.
        close = final.find("}")
        colon = final.find(":", close) if close >= 0 else -1
    else:
        colon = final.rfind(":")
    if colon < 0:
        return text, None
    verb = final[colon + 1 :]
    if not verb or not _LITERAL.match(verb) or ":" in verb:
        raise ValueError(f"path template {text!r}: bad verb {verb!r}")
    return text[: last_slash + 1 + colon], verb


class _Parser:
    """Recursive descent over the template without its verb."""

    def __init__(self, text: str, body: str) -> None:
        self.text = text
        self.body = body
        self.pos = 1  # past the leading "/"
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"path template {self.text!r}: {problem} (at offset {self.pos})")

    def parse(self) -> tuple[tuple[Segment, ...], tuple[Variable, ...]]:
        self.segments_list(in_variable=False)
        if self.pos != len(self.body):
            raise self.fail(f"unexpected {self.body[self.pos]!r}")
        if any(s.kind is SegmentKind.DEEP for s in self.segments[:-1]):
            raise ValueError(f"path template {self.text!r}: '**' must be the last segment")
        names = [v.field_path for v in self.variables]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"path template {self.text!r}: variable {name!r} bound twice")
        return tuple(self.segments), tuple(self.variables)

    def segments_list(self, *, in_variable: bool) -> None:
        """Segments separated by ``/``, up to the variable's ``}`` or the end."""
        while True:
            self.segment(in_variable=in_variable)
            if self.pos < len(self.body) and self.body[self.pos] == "/":
                self.pos += 1
                continue
            return

    def segment(self, *, in_variable: bool) -> None:
        body = self.body
        end = self.pos
        while end < len(body) and body[end] not in "/{}=":
            end += 1
        token = body[self.pos : end]
        if token == "" and end < len(body) and body[end] == "{":
            if in_variable:
                raise self.fail("a variable cannot hold another variable")
            self.variable()
            return
        if token == "":
            stray = end < len(body) and body[end] in "}="
            raise self.fail(f"unexpected {body[end]!r}" if stray else "empty segment")
        if token == "**":
            self.segments.append(Segment(SegmentKind.DEEP))
        elif token == "*":
            self.segments.append(Segment(SegmentKind.WILDCARD))
        elif _LITERAL.match(token):
            self.segments.append(Segment(SegmentKind.LITERAL, unquote(token)))
        else:
            raise self.fail(f"bad segment {token!r}")
        self.pos = end

    def variable(self) -> None:
        body = self.body
        self.pos += 1  # "{"
        end = self.pos
        while end < len(body) and body[end] not in "=}/{":
            end += 1
        field_path = body[self.pos : end]
        if not field_path or not all(_IDENT.match(p) for p in field_path.split(".")):
            raise self.fail(f"bad field path {field_path!r}")
        self.pos = end
        start = len(self.segments)
        if self.pos < len(body) and body[self.pos] == "=":
            self.pos += 1
            self.segments_list(in_variable=True)
        else:
            self.segments.append(Segment(SegmentKind.WILDCARD))
        if self.pos >= len(body) or body[self.pos] != "}":
            raise self.fail(f"variable {field_path!r} is not closed with '}}'")
        self.pos += 1
        if self.pos < len(body) and body[self.pos] != "/":
            raise self.fail(f"text after variable {field_path!r} in the same segment")
        deep = self.segments[-1].kind is SegmentKind.DEEP
        self.variables.append(Variable(field_path, start, None if deep else len(self.segments)))
