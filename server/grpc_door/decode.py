"""Registering the gRPC services with a request decoder that never raises.

grpc.aio answers a request deserializer's exception with UNKNOWN and
"Unexpected <class '...DecodeError'>: ..." before any servicer code runs, so
the policy never sees the call and the client sees an internal class name.
Here a request that does not parse decodes to an `UndecodableRequest`, a
client-safe reason and the field at fault where one is known, and the method
wrapper in `rpc.py` raises it as an `InvalidRequestError` after
authentication, like any other bad request.

The handlers are built from the service descriptors, as the generated
`add_*Servicer_to_server` build them, with only the deserializer changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

__all__ = ["MAX_DEPTH", "RequestDecoder", "UndecodableRequest", "add_service"]

MAX_DEPTH = 100  # nested messages protobuf's parser accepts (upb's default)
_MAX_FIELDS = 10_000  # fields read looking for the fault: ~10 ms on the loop at most
_JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


@dataclass(frozen=True)
class UndecodableRequest:
    """What a request that did not parse decodes to."""

    message: str
    field: str | None = None


class _Corrupt(Exception):
    """The bytes are not protobuf wire format."""


class RequestDecoder:
    """A request deserializer that never raises: the parsed request, or why it does
    not parse, worded for the client."""

    def __init__(self, descriptor: Descriptor) -> None:
        self._descriptor = descriptor
        self._parse = GetMessageClass(descriptor).FromString

    def __call__(self, data: bytes) -> Message | UndecodableRequest:
        try:
            return self._parse(data)
        except DecodeError:
            pass
        try:
            fault = _Walk().fault(self._descriptor, data, "", 1)
        except _Corrupt:
            fault = None
        if fault is None:
            name = self._descriptor.full_name
            return UndecodableRequest(f"the request is not a valid {name} message")
        path, problem = fault
        return UndecodableRequest(f"{path}: {problem}", path)


class _Walk:
    """Reads the wire format to find the field a parser refused: a string that is not
    UTF-8, or a message nested deeper than MAX_DEPTH. Inside a google.protobuf.Struct
    (a JSON value) or a map the fault is the field holding it, as a client wrote it."""

    def __init__(self) -> None:
        self.budget = _MAX_FIELDS

    def fault(
        self, descriptor: Descriptor, data: bytes, path: str, depth: int
    ) -> tuple[str, str] | None:
        """(the field's path, what is wrong with it), or None if no field is at fault."""
        if depth > MAX_DEPTH:
            return path, f"is nested too deeply (over {MAX_DEPTH} messages)"
        counts: dict[int, int] = {}
        pos = 0
        while pos < len(data):
            self.budget -= 1
            if self.budget < 0:
                raise _Corrupt
            tag, pos = _varint(data, pos)
            wire = tag & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
                continue
            if wire != 2:
                raise _Corrupt
            length, pos = _varint(data, pos)
            chunk, pos = data[pos : pos + length], pos + length
            if pos > len(data):
                raise _Corrupt
            field = descriptor.fields_by_number.get(tag >> 3)
            if field is None:
                continue
            where = _path(path, descriptor, field, counts)
            if field.type == FieldDescriptor.TYPE_STRING:
                try:
                    chunk.decode()
                except UnicodeDecodeError:
                    return where, "is not valid UTF-8"
            elif field.message_type is not None:
                found = self.fault(field.message_type, chunk, where, depth + 1)
                if found is not None:
                    return found
        return None


def _path(path: str, descriptor: Descriptor, field: FieldDescriptor, counts: dict[int, int]) -> str:
    """The path of `field` in a message of type `descriptor` at `path`, as
    `messages[0].content`."""
    if descriptor.full_name in _JSON_TYPES or _is_map_entry(descriptor):
        return path
    name = f"{path}.{field.name}" if path else field.name
    if not field.is_repeated or (
        field.message_type is not None and _is_map_entry(field.message_type)
    ):
        return name
    index = counts.get(field.number, 0)
    counts[field.number] = index + 1
    return f"{name}[{index}]"


def _is_map_entry(descriptor: Descriptor) -> bool:
    return bool(descriptor.GetOptions().map_entry)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Corrupt


def _handler(servicer: object, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    assert not method.client_streaming, "the wrappers take one request message"
    make = (
        grpc.unary_stream_rpc_method_handler
        if method.server_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(
        getattr(servicer, method.name),
        request_deserializer=RequestDecoder(method.input_type),
        response_serializer=GetMessageClass(method.output_type).SerializeToString,
    )


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serve every method of `service` from the servicer's method of the same name."""
    handlers = {method.name: _handler(servicer, method) for method in service.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
