"""JSON Schemas of request bodies and query parameters for /openapi.json.

Bodies are derived from the proto descriptors, then made as exact as the doors
are: OpenAI's union forms (`stop`, `tool_choice`, `content`, `input`), `null` for
"not set", the integer ranges the parser enforces, the values validation
accepts, and, for the strict native door, no unknown fields. A schema this exact
lets a fuzzer (tests/test_fuzz_http.py) tell a valid request from an invalid one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tandem.v1 import chat_pb2

from server.core.validation import PART_TYPES, RESPONSE_FORMATS, ROLES, TOOL_CHOICE_MODES
from server.translate.protojson import INT_RANGES
from server.usage.api import MAX_LIMIT

__all__ = ["completion_request_body", "request_body", "usage_parameters"]

Schema = dict[str, Any]

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

# field -> the values validation accepts (server/core/validation.py)
_ENUMS: dict[str, list[str]] = {
    "tandem.v1.ChatMessage.role": sorted(ROLES),
    "tandem.v1.ContentPart.type": sorted(PART_TYPES),
    "tandem.v1.ToolChoice.mode": sorted(TOOL_CHOICE_MODES),
    "tandem.v1.ResponseFormat.type": sorted(RESPONSE_FORMATS),
    "tandem.v1.Tool.type": ["function"],
    "tandem.v1.EmbeddingRequest.encoding_format": ["float", "base64"],
}
# message -> fields without which validation refuses it
_REQUIRED: dict[str, list[str]] = {
    "tandem.v1.ChatCompletionRequest": ["messages"],
    "tandem.v1.ChatMessage": ["role"],
    "tandem.v1.EmbeddingRequest": ["input"],
}
# repeated fields validation wants non-empty
_NON_EMPTY = frozenset(
    {"tandem.v1.ChatCompletionRequest.messages", "tandem.v1.EmbeddingRequest.input"}
)


def _union(field: FieldDescriptor, schema: Schema, strict: bool) -> Schema:
    """OpenAI's other spelling of a field, which the doors rewrite (`normalize_chat_body`)."""
    name = field.full_name
    if name in ("tandem.v1.ChatCompletionRequest.stop", "tandem.v1.EmbeddingRequest.input"):
        return {"anyOf": [{"type": "string"}, schema]}
    if name == "tandem.v1.ChatCompletionRequest.tool_choice":
        modes = {"type": "string", "enum": _ENUMS["tandem.v1.ToolChoice.mode"]}
        return {"anyOf": [modes, schema]}
    if name == "tandem.v1.ChatMessage.content":
        parts = chat_pb2.ChatMessage.DESCRIPTOR.fields_by_name["parts"]
        return {"anyOf": [schema, _field_schema(parts, strict)]}
    return schema


def _scalar_schema(field: FieldDescriptor) -> Schema:
    schema: Schema = {"type": _SCALARS.get(field.cpp_type, "string")}
    if field.cpp_type in INT_RANGES:
        schema["minimum"], schema["maximum"] = INT_RANGES[field.cpp_type]
    if field.full_name in _ENUMS:
        schema["enum"] = _ENUMS[field.full_name]
    return schema


def _field_schema(field: FieldDescriptor, strict: bool) -> Schema:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value = message.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _scalar_schema(value)}
    if message is None:
        item = _scalar_schema(field)
    elif message.full_name == "google.protobuf.Struct":
        item = {"type": "object"}
    else:
        item = _message_schema(message, strict)
    if not field.is_repeated:
        return item
    schema: Schema = {"type": "array", "items": item}
    if field.full_name in _NON_EMPTY:
        schema["minItems"] = 1
    return schema


def _nullable(schema: Schema) -> Schema:
    """JSON `null` means "not set" for every field."""
    kind = schema.get("type")
    if kind not in ("string", "boolean", "number", "integer"):
        return {"anyOf": [schema, {"type": "null"}]}
    nullable = {**schema, "type": [kind, "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _message_schema(descriptor: Descriptor, strict: bool) -> Schema:
    properties = {
        f.name: _nullable(_union(f, _field_schema(f, strict), strict)) for f in descriptor.fields
    }
    schema: Schema = {"type": "object", "properties": properties}
    if descriptor.full_name in _REQUIRED:
        schema["required"] = _REQUIRED[descriptor.full_name]
    if strict:
        schema["additionalProperties"] = False
    return schema


def _request_body(schema: Schema, description: str) -> Schema:
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def request_body(descriptor: Descriptor, description: str, *, strict: bool = False) -> Schema:
    """`openapi_extra` describing a JSON body shaped like `descriptor`; `strict`
    bodies refuse unknown fields."""
    return _request_body(_message_schema(descriptor, strict), description)


def completion_request_body(description: str) -> Schema:
    """`openapi_extra` of `/v1/completions`: a chat request with `prompt`, one string, for
    `messages`; the legacy fields a chat cannot honour only as what asks for nothing."""
    chat = _message_schema(chat_pb2.ChatCompletionRequest.DESCRIPTOR, strict=False)
    properties = {
        "prompt": {"type": "string"},
        **chat["properties"],
        "messages": {"not": {}},
        "suffix": {"type": "null"},
        "echo": {"enum": [False, None]},
        "best_of": {"enum": [1, None]},
        "logprobs": {"type": "null"},
    }
    schema = {"type": "object", "properties": properties, "required": ["prompt"]}
    return _request_body(schema, description)


def usage_parameters() -> Schema:
    """`openapi_extra` declaring the usage API's query (`parse_usage_params`)."""

    def query(name: str, schema: Schema, description: str) -> Schema:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    time = {
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "maxLength": 0}]
    }
    return {
        "parameters": [
            query("since", time, "RFC 3339, inclusive; empty: none"),
            query("until", time, "RFC 3339, exclusive; empty: none"),
            query("user", {"type": "string"}, "another user's: admin keys only"),
            query("model", {"type": "string"}, "a public model name"),
            query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size"),
        ]
    }
