"""What the provider dialects share: refusing what a provider cannot honour, the caller's
bound on tokens, the bound on stop sequences, data URLs, tool call arguments as JSON
objects, a schema (its text, else its `Struct`) as JSON."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any

import orjson
from google.protobuf import struct_pb2
from tandem.v1 import chat_pb2

from server.errors import InvalidRequestError
from server.translate.protojson import check_json_object

__all__ = [
    "CACHE_MARK_TYPES",
    "DATA_URL",
    "MAX_STOP_SEQUENCES",
    "Schema",
    "ToolCallPieces",
    "cannot_honour",
    "check_cache_mark",
    "check_schema_texts",
    "check_stop_count",
    "invalid_field",
    "max_tokens_asked",
    "named_event",
    "response_schema",
    "string_at",
    "struct_json",
    "struct_to_json",
    "tool_arguments",
    "tool_parameters",
]

DATA_URL = re.compile(r"data:(?P<media>[\w/+.-]+);base64,(?P<data>.*)", re.S)
# the contract's bound: each one rides to the upstream and into the span
MAX_STOP_SEQUENCES = 16


# a schema sent again (agents send the same tools on every request) is kept encoded;
# at most this many, of at most these sizes: 6 MiB in all, serialized keys and JSON
SCHEMAS_KEPT = 128
SCHEMA_KEPT_MAX_BYTES = 16 * 1024  # serialized
SCHEMA_JSON_KEPT_MAX_BYTES = 32 * 1024
_schemas: OrderedDict[bytes, orjson.Fragment] = OrderedDict()  # least recently used first

# a schema for an upstream body or the estimate: JSON text to copy as it is, or values
Schema = orjson.Fragment | dict[str, Any]


def tool_parameters(function: chat_pb2.FunctionDefinition) -> Schema | None:
    """A function's `parameters`: the text the caller wrote, keys in order (checked at
    the door), else its `Struct` (no order; a gRPC caller's), else None."""
    if function.HasField("parameters_json"):
        return orjson.Fragment(function.parameters_json)
    return struct_json(function.parameters) if function.HasField("parameters") else None


def response_schema(schema: chat_pb2.JsonSchema) -> Schema | None:
    """A JSON schema's `schema`, as `tool_parameters` reads a function's."""
    if schema.HasField("schema_json"):
        return orjson.Fragment(schema.schema_json)
    return struct_json(schema.schema) if schema.HasField("schema") else None


def check_schema_texts(request: chat_pb2.ChatCompletionRequest) -> None:
    """Refuse a schema text that is not a JSON object's, naming its field: what a gRPC
    caller sets is checked here, once (a JSON door's parser checks what it is sent)."""
    for i, tool in enumerate(request.tools):
        if tool.function.HasField("parameters_json"):
            where = f"tools[{i}].function.parameters_json"
            check_json_object(tool.function.parameters_json, where)
    schema = request.response_format.json_schema
    if schema.HasField("schema_json"):
        check_json_object(schema.schema_json, "response_format.json_schema.schema_json")


def struct_json(struct: struct_pb2.Struct) -> Schema:
    """A `Struct` (a tool's parameters, a JSON schema) for an upstream body.

    Reading a Struct is slow (~40 us for a tool of six parameters, measured
    here), and an agent's twenty tools come back on every request: a schema
    seen before is its JSON, encoded once, as an `orjson.Fragment`.
    """
    serialized = struct.SerializeToString(deterministic=True)
    if len(serialized) > SCHEMA_KEPT_MAX_BYTES:
        return struct_to_json(struct)
    fragment = _schemas.get(serialized)
    if fragment is not None:
        _schemas.move_to_end(serialized)
        return fragment
    encoded = orjson.dumps(struct_to_json(struct))
    fragment = orjson.Fragment(encoded)
    if len(encoded) <= SCHEMA_JSON_KEPT_MAX_BYTES:
        _schemas[serialized] = fragment
        if len(_schemas) > SCHEMAS_KEPT:
            _schemas.popitem(last=False)
    return fragment


def struct_to_json(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A `Struct` as plain JSON values, read directly: what `json_format.MessageToDict`
    gives (numbers as floats). JSON has no NaN or Infinity: a number that is one
    (only protobuf can carry it) is the caller's 400."""
    return {key: _json_value(value) for key, value in struct.fields.items()}


def _json_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_json(value.struct_value)
    if kind == "list_value":
        return [_json_value(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value" and not math.isfinite(value.number_value):
        raise InvalidRequestError("tools: a schema holds a number JSON cannot (NaN or Infinity)")
    return getattr(value, kind)  # number_value, string_value, bool_value


# Anthropic's one cache mark type, and its lifetimes ("5m", "1h"), in the shape a newer
# one would take
CACHE_MARK_TYPES = frozenset({"ephemeral"})
_CACHE_TTL = re.compile(r"[1-9][0-9]{0,3}[smh]")


def check_cache_mark(type_: str, ttl: str, where: str) -> None:
    """A `cache_control` Anthropic could take: a 400 naming `where` before any upstream
    call, not the upstream's own after a round trip."""
    if type_ not in CACHE_MARK_TYPES:
        raise InvalidRequestError(
            f"{where}.type: must be one of {sorted(CACHE_MARK_TYPES)}", param=f"{where}.type"
        )
    if ttl and _CACHE_TTL.fullmatch(ttl) is None:
        raise InvalidRequestError(
            f"{where}.ttl: must be a lifetime such as '5m' or '1h'", param=f"{where}.ttl"
        )


def check_stop_count(count: int, where: str) -> None:
    """Refuse more than `MAX_STOP_SEQUENCES` stop sequences, naming the field as the
    door spells it (`stop`, `stop_sequences`, `options.stop`)."""
    if count > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"{where}: at most {MAX_STOP_SEQUENCES} stop sequences, got {count}", param=where
        )


def max_tokens_asked(request: chat_pb2.ChatCompletionRequest) -> tuple[str, int] | None:
    """The caller's bound on the answer's tokens, and the field that sets it
    (`max_completion_tokens`, else `max_tokens`); None: the caller set none."""
    if request.HasField("max_completion_tokens"):
        return "max_completion_tokens", request.max_completion_tokens
    if request.HasField("max_tokens"):
        return "max_tokens", request.max_tokens
    return None


def cannot_honour(param: str, why: str) -> InvalidRequestError:
    """A 400 naming a field the target provider cannot honour."""
    return InvalidRequestError(
        f"{param}: {why} (not supported by this model's provider)", param=param
    )


def tool_arguments(call: chat_pb2.ToolCall, where: str) -> Any:
    """A tool call's JSON arguments as an object, for dialects that do not take a string."""
    try:
        return orjson.loads(call.function.arguments or "{}")
    except orjson.JSONDecodeError:
        param = f"{where}.function.arguments"
        raise InvalidRequestError(f"{param}: must be a JSON object", param=param) from None


def named_event(name: str, data: dict[str, Any]) -> bytes:
    """One named SSE event (Anthropic's and the Responses API's streams)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ToolCallPieces:
    """A tool call an encoder holds while its arguments arrive in pieces."""

    __slots__ = ("id", "name", "pieces")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.pieces: list[str] = []

    @staticmethod
    def hold(calls: dict[int, ToolCallPieces], piece: chat_pb2.ToolCall) -> None:
        """Add a delta's piece of a call to the calls held, by its index."""
        call = calls.get(piece.index)
        if call is None:
            call = calls[piece.index] = ToolCallPieces()
        call.id = call.id or piece.id
        call.name = call.name or piece.function.name
        if piece.function.arguments:
            call.pieces.append(piece.function.arguments)


def invalid_field(param: str, why: str) -> InvalidRequestError:
    """A 400 naming the caller's field."""
    return InvalidRequestError(f"{param}: {why}", param=param)


def string_at(value: Any, where: str) -> str:
    """`value`, which must be a string (the caller's field `where`)."""
    if not isinstance(value, str):
        raise invalid_field(where, "must be a string")
    return value
