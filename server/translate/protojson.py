"""JSON to proto, strictly typed: the parser behind every JSON door.

`json_format.ParseDict` accepts `"10"` where a number belongs and names
fields vaguely; this walks the descriptor once, checks each value's JSON
type, and names the exact path of anything wrong (`messages[2].role`).
With `strict=False` unknown fields are skipped, as OpenAI-compatible
servers do; JSON `null` always means "not set".

A schema (a function's `parameters`, a JSON schema's `schema`) is kept as the
JSON text the caller wrote (`parameters_json`, `schema_json`), keys in order,
and its Struct left empty: a Struct is a map, and filling one costs ~25 us for
a tool of six parameters. A caller may send the text itself; it wins. A chat's
`extra_body` is kept the same way (`extra_body_json`), its integers integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from server.errors import InvalidRequestError, echoed

__all__ = [
    "INT_RANGES",
    "MAX_JSON_DEPTH",
    "check_json_object",
    "deeper_than",
    "json_object",
    "parse_field_as",
    "parse_into",
    "too_deep",
]

# The gRPC door's protobuf runtime parses a Struct about 33 levels deep and no
# deeper, so no door accepts JSON nested deeper than this (a body, or a schema's
# text, is level 1).
MAX_JSON_DEPTH = 32

# the protobuf integer kinds' ranges, which the parser checks and /openapi.json states
INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_STRUCT = Struct.DESCRIPTOR.full_name
# the schemas (and a chat's extra fields): Struct fields kept as the JSON text of their
# `<name>_json` siblings
_SCHEMAS = frozenset(
    (
        "tandem.v1.FunctionDefinition.parameters",
        "tandem.v1.JsonSchema.schema",
        "tandem.v1.ChatCompletionRequest.extra_body",
    )
)
_SCHEMA_TEXTS = frozenset(f"{name}_json" for name in _SCHEMAS)


def _invalid(where: str, message: str) -> InvalidRequestError:
    where = echoed(where)  # a path holds the client's keys (an unknown field, a map key)
    return InvalidRequestError(f"{where}: {message}", param=where)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# what to do with a field's JSON value, decided once per field
(
    _SCALAR,
    _REPEATED_SCALAR,
    _MESSAGE,
    _REPEATED_MESSAGE,
    _STRUCT_FIELD,
    _MAP,
    _STRUCT_AS_TEXT,  # a schema's Struct, kept as its JSON text
    _JSON_TEXT,  # a schema's JSON text, as the caller sent it
) = range(8)


class _Field:
    """A field, as the parser needs it: its kind, its real oneof's siblings, its map
    values, the text field it is kept in."""

    __slots__ = ("field", "kind", "map_value", "name", "oneof", "text")

    def __init__(self, field: FieldDescriptor) -> None:
        self.field = field
        self.name = field.name
        oneof = field.containing_oneof
        # a real oneof, not proto3 `optional`
        self.oneof = oneof if oneof is not None and len(oneof.fields) > 1 else None
        message = field.message_type
        self.map_value: FieldDescriptor | None = None
        self.text = f"{field.name}_json" if field.full_name in _SCHEMAS else ""
        if self.text:
            self.kind = _STRUCT_AS_TEXT
        elif field.full_name in _SCHEMA_TEXTS:
            self.kind = _JSON_TEXT
        elif message is not None and message.GetOptions().map_entry:
            self.kind = _MAP
            self.map_value = message.fields_by_name["value"]
        elif field.is_repeated:
            self.kind = _REPEATED_MESSAGE if message is not None else _REPEATED_SCALAR
        elif message is not None:
            self.kind = _STRUCT_FIELD if message.full_name == _STRUCT else _MESSAGE
        else:
            self.kind = _SCALAR


_PLANS: dict[str, dict[str, _Field]] = {}


def _plan(descriptor: Any) -> dict[str, _Field]:
    """Every field of a message type by its JSON key, made on first use."""
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        fields = cast(Mapping[str, FieldDescriptor], descriptor.fields_by_name)
        plan = _PLANS[descriptor.full_name] = {key: _Field(f) for key, f in fields.items()}
    return plan


def parse_into(data: Any, message: Message, *, strict: bool, path: str = "") -> None:
    """Fill `message` from a decoded JSON object."""
    if not isinstance(data, dict):
        raise _invalid(path or "body", "must be a JSON object")
    plan = _plan(message.DESCRIPTOR)
    for key, value in data.items():
        field = plan.get(key)
        if field is None:
            if strict:
                raise _invalid(_join(path, key), "unknown field")
            continue
        if value is not None:
            _set(message, field, value, path, key, strict)


def _set(message: Message, plan: _Field, value: Any, path: str, key: str, strict: bool) -> None:
    """One field; its path (`path.key`) is spelled out only where it is needed."""
    name = plan.name
    kind = plan.kind
    if plan.oneof is not None:
        current = message.WhichOneof(plan.oneof.name)
        if current is not None and current != name:
            siblings = ", ".join(f.name for f in plan.oneof.fields)
            raise _invalid(_join(path, key), f"set only one of {siblings}")
    if kind == _SCALAR:
        setattr(message, name, _scalar(plan.field, value, path, key))
        return
    where = _join(path, key)
    if kind == _JSON_TEXT:
        setattr(message, name, check_json_object(_scalar(plan.field, value, path, key), where))
        return
    if kind == _STRUCT_AS_TEXT:
        if not isinstance(value, dict):
            raise _invalid(where, "must be a JSON object")
        if not message.HasField(plan.text):  # the caller's own text wins
            setattr(message, plan.text, _json_text(value, where))
        return
    if kind == _MAP:
        if not isinstance(value, dict):
            raise _invalid(where, "must be a JSON object")
        target = getattr(message, name)
        value_field = cast(FieldDescriptor, plan.map_value)
        for map_key, item in value.items():
            target[map_key] = _scalar(value_field, item, where, map_key)
        return
    if kind in (_REPEATED_SCALAR, _REPEATED_MESSAGE):
        if not isinstance(value, list):
            raise _invalid(where, "must be an array")
        container = getattr(message, name)
        if kind == _REPEATED_MESSAGE:
            for i, item in enumerate(value):
                parse_into(item, container.add(), strict=strict, path=f"{where}[{i}]")
        else:
            field = plan.field
            container.extend(
                _scalar(field, item, "", f"{where}[{i}]") for i, item in enumerate(value)
            )
        return
    if not isinstance(value, dict):
        raise _invalid(where, "must be a JSON object")
    target = getattr(message, name)
    if kind == _STRUCT_FIELD:
        _fill_struct(target, value, where)
    else:
        target.SetInParent()
        parse_into(value, target, strict=strict, path=where)


def _fill_struct(target: Struct, value: dict[str, Any], where: str) -> None:
    """`Struct.update`, whose every failure is the caller's: it recurses once per
    level (the HTTP door bounds the depth first; other callers may not) and
    refuses what JSON cannot hold (a non-string key, a float out of range)."""
    try:
        target.update(value)
    except RecursionError:
        raise _invalid(where, "is nested too deeply") from None
    except (TypeError, ValueError, OverflowError):
        raise _invalid(where, "must hold only JSON values") from None


def _json_text(value: dict[str, Any], where: str) -> str:
    """A decoded JSON object as its text again, keys in the order they came."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # not from JSON: a non-string key, an int over 64 bits, too deep
        raise _invalid(where, "must hold only JSON values") from None


def check_json_object(text: str, where: str) -> str:
    """`text`, if it is a JSON object's text nested at most MAX_JSON_DEPTH levels: it
    is copied into upstream bodies as it is. Parsed once (~1.4 us for a tool of six
    parameters); the nesting is walked only when there are enough brackets for it."""
    json_object(text, where)
    return text


def json_object(text: str, where: str) -> dict[str, Any]:
    """The object `text` holds, if it is a JSON object's text nested at most
    MAX_JSON_DEPTH levels (check_json_object), else a 400 naming `where`."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own, at 1024 levels
            raise too_deep(where) from None
        raise _invalid(where, "is not valid JSON") from None
    if not isinstance(value, dict):
        raise _invalid(where, "must be a JSON object")
    if (
        text.count("{") + text.count("[") > MAX_JSON_DEPTH
        and deeper_than(value, MAX_JSON_DEPTH - 1) is not None
    ):
        raise too_deep(where)
    return value


def deeper_than(container: dict[str, Any] | list[Any], levels: int) -> list[str | int] | None:
    """The path, innermost first, to a container nested more than `levels` below this
    one; decoded JSON only. It stops `levels` down, so it never recurses further."""
    items = container.items() if type(container) is dict else enumerate(container)
    for key, item in items:
        if type(item) is dict or type(item) is list:  # orjson makes exactly these
            path = [] if levels == 0 else deeper_than(item, levels - 1)
            if path is not None:
                path.append(key)
                return path
    return None


def too_deep(where: str) -> InvalidRequestError:
    return _invalid(where, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _scalar(field: FieldDescriptor, value: Any, path: str, key: str) -> Any:
    """The value, of the field's JSON type; `path.key` names it in an error."""
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if isinstance(value, str):
            return value
        raise _invalid(_join(path, key), "must be a string")
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise _invalid(_join(path, key), "must be a boolean")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(_join(path, key), "must be a number")
    if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise _invalid(_join(path, key), "must be an integer")
        value = int(value)
    low, high = INT_RANGES.get(kind, (0, -1))
    if not low <= value <= high:
        raise _invalid(_join(path, key), "is out of range")
    return value


def parse_field_as(request: Message, field: str, value: Any, where: str) -> None:
    """One field through the proto's parser (lenient), its error naming the caller's own
    spelling of it, `where` (a dialect's field that maps to the proto's `field`)."""
    try:
        parse_into({field: value}, request, strict=False)
    except InvalidRequestError as exc:
        param = where + (exc.param or field)[len(field) :]
        raise InvalidRequestError(
            exc.message.replace(exc.param or field, param, 1), param=param
        ) from None
