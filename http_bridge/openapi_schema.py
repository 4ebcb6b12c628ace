"""JSON Schemas of request bodies, derived from the proto descriptors for /docs."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["request_body"]

_SCALARS = {
    FieldDescriptor.CPPTYPE_STRING: "string",
    FieldDescriptor.CPPTYPE_BOOL: "boolean",
    FieldDescriptor.CPPTYPE_DOUBLE: "number",
    FieldDescriptor.CPPTYPE_FLOAT: "number",
    FieldDescriptor.CPPTYPE_INT32: "integer",
    FieldDescriptor.CPPTYPE_INT64: "integer",
    FieldDescriptor.CPPTYPE_UINT32: "integer",
    FieldDescriptor.CPPTYPE_UINT64: "integer",
}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return {
            "type": "object",
            "additionalProperties": _field_schema(message.fields_by_name["value"]),
        }
    if message is not None:
        item = (
            {"type": "object"}
            if message.full_name == "google.protobuf.Struct"
            else _message_schema(message)
        )
    else:
        item = {"type": _SCALARS.get(field.cpp_type, "string")}
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def _message_schema(descriptor: Descriptor) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _field_schema(f) for f in descriptor.fields},
    }


def request_body(descriptor: Descriptor, description: str) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body shaped like `descriptor`."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": _message_schema(descriptor)}},
        }
    }
