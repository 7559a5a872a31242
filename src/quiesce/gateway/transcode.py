"""HTTP request → request message, reply message → JSON, as grpc-gateway does it.

The request is built in grpc-gateway's order: the JSON body first (``body:
"*"``: the whole message; ``body: "field"``: that field), then the path
parameters, which override what the body set; then, unless the body took the
whole message, the query parameters for the fields neither the path nor the
body bound (``?tag=a&tag=b`` for a repeated field, ``?author.name=x`` for a
nested one, ``?labels[k]=v`` for a map; a name that is no field is ignored).
Unknown JSON fields are ignored (grpc-gateway's default); an unknown enum
name is not, wherever it comes from (protobuf's parser would drop it silently).
The reply is printed with camelCase names and the fields without presence
included, grpc-gateway's defaults.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from quiesce.gateway.descriptors import field_path, message_classes, pool_of
from quiesce.gateway.errors import BadRequest
from quiesce.gateway.routes import Route

__all__ = ["request_message", "response_json"]

# strconv.ParseBool's spellings, what grpc-gateway accepts in a path or query.
_BOOL = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}
# Well-known types whose JSON form is one string: a path or query value as is.
_STRING_WKT = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_WRAPPERS = frozenset(
    f"google.protobuf.{t}Value"
    for t in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_MAP_KEY = re.compile(r"(.+)\[(.*)\]\Z")
_MAX_DEPTH = 100  # as json_format's own recursion bound


def request_message(
    route: Route,
    method: MethodDescriptor,
    path_params: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
) -> Message:
    """The request message for ``method`` from the route's path parameters, query and body.

    ``path_params`` is what :meth:`RouteTable.match` gave, ``query`` the
    decoded query pairs in order (``urllib.parse.parse_qsl``), ``body`` the raw
    request body (empty: no body, even where the route takes one).

    Raises:
        BadRequest: malformed JSON, or a value that does not fit its field (a
            string for an int, an unknown enum value, two values for a
            singular field); the message names the field.
        ValueError: the route names a field the request message lacks (a
            configuration error, not the caller's: answer 500).

    """
    request_class, _ = message_classes(method)
    message = request_class()
    if route.body is not None and body.strip():
        _merge_body(message, route.body, body)
    bound: list[str] = []
    for name, value in path_params.items():
        try:
            fields = field_path(method.input_type, name)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{route}: path variable {name!r}: {exc.args[0]}") from None
        bound.append(_dotted(fields))
        _assign(message, fields, _json_value(fields[-1], value, name), f"path parameter {name!r}")
    if route.body == "*":
        return message  # grpc-gateway binds no query parameter then
    if route.body is not None:
        bound.append(route.body)
    for name, fields, value in _query_values(method.input_type, query, bound):
        _assign(message, fields, value, f"query parameter {name!r}")
    return message


def response_json(route: Route, reply: Message) -> bytes:
    """The reply as JSON (UTF-8), or only its ``route.response_body`` field.

    Raises:
        ValueError: ``response_body`` is not a field of the reply (configuration).

    """
    if route.response_body is None:
        document: Any = _to_dict(reply)
    else:
        field = reply.DESCRIPTOR.fields_by_name.get(route.response_body)
        if field is None:
            raise ValueError(
                f"{route}: response_body {route.response_body!r} is not a field of "
                f"{reply.DESCRIPTOR.full_name}"
            )
        if field.message_type is not None and not field.is_repeated:
            # Unset, it still answers with its empty message, as grpc-gateway does.
            document = _to_dict(getattr(reply, field.name))
        else:
            document = _to_dict(reply).get(field.json_name)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _to_dict(message: Message) -> Any:
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=False,
        always_print_fields_with_no_presence=True,
        descriptor_pool=pool_of(message),
    )


def _merge_body(message: Message, body_field: str, body: bytes) -> None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"malformed JSON body: {exc}") from None
    descriptor = message.DESCRIPTOR
    if body_field == "*":
        if not isinstance(document, dict) and not _is_wkt(descriptor):
            raise BadRequest(f"the JSON body must be an object ({descriptor.full_name})")
    else:
        field = descriptor.fields_by_name.get(body_field)
        if field is None:
            raise ValueError(f"body {body_field!r} is not a field of {descriptor.full_name}")
        document = {field.name: document}
    if isinstance(document, dict):
        _check_enums(descriptor, document, "", 0)
    try:
        json_format.ParseDict(
            document, message, ignore_unknown_fields=True, descriptor_pool=pool_of(message)
        )
    except json_format.Error as exc:
        raise BadRequest(f"JSON body: {exc}") from None


def _check_enums(descriptor: Any, document: dict[str, Any], path: str, depth: int) -> None:
    """Refuse an enum name the enum lacks: ``ignore_unknown_fields`` would drop it unseen."""
    if depth > _MAX_DEPTH:
        raise BadRequest(f"JSON body nested deeper than {_MAX_DEPTH} at {path!r}")
    if _is_wkt(descriptor):
        return  # Any, Struct, Timestamp, ...: no enum of the user's inside, or json_format checks
    by_json = {f.json_name: f for f in descriptor.fields}
    for key, value in document.items():
        field = by_json.get(key) or descriptor.fields_by_name.get(key)
        if field is None or value is None:
            continue
        where = f"{path}.{key}" if path else key
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if isinstance(value, dict):
                value_field = entry.fields_by_name["value"]
                for k, v in value.items():
                    _check_value(value_field, v, f"{where}[{k}]", depth)
        elif field.is_repeated:
            if isinstance(value, list):
                for i, v in enumerate(value):
                    _check_value(field, v, f"{where}[{i}]", depth)
        else:
            _check_value(field, value, where, depth)


def _check_value(field: FieldDescriptor, value: Any, where: str, depth: int) -> None:
    enum = field.enum_type
    if enum is not None and enum.full_name != "google.protobuf.NullValue":
        if isinstance(value, str) and value not in enum.values_by_name and not _is_int(value):
            raise BadRequest(f"field {where!r}: {value!r} is not a value of {enum.full_name}")
    elif field.message_type is not None and isinstance(value, dict):
        _check_enums(field.message_type, value, where, depth + 1)


def _query_values(
    request: Descriptor, query: Sequence[tuple[str, str]], bound: Sequence[str]
) -> list[tuple[str, tuple[FieldDescriptor, ...], Any]]:
    """The query's (name, fields, JSON value) for each field the path and body left free."""
    groups: dict[str, tuple[str, tuple[FieldDescriptor, ...], list[tuple[str | None, str]]]] = {}
    for key, value in query:
        name, map_key = key, None
        if m := _MAP_KEY.match(key):
            name, map_key = m.group(1), m.group(2)
        try:
            fields = field_path(request, name)
        except KeyError:
            continue  # not a field: an extra parameter, ignored as grpc-gateway does
        except ValueError as exc:
            raise BadRequest(f"query parameter {key!r}: {exc}") from None
        dotted = _dotted(fields)
        if any(dotted == b or dotted.startswith(b + ".") for b in bound):
            continue  # the path or the body sets it
        groups.setdefault(dotted, (name, fields, []))[2].append((map_key, value))
    out: list[tuple[str, tuple[FieldDescriptor, ...], Any]] = []
    for name, fields, values in groups.values():
        out.append((name, fields, _group_value(name, fields[-1], values)))
    return out


def _group_value(name: str, leaf: FieldDescriptor, values: list[tuple[str | None, str]]) -> Any:
    entry = leaf.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        mapping: dict[str, Any] = {}
        for key, text in values:
            if key is None:
                raise BadRequest(f"query parameter {name!r} is a map: give {name}[key]=value")
            if key in mapping:
                raise BadRequest(f"query parameter {name}[{key}] given more than once")
            mapping[key] = _json_value(value_field, text, f"{name}[{key}]")
        return mapping
    if any(key is not None for key, _ in values):
        raise BadRequest(f"query parameter {name!r} is not a map: no [key] after it")
    if leaf.is_repeated:
        return [_json_value(leaf, text, name) for _, text in values]
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given {len(values)} times for a singular field")
    return _json_value(leaf, values[0][1], name)


def _json_value(field: FieldDescriptor, text: str, name: str) -> Any:
    """``text`` from a path or query as the JSON value json_format expects for ``field``."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in _BOOL:
            raise BadRequest(f"parameter {name!r}: {text!r} is not a bool")
        return _BOOL[text]
    message = field.message_type
    if message is None or message.full_name in _STRING_WKT:
        return text  # json_format parses numbers, enums, bytes and these from strings
    if message.full_name in _WRAPPERS:
        return _json_value(message.fields_by_name["value"], text, name)
    raise BadRequest(f"parameter {name!r} is a message: set its fields, as {name}.<field>=...")


def _assign(message: Message, fields: tuple[FieldDescriptor, ...], value: Any, what: str) -> None:
    """Set the field at the end of ``fields`` to ``value``, merging into the messages on the way."""
    target = message
    for field in fields[:-1]:
        target = getattr(target, field.name)
    try:
        json_format.ParseDict({fields[-1].name: value}, target, descriptor_pool=pool_of(message))
    except json_format.Error as exc:
        # json_format says "Failed to parse <field> field: ..."; the field is named already.
        detail = str(exc).removeprefix(f"Failed to parse {fields[-1].name} field: ")
        raise BadRequest(f"{what}: {detail}") from None


def _dotted(fields: tuple[FieldDescriptor, ...]) -> str:
    return ".".join(f.name for f in fields)


def _is_wkt(descriptor: Any) -> bool:
    # Any: the upb and the Python descriptor classes are both met here.
    return str(descriptor.full_name).startswith("google.protobuf.")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
