"""JSON to proto, strictly typed: the parser behind every JSON door.

`json_format.ParseDict` accepts `"10"` where a number belongs and names
fields vaguely; this walks the descriptor once, checks each value's JSON
type, and names the exact path of anything wrong (`messages[2].role`).
With `strict=False` unknown fields are skipped, as OpenAI-compatible
servers do; JSON `null` always means "not set".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from server.errors import InvalidRequestError, echoed

__all__ = ["parse_into"]

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_STRUCT = Struct.DESCRIPTOR.full_name


def _invalid(where: str, message: str) -> InvalidRequestError:
    where = echoed(where)  # a path holds the client's keys (an unknown field, a map key)
    return InvalidRequestError(f"{where}: {message}", param=where)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_into(data: Any, message: Message, *, strict: bool, path: str = "") -> None:
    """Fill `message` from a decoded JSON object."""
    if not isinstance(data, dict):
        raise _invalid(path or "body", "must be a JSON object")
    fields = cast(Mapping[str, FieldDescriptor], message.DESCRIPTOR.fields_by_name)
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            if strict:
                raise _invalid(_join(path, key), "unknown field")
            continue
        if value is not None:
            _set(message, field, value, _join(path, key), strict)


def _set(message: Message, field: FieldDescriptor, value: Any, where: str, strict: bool) -> None:
    name = field.name
    oneof = field.containing_oneof
    if oneof is not None and len(oneof.fields) > 1:  # a real oneof, not proto3 `optional`
        current = message.WhichOneof(oneof.name)
        if current is not None and current != name:
            raise _invalid(where, f"set only one of {', '.join(f.name for f in oneof.fields)}")
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise _invalid(where, "must be a JSON object")
        target = getattr(message, name)
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            target[key] = _scalar(value_field, item, f"{where}.{key}")
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise _invalid(where, "must be an array")
        container = getattr(message, name)
        if field.message_type is not None:
            for i, item in enumerate(value):
                parse_into(item, container.add(), strict=strict, path=f"{where}[{i}]")
        else:
            container.extend(_scalar(field, item, f"{where}[{i}]") for i, item in enumerate(value))
        return
    if field.message_type is not None:
        if not isinstance(value, dict):
            raise _invalid(where, "must be a JSON object")
        target = getattr(message, name)
        if field.message_type.full_name == _STRUCT:
            _fill_struct(target, value, where)
        else:
            target.SetInParent()
            parse_into(value, target, strict=strict, path=where)
        return
    setattr(message, name, _scalar(field, value, where))


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


def _scalar(field: FieldDescriptor, value: Any, where: str) -> Any:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if isinstance(value, str):
            return value
        raise _invalid(where, "must be a string")
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise _invalid(where, "must be a boolean")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(where, "must be a number")
    if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise _invalid(where, "must be an integer")
        value = int(value)
    low, high = _INT_RANGES.get(kind, (0, -1))
    if not low <= value <= high:
        raise _invalid(where, "is out of range")
    return value
